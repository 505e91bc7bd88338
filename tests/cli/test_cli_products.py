"""`iotsettle policy | crop | loan` end to end on a real anvil: money moves as the product rules say, and a bad
input gives one line, a non-zero exit and no change on chain.

Motor insurance runs on the session's shared anvil, except the close that waits out the settlement grace. That
test, crop insurance and the loan repaid from its payout move chain time, so they run on an anvil of their own.
"""

from __future__ import annotations

from typing import Any

from eth_hash.auto import keccak
from iotsettle.oracle.device.keys import DeviceKey
from iotsettle.oracle.protocol import premium
from iotsettle.oracle.protocol.batch_tree import AGREEMENT_ID_FLAG
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.location import location_bytes32
from iotsettle.oracle.testing.stack import Deployment

from tests.kit.cli import Cli, User, register_device
from tests.kit.products import allow_insurer, chain_now, delivery, telematics, token_balance, warp_to, weather

TOKEN = 10**18
CENT = TOKEN // 100


def _human(cli: Cli, args: list[str]) -> str:
    """The output for people (rich tables) of a command that must succeed."""
    result = cli.run(args, COLUMNS="200")
    assert result.exit_code == 0, result.output
    return result.stdout


# ------------------------------------------------------------------------------------------------ motor


def _motor_policy(cli: Cli, deployment: Deployment, w3: Any) -> tuple[User, User, DeviceKey, int]:
    insurer, holder = cli.user(w3), cli.user(w3)
    vehicle = register_device(deployment.config, holder, DeviceKind.VEHICLE)
    offered = cli.ok(
        [
            "policy",
            "offer",
            "--holder",
            holder.address,
            "--vehicle",
            vehicle.address,
            "--rate",
            "0.05",
            "--min-factor",
            "0.9",
            "--max-factor",
            "1.5",
            "--step",
            "0.1",
            "--start-odometer",
            "1000000",
        ],
        insurer,
    )
    policy_id = int(offered["policyId"])
    assert cli.ok(["policy", "show", hex(policy_id)])["status"] == "offered"
    cli.ok(["token", "mint", "--amount", "20"], holder)
    cli.ok(["policy", "accept", hex(policy_id), "--deposit", "20"], holder)
    return insurer, holder, vehicle, policy_id


def test_motor_policy_charges_per_km_with_the_factor_explained(cli, deployment, w3) -> None:
    insurer, holder, vehicle, policy_id = _motor_policy(cli, deployment, w3)
    motor = deployment.address("MotorInsurance")
    assert token_balance(deployment, holder.address) == 0

    # 100 km without events at ×0.90, then 12.4 km with 2 harsh brakings and 1 speeding episode. The premium is
    # priced on the totals since the offer: 3 events in 112.4 km = 2.67 per 100 km → ×1.1669, 6.558 TEST in all
    # (0.05 × (112_400 × 0.9 + 3 × 0.1 × 100_000) / 1000), whether or not the first report was relayed
    lines = [
        telematics(vehicle, w3, motor, policy_id, 1, 1_100_000),
        telematics(vehicle, w3, motor, policy_id, 2, 1_112_400, harsh=2, speeding=1),
    ]
    out = cli.ok(["policy", "settle", "-"], insurer, stdin="\n".join(lines))
    assert [(r["seq"], r["settled"], r["factor"], r["amount"]) for r in out["results"]] == [
        (1, True, "×0.90", str(450 * CENT)),
        (2, True, "×1.1669", str(2058 * CENT // 10)),
    ]
    # the contract's record words, read raw from the chain, decode with the one Python layout
    charged = w3.eth.get_logs(
        {
            "address": motor,
            "fromBlock": 0,
            "topics": ["0x" + keccak(b"PremiumCharged(uint256,uint256,uint256)").hex(), f"0x{policy_id:064x}"],
        }
    )
    assert [(premium.unpack(bytes(e["data"][:32])), int.from_bytes(e["data"][32:], "big")) for e in charged] == [
        (premium.PremiumRecord(1, 100_000, 0, 0, 9_000), 450 * CENT),
        (premium.PremiumRecord(2, 12_400, 2, 1, 11_669), 2058 * CENT // 10),
    ]

    shown = cli.ok(["policy", "show", str(policy_id)])
    assert (shown["status"], shown["current_factor"], shown["prepaid"], shown["arrears"], shown["charged"]) == (
        "active",
        "×1.1669",
        str(20 * TOKEN - 6558 * CENT // 10),
        "0",
        str(6558 * CENT // 10),
    )

    # a replayed report next to a new one: the new one settles, the replay is listed with its reason
    lines = [
        telematics(vehicle, w3, motor, policy_id, 3, 1_112_400, harsh=2, speeding=1),
        telematics(vehicle, w3, motor, policy_id, 2, 1_112_400, harsh=2, speeding=1),
    ]
    mixed = cli.ok(["policy", "settle", "-"], insurer, stdin="\n".join(lines))
    assert [(r["seq"], r["settled"]) for r in mixed["results"]] == [(3, True), (2, False)]

    history = cli.ok(["policy", "history", str(policy_id)])["entries"]
    assert [(e["kind"], e["seq"], e["factor"]) for e in history] == [
        ("charged", 1, "×0.90"),
        ("charged", 2, "×1.1669"),
        ("charged", 3, "×1.1669"),
        ("rejected", 2, None),
    ]
    assert history[0]["explanation"] == "totals since the offer: no events in 100 km → ×0.90 (the floor: full discount)"
    totals = "totals since the offer: 3 events in 112.4 km = 2.7 per 100 km → ×0.90 + 2.7 × 0.10 = ×1.1669"
    assert history[1]["explanation"] == totals
    assert (history[1]["km"], history[1]["harsh_braking"], history[1]["speeding"], history[1]["rate_per_km"]) == (
        12.4,
        2,
        1,
        str(58345 * TOKEN // 10**6),
    )
    assert (history[1]["total_metres"], history[1]["total_events"]) == (112_400, 3)
    assert history[3]["explanation"].startswith("already settled or superseded")
    assert f"seq 2: {totals}" in _human(cli, ["policy", "history", str(policy_id)])
    assert "×1.1669 = 0.058345 TEST per km" in _human(cli, ["policy", "show", str(policy_id)])

    assert cli.ok(["policy", "withdraw", str(policy_id)], insurer)["amount"] == str(6558 * CENT // 10)
    assert token_balance(deployment, insurer.address) == 6558 * CENT // 10
    requested = cli.ok(["policy", "request-close", str(policy_id)], holder)
    assert requested["closeFrom"] == requested["closeAt"] + 3601, "strictly after the hour of grace"
    # reports signed by closeAt may still be on their way: closing opens an hour after it
    too_early = cli.fails(["policy", "close", str(policy_id)], holder)
    assert too_early.startswith(f"policy {hex(policy_id)} can be closed from ")
    assert cli.ok(["policy", "show", str(policy_id)])["status"] == "active"
    assert [p["policy_id"] for p in cli.ok(["policy", "list", "--party", holder.address])] == [str(policy_id)]


def test_motor_unit_with_a_history_pays_only_for_events_after_the_offer(cli, deployment, w3) -> None:
    insurer, holder = cli.user(w3), cli.user(w3)
    vehicle = register_device(deployment.config, holder, DeviceKind.VEHICLE)
    motor = deployment.address("MotorInsurance")
    # the unit has logged 500 harsh brakings and 200 speeding episodes since it was installed
    policy_id = int(
        cli.ok(
            [
                "policy",
                "offer",
                "--holder",
                holder.address,
                "--vehicle",
                vehicle.address,
                "--rate",
                "0.05",
                "--min-factor",
                "0.9",
                "--max-factor",
                "1.5",
                "--step",
                "0.1",
                "--start-odometer",
                "1000000",
                "--start-harsh",
                "500",
                "--start-speeding",
                "200",
            ],
            insurer,
        )["policyId"]
    )
    shown = cli.ok(["policy", "show", hex(policy_id)])
    assert (shown["start_harsh"], shown["start_speeding"], shown["last_harsh"], shown["last_speeding"]) == (
        500,
        200,
        500,
        200,
    )
    cli.ok(["token", "mint", "--amount", "20"], holder)
    # the holder accepts only the registers it read off the unit: other values are refused, nothing changes
    refused = cli.fails(["policy", "accept", hex(policy_id), "--deposit", "20", "--expect-start-harsh", "0"], holder)
    assert refused == (
        f"policy {hex(policy_id)} is priced from odometer 1,000,000 m, 500 harsh braking, 200 speeding; "
        "the acceptance named 1,000,000 m, 0 harsh braking, 200 speeding"
    )
    assert cli.ok(["policy", "show", hex(policy_id)])["status"] == "offered"
    accepted = cli.ok(
        [
            "policy",
            "accept",
            hex(policy_id),
            "--deposit",
            "20",
            "--expect-start-odometer",
            "1000000",
            "--expect-start-harsh",
            "500",
            "--expect-start-speeding",
            "200",
        ],
        holder,
    )
    assert (accepted["startOdometer"], accepted["startHarsh"], accepted["startSpeeding"]) == (1_000_000, 500, 200)

    below = cli.fails(
        ["policy", "settle", "-"],
        insurer,
        stdin=telematics(vehicle, w3, motor, policy_id, 1, 1_100_000, harsh=499, speeding=200),
    )
    assert below.startswith(
        f"no report settled: seq 1 for policy {hex(policy_id)}: the odometer or an event counter "
        "went below the last settled value"
    )
    # 100 km with no new event: the floor ×0.90 = 4.5 TEST, whatever the unit logged before the offer
    out = cli.ok(
        ["policy", "settle", "-"],
        insurer,
        stdin=telematics(vehicle, w3, motor, policy_id, 2, 1_100_000, harsh=500, speeding=200),
    )
    assert [(r["settled"], r["factor"], r["amount"]) for r in out["results"]] == [(True, "×0.90", str(450 * CENT))]
    assert token_balance(deployment, holder.address) == 0
    shown = cli.ok(["policy", "show", hex(policy_id)])
    assert (shown["prepaid"], shown["harsh_since_offer"], shown["speeding_since_offer"]) == (
        str(20 * TOKEN - 450 * CENT),
        0,
        0,
    )
    assert "0 harsh braking, 0 speeding since the offer" in _human(cli, ["policy", "show", hex(policy_id)])
    offered = cli.ok(["policy", "history", hex(policy_id), "--all"])["entries"][0]
    assert offered["kind"] == "offered"
    assert offered["explanation"].endswith("counted from odometer 1,000,000 m, 500 harsh braking, 200 speeding")


def test_motor_bad_inputs_change_nothing(cli, deployment, w3) -> None:
    insurer, holder = cli.user(w3), cli.user(w3)
    vehicle = register_device(deployment.config, holder, DeviceKind.VEHICLE)
    error = cli.fails(
        [
            "policy",
            "offer",
            "--holder",
            holder.address,
            "--vehicle",
            vehicle.address,
            "--rate",
            "0.05",
            "--min-factor",
            "2",
            "--max-factor",
            "1.5",
        ],
        insurer,
    )
    assert error == "the factor bounds ×2.00 … ×1.50 are invalid: they need 0 < min ≤ max ≤ ×5.00"
    assert cli.ok(["policy", "list", "--party", insurer.address]) == []

    _, holder, vehicle, policy_id = _motor_policy(cli, deployment, w3)
    motor = deployment.address("MotorInsurance")
    cli.ok(["policy", "settle", "-"], holder, stdin=telematics(vehicle, w3, motor, policy_id, 1, 1_010_000))
    before = cli.ok(["policy", "show", str(policy_id)])
    replay = cli.fails(["policy", "settle", "-"], holder, stdin=telematics(vehicle, w3, motor, policy_id, 1, 1_020_000))
    assert replay.startswith(f"no report settled: seq 1 for policy {hex(policy_id)}: already settled or superseded")
    assert cli.ok(["policy", "show", str(policy_id)]) == before
    not_insurer = cli.fails(["policy", "withdraw", str(policy_id)], holder)
    assert not_insurer == f"only the insurer of policy {hex(policy_id)} may do this, not {holder.address}"
    assert cli.fails(
        [
            "policy",
            "offer",
            "--holder",
            holder.address,
            "--vehicle",
            vehicle.address,
            "--rate",
            "1",
            "--min-factor",
            "fast",
        ],
        holder,
    ).startswith("Invalid value for '--min-factor'")


def test_motor_policy_lapses_when_prepaid_runs_out_and_a_top_up_reinstates_it(cli, deployment, w3) -> None:
    insurer, holder, vehicle, policy_id = _motor_policy(cli, deployment, w3)
    motor = deployment.address("MotorInsurance")
    # 500 km at ×0.90 cost 22.5 TEST: the 20 prepaid are taken, 2.5 TEST become arrears
    cli.ok(["policy", "settle", "-"], insurer, stdin=telematics(vehicle, w3, motor, policy_id, 1, 1_500_000))
    shown = cli.ok(["policy", "show", str(policy_id)])
    assert (shown["status"], shown["prepaid"], shown["arrears"]) == ("lapsed", "0", str(250 * CENT))
    report = telematics(vehicle, w3, motor, policy_id, 2, 1_510_000)
    refused = cli.fails(["policy", "settle", "-"], insurer, stdin=report)
    assert refused.endswith("the policy is lapsed for arrears; a top-up reinstates it")

    cli.ok(["token", "mint", "--amount", "5"], holder)
    topped = cli.ok(["policy", "top-up", str(policy_id), "--amount", "5"], holder)
    assert topped["arrearsPaid"] == str(250 * CENT)
    assert (topped["policy"]["status"], topped["policy"]["prepaid"]) == ("active", str(250 * CENT))
    assert token_balance(deployment, holder.address) == 0
    kinds = [e["kind"] for e in cli.ok(["policy", "history", str(policy_id), "--all"])["entries"]]
    assert kinds == ["offered", "accepted", "charged", "lapsed", "rejected", "topped-up", "reinstated"]


def test_motor_close_waits_for_the_grace_and_late_signed_driving_is_charged(own_deployment) -> None:
    deployment, w3 = own_deployment, own_deployment.chain.w3
    cli = Cli(deployment.config)
    insurer, holder, vehicle, policy_id = _motor_policy(cli, deployment, w3)
    motor = deployment.address("MotorInsurance")
    requested = cli.ok(["policy", "request-close", hex(policy_id)], holder)
    # signed at the end (notice 0: closeAt is the request's block), relayed during the grace: still charged
    last = telematics(vehicle, w3, motor, policy_id, 1, 1_100_000)
    warp_to(w3, requested["closeAt"] + 1_800)
    assert cli.ok(["policy", "settle", "-"], insurer, stdin=last)["results"][0]["amount"] == str(450 * CENT)
    late = telematics(vehicle, w3, motor, policy_id, 2, 1_200_000)
    assert cli.fails(["policy", "settle", "-"], insurer, stdin=late).endswith(
        "signed after the policy's end (its closeAt): not the policy's driving"
    )
    warp_to(w3, requested["closeFrom"])
    closed = cli.ok(["policy", "close", hex(policy_id)], holder)
    assert (closed["refund"], closed["credited"]) == (str(20 * TOKEN - 450 * CENT), False)
    assert token_balance(deployment, holder.address) == 20 * TOKEN - 450 * CENT
    kinds = [e["kind"] for e in cli.ok(["policy", "history", hex(policy_id), "--all"])["entries"]]
    assert kinds == ["offered", "accepted", "close-requested", "charged", "rejected", "closed"]


def test_loan_is_repaid_from_an_escrow_released_to_its_payout_account(cli, deployment, w3) -> None:
    lender, seller, buyer = cli.user(w3), cli.user(w3), cli.user(w3)
    cli.ok(["token", "mint", "--amount", "40"], lender)
    loan_id = cli.ok(
        [
            "loan",
            "offer",
            "--borrower",
            seller.address,
            "--principal",
            "40",
            "--repayment",
            "44",
            "--share",
            "25%",
            "--due-by",
            "+30d",
        ],
        lender,
    )["loanId"]
    account = cli.ok(["loan", "accept", str(loan_id)], seller)["account"]
    assert token_balance(deployment, seller.address) == 40 * TOKEN

    tracker = register_device(deployment.config, buyer, DeviceKind.TRACKER)
    cli.ok(["token", "mint", "--amount", "60"], buyer)
    escrow_id = cli.ok(
        [
            "escrow",
            "create",
            "--seller",
            account,
            "--device",
            tracker.address,
            "--amount",
            "60",
            "--destination",
            "u33dc0cr",
            "--deadline",
            "+2h",
        ],
        buyer,
    )["escrowId"]
    signed = delivery(
        tracker,
        w3.eth.chain_id,
        deployment.address("DeliveryEscrow"),
        escrow_id,
        1,
        chain_now(w3),
        location_bytes32("u33dc0cr"),
    )
    cli.ok(["escrow", "confirm", "-"], buyer, stdin=signed.to_payload().decode())

    # anyone sweeps: the account pulls its 60 TEST escrow credit; 25 % (15) repays, 45 go to the seller
    swept = cli.ok(["loan", "sweep", str(loan_id)], buyer)
    assert swept["collected"] == [{"source": deployment.address("DeliveryEscrow"), "amount": str(60 * TOKEN)}]
    assert (swept["repaid"], swept["forwarded"], swept["outstanding"]) == (
        str(15 * TOKEN),
        str(45 * TOKEN),
        str(29 * TOKEN),
    )
    assert token_balance(deployment, lender.address) == 15 * TOKEN
    assert token_balance(deployment, seller.address) == 85 * TOKEN
    assert token_balance(deployment, account) == 0
    listed = cli.ok(["loan", "list", "--party", seller.address])
    assert [(v["loan_id"], v["status"], v["outstanding"]) for v in listed] == [(loan_id, "active", str(29 * TOKEN))]


# ------------------------------------------------------------------------------------------------ crop + loan


def test_drought_season_pays_cover_and_the_loan_is_repaid_from_it(own_deployment) -> None:
    deployment, w3 = own_deployment, own_deployment.chain.w3
    cli = Cli(deployment.config)
    insurer, farmer, neighbour, lender = cli.user(w3), cli.user(w3), cli.user(w3), cli.user(w3)
    stations = [register_device(deployment.config, insurer, DeviceKind.WEATHER_STATION) for _ in range(3)]
    crop = deployment.address("CropInsurance")
    for s in stations:  # the insurer owns the stations here and allows itself
        allowed = cli.ok(["crop", "allow-insurer", s.address, "--insurer", insurer.address], insurer)
        assert allowed["allowed"] is True and allowed["station"] == s.address

    pool_id = cli.ok(["crop", "pool-create"], insurer)["poolId"]
    cli.ok(["token", "mint", "--amount", "1000"], insurer)
    cli.ok(["crop", "pool-deposit", str(pool_id), "--amount", "1000"], insurer)
    start = chain_now(w3) + 600
    station_args = [arg for s in stations for arg in ("--station", s.address)]
    created = cli.ok(
        [
            "crop",
            "season-create",
            "--pool",
            str(pool_id),
            *station_args,
            "--k",
            "2",
            "--index",
            "rain",
            "--threshold",
            "50mm",
            "--start",
            str(start),
            "--end",
            str(start + 3 * 86400),
            "--premium",
            "5%",
            "--coverage-slack",
            "1h",
            "--finalize-delay",
            "10s",
            "--region",
            "u0yjj",
        ],
        insurer,
    )
    season_id = created["seasonId"]
    assert created["season"]["threshold"] == 5000 and created["season"]["region"] == "u0yjj"

    # the farmer borrows 100 TEST (110 to repay, half of each payout) and names the loan's account as beneficiary
    cli.ok(["token", "mint", "--amount", "100"], lender)
    loan_id = cli.ok(
        [
            "loan",
            "offer",
            "--borrower",
            farmer.address,
            "--principal",
            "100",
            "--repayment",
            "110",
            "--share",
            "50%",
            "--due-by",
            "+30d",
        ],
        lender,
    )["loanId"]
    account = cli.ok(["loan", "accept", str(loan_id)], farmer)["account"]
    assert token_balance(deployment, farmer.address) == 100 * TOKEN
    assert cli.ok(["loan", "show", str(loan_id)])["account"] == account

    bought = cli.ok(["crop", "buy", str(season_id), "--cover", "200", "--beneficiary", account], farmer)
    assert bought["premium"] == str(10 * TOKEN)
    cli.ok(["token", "mint", "--amount", "10"], neighbour)
    cli.ok(["crop", "buy", str(season_id), "--cover", "100"], neighbour)
    assert token_balance(deployment, farmer.address) == 90 * TOKEN

    # honest stations measure 10 mm over the season (a drought below 50 mm); the third lies with 200 mm
    warp_to(w3, start + 60)
    cli.ok(["crop", "record", "-"], stdin="\n".join(weather(s, w3, crop, 1, 10_000) for s in stations))
    early = cli.fails(["crop", "finalize", str(season_id)])
    assert early.startswith(f"season {season_id} can be finalized from ")
    warp_to(w3, start + 3 * 86400 - 60)
    rains = [11_000, 11_000, 30_000]
    cli.ok(
        ["crop", "record", "-"],
        stdin="\n".join(weather(s, w3, crop, 2, r) for s, r in zip(stations, rains, strict=False)),
    )
    ending = cli.ok(["crop", "season", str(season_id)])
    assert [s["verdict"] for s in ending["stations"]] == ["abstain"] * 3, "no vote before a report after the end"
    # each station's first observation after the end: now the contract holds every one of its season
    warp_to(w3, start + 3 * 86400 + 1)
    cli.ok(
        ["crop", "record", "-"],
        stdin="\n".join(weather(s, w3, crop, 3, r) for s, r in zip(stations, rains, strict=False)),
    )
    before = cli.ok(["crop", "season", str(season_id)])
    assert [s["verdict"] for s in before["stations"]] == ["trigger", "trigger", "no trigger"]
    assert before["finalized"] is False

    warp_to(w3, start + 3 * 86400 + 11)
    report = cli.ok(["crop", "finalize", str(season_id)])
    assert report["triggered"] is True
    assert [(v["verdict"], v["measured"]) for v in report["verdicts"]] == [
        ("trigger", 1000),
        ("trigger", 1000),
        ("no trigger", 20_000),
    ]
    assert sorted(int(p["amount"]) for p in report["paid"]) == [100 * TOKEN, 200 * TOKEN]
    assert token_balance(deployment, neighbour.address) == 105 * TOKEN  # 10 minted − 5 premium + 100 cover
    assert token_balance(deployment, account) == 200 * TOKEN
    after = cli.ok(["crop", "season", str(season_id)])
    assert after["finalized"] and after["triggered"] and [p["status"] for p in after["policies"]] == ["paid", "paid"]
    pool = cli.ok(["crop", "pool", str(pool_id)])
    assert (pool["assets"], pool["locked"]) == (str(1000 * TOKEN + 15 * TOKEN - 300 * TOKEN), "0")

    # the sweep takes half of the 200 TEST payout for the lender (debt 110) and forwards the rest to the farmer
    swept = cli.ok(["loan", "sweep", str(loan_id)])
    assert (swept["repaid"], swept["forwarded"], swept["outstanding"]) == (
        str(100 * TOKEN),
        str(100 * TOKEN),
        str(10 * TOKEN),
    )
    assert token_balance(deployment, lender.address) == 100 * TOKEN
    assert token_balance(deployment, farmer.address) == 190 * TOKEN
    assert token_balance(deployment, account) == 0
    cli.ok(["loan", "repay", str(loan_id), "--amount", "25"], farmer)  # capped at the 10 outstanding
    shown = cli.ok(["loan", "show", str(loan_id)])
    assert (shown["status"], shown["outstanding"], shown["repaid"]) == ("repaid", "0", str(110 * TOKEN))
    assert token_balance(deployment, lender.address) == 110 * TOKEN
    assert token_balance(deployment, farmer.address) == 180 * TOKEN

    # what people read: the same figures in tables
    season_text = _human(cli, ["crop", "season", str(season_id)])
    assert "TRIGGERED: 2 trigger, 1 no trigger, 0 abstained" in season_text and "no trigger" in season_text
    assert "715 TEST" in _human(cli, ["crop", "pool", str(pool_id)])
    loan_text = _human(cli, ["loan", "show", str(loan_id)])
    assert account in loan_text and "110 TEST" in loan_text
    assert account in _human(cli, ["loan", "list"])


def test_crop_bad_inputs_change_nothing(own_deployment) -> None:
    deployment, w3 = own_deployment, own_deployment.chain.w3
    cli = Cli(deployment.config)
    insurer, farmer = cli.user(w3), cli.user(w3)
    stations = [register_device(deployment.config, insurer, DeviceKind.WEATHER_STATION) for _ in range(3)]
    pool_id = cli.ok(["crop", "pool-create"], insurer)["poolId"]
    cli.ok(["token", "mint", "--amount", "100"], insurer)
    cli.ok(["crop", "pool-deposit", str(pool_id), "--amount", "100"], insurer)
    station_args = [arg for s in stations for arg in ("--station", s.address)]
    common = [
        "--pool",
        str(pool_id),
        *station_args,
        "--index",
        "heat",
        "--threshold",
        "35C",
        "--days",
        "3",
        "--start",
        "+1h",
        "--end",
        "+30d",
        "--premium",
        "10%",
    ]
    # nobody may name a station its owner has not allowed (or no longer allows), and only its owner may allow
    allow_insurer(cli, insurer, stations)
    revoked = cli.ok(["crop", "allow-insurer", stations[0].address, "--insurer", insurer.address, "--revoke"], insurer)
    assert revoked["allowed"] is False
    refused = cli.fails(["crop", "season-create", *common, "--k", "2"], insurer)
    assert refused.startswith(f"the owner of station {stations[0].address} has not allowed {insurer.address}")
    stranger = cli.fails(["crop", "allow-insurer", stations[0].address, "--insurer", farmer.address], farmer)
    assert stranger == f"only the owner of station {stations[0].address} may do this, not {farmer.address}"
    allow_insurer(cli, insurer, stations)
    quorum = cli.fails(["crop", "season-create", *common, "--k", "3"], insurer)
    assert quorum.startswith("k = 3 of 3 stations is not allowed")
    assert cli.ok(["crop", "pool", str(pool_id)])["seasons"] == []

    season_id = cli.ok(["crop", "season-create", *common, "--k", "2"], insurer)["seasonId"]
    assert cli.ok(["crop", "pool", str(pool_id)])["seasons"] == [season_id]
    cli.ok(["token", "mint", "--amount", "50"], farmer)
    too_much = cli.fails(["crop", "buy", str(season_id), "--cover", "500"], farmer)
    assert too_much == (
        f"pool {pool_id} can take on only 150 TEST more cover (free assets 100 TEST plus this premium), not 500 TEST"
    )
    assert token_balance(deployment, farmer.address) == 50 * TOKEN
    assert cli.ok(["crop", "season", str(season_id)])["policies"] == []
    not_owner = cli.fails(["crop", "pool-withdraw", str(pool_id), "--amount", "1"], farmer)
    assert not_owner == f"only the owner of pool {pool_id} may do this, not {farmer.address}"
    assert cli.ok(["crop", "pool", str(pool_id)])["assets"] == str(100 * TOKEN)


def test_loan_bad_inputs_change_nothing(own_deployment) -> None:
    deployment, w3 = own_deployment, own_deployment.chain.w3
    cli = Cli(deployment.config)
    lender, borrower, stranger = cli.user(w3), cli.user(w3), cli.user(w3)
    cli.ok(["token", "mint", "--amount", "50"], lender)
    loan_id = cli.ok(
        [
            "loan",
            "offer",
            "--borrower",
            borrower.address,
            "--principal",
            "50",
            "--repayment",
            "55",
            "--share",
            "2500bps",
            "--due-by",
            "+60d",
        ],
        lender,
    )["loanId"]
    assert token_balance(deployment, lender.address) == 0
    error = cli.fails(["loan", "accept", str(loan_id)], stranger)
    assert error == f"only the borrower of loan {loan_id} may do this, not {stranger.address}"
    not_yet = cli.fails(["loan", "sweep", str(loan_id)], stranger)
    assert not_yet == f"loan {loan_id} is only offered: the borrower has not accepted it yet"
    shown = cli.ok(["loan", "show", str(loan_id)])
    assert (shown["status"], shown["repaid"]) == ("offered", "0")
    assert token_balance(deployment, borrower.address) == 0
    cli.ok(["loan", "cancel", str(loan_id)], borrower)
    assert token_balance(deployment, lender.address) == 50 * TOKEN
    assert cli.fails(
        [
            "loan",
            "offer",
            "--borrower",
            borrower.address,
            "--principal",
            "1",
            "--repayment",
            "2",
            "--share",
            "150%",
            "--due-by",
            "+1d",
        ],
        lender,
    ).startswith("Invalid value for '--share'")


def test_an_optimistic_motor_policy_goes_through_the_same_commands(cli, deployment, w3) -> None:
    """`policy offer --mode optimistic` opens it on OptimisticMotor; show, accept, list, request-close and close route
    by the id's flag; `policy settle` refuses its reports in a sentence (they reach the chain in batches)."""
    insurer, holder = cli.user(w3), cli.user(w3)
    vehicle = register_device(deployment.config, holder, DeviceKind.VEHICLE)
    args = ["policy", "offer", "--holder", holder.address, "--vehicle", vehicle.address, "--rate", "0.05"]
    offered = cli.ok([*args, "--notice", "1d", "--mode", "optimistic"], insurer)
    policy_id = int(offered["policyId"])
    assert offered["mode"] == "optimistic" and policy_id & AGREEMENT_ID_FLAG
    om = deployment.contract("OptimisticMotor")
    assert om.functions.policyOf(policy_id).call()[2] == vehicle.address, "offered there"
    shown = cli.ok(["policy", "show", hex(policy_id)])
    assert (shown["status"], shown["mode"]) == ("offered", "optimistic")
    cli.ok(["token", "mint", "--amount", "20"], holder)
    cli.ok(["policy", "accept", hex(policy_id), "--deposit", "20"], holder)
    assert cli.ok(["policy", "show", hex(policy_id)])["prepaid"] == str(20 * 10**18)
    listed = cli.ok(["policy", "list", "--party", holder.address])
    assert [int(p["policy_id"]) for p in listed] == [policy_id]

    report = telematics(vehicle, w3, om.address, policy_id, 1, 5_000)
    refused = cli.fails(["policy", "settle", "-"], insurer, stdin=report)
    assert refused.startswith(f"policy {hex(policy_id)} is optimistic: its reports are committed in batches")

    requested = cli.ok(["policy", "request-close", hex(policy_id)], holder)
    delay = int(om.functions.closeDelay(policy_id).call())
    assert delay > 2 * 3600 and requested["closeFrom"] == requested["closeAt"] + delay + 1
    too_early = cli.fails(["policy", "close", hex(policy_id)], holder)
    assert too_early.startswith(f"policy {hex(policy_id)} can be closed from ")
    # (the close itself, after the delay, is forge's: this chain is shared, its clock must not jump a day)
