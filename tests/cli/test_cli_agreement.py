"""`iotsettle agreement` end to end on a real anvil: open, accept, settle readings, top up, withdraw, close."""

from __future__ import annotations

from iotsettle.oracle.protocol.batch_tree import AGREEMENT_ID_FLAG
from iotsettle.oracle.protocol.device_kinds import DeviceKind

from tests.kit.cli import Cli, register_device
from tests.kit.products import chain_now, reading, token_balance

TOKEN = 10**18


def _open(cli: Cli, deployment, w3, price: str = "0.5", deposit: str = "10", kind=DeviceKind.METER):
    provider, consumer = cli.user(w3), cli.user(w3)
    meter = register_device(deployment.config, provider, kind)
    opened = cli.ok(
        [
            "agreement",
            "open",
            "--consumer",
            consumer.address,
            "--device",
            meter.address,
            "--price",
            price,
            "--start-value",
            "1000",
        ],
        provider,
    )
    agreement_id = int(opened["agreementId"])
    assert opened["agreementIdHex"] == hex(agreement_id)
    assert cli.ok(["agreement", "status", hex(agreement_id)])["status"] == "offered"
    cli.ok(["token", "mint", "--to", consumer.address, "--amount", "100"], consumer)
    accepted = cli.ok(["agreement", "accept", hex(agreement_id), "--deposit", deposit], consumer)
    assert accepted["startValue"] == 1000, "the acceptance names the offer's start value"
    return provider, consumer, meter, agreement_id


def _settle(cli: Cli, deployment, w3, meter, agreement_id: int, readings: list[tuple[int, int]], as_user) -> dict:
    now = chain_now(w3)
    lines = "\n".join(
        reading(meter, w3.eth.chain_id, deployment.address("MeteredBilling"), agreement_id, seq, now, value)
        .to_payload()
        .decode()
        for seq, value in readings
    )
    return cli.ok(["agreement", "settle", "-"], as_user, stdin=lines)


def test_open_settle_withdraw_close_moves_the_money(cli, deployment, w3) -> None:
    provider, consumer, meter, agreement_id = _open(cli, deployment, w3)
    assert token_balance(deployment, consumer.address) == 90 * TOKEN

    # two readings in one batch: 1000 → 1004 → 1010 = 10 units at 0.5 = 5 TEST
    out = _settle(cli, deployment, w3, meter, agreement_id, [(1, 1004), (2, 1010)], provider)
    assert [(r["seq"], r["settled"], r["amount"]) for r in out["results"]] == [
        (1, True, str(2 * TOKEN)),
        (2, True, str(3 * TOKEN)),
    ]
    status = cli.ok(["agreement", "status", str(agreement_id)])
    assert (status["status"], status["last_value"], status["prepaid"], status["earnings"]) == (
        "active",
        1010,
        str(5 * TOKEN),
        str(5 * TOKEN),
    )

    cli.ok(["agreement", "top-up", str(agreement_id), "--amount", "2.5"], consumer)
    assert cli.ok(["agreement", "status", str(agreement_id)])["prepaid"] == str(75 * TOKEN // 10)

    paid = cli.ok(["agreement", "withdraw", str(agreement_id)], provider)
    assert paid["amount"] == str(5 * TOKEN)
    assert token_balance(deployment, provider.address) == 5 * TOKEN

    # a fresh final reading ends the agreement now, without the notice, but refunds nothing yet: a newer reading
    # signed before it may still be on its way and settles during the grace
    final = reading(meter, w3.eth.chain_id, deployment.address("MeteredBilling"), agreement_id, 3, chain_now(w3), 1010)
    newer = reading(meter, w3.eth.chain_id, deployment.address("MeteredBilling"), agreement_id, 4, chain_now(w3), 1012)
    ended = cli.ok(
        ["agreement", "close", str(agreement_id), "--reading", "-"], consumer, stdin=final.to_payload().decode()
    )
    assert (ended["closed"], ended["refund"]) == (False, "0")
    assert ended["closableFrom"] == ended["closeAt"] + 3601
    assert token_balance(deployment, consumer.address) == 90 * TOKEN - 25 * TOKEN // 10
    out = cli.ok(["agreement", "settle", "-"], provider, stdin=newer.to_payload().decode())
    assert out["results"][0]["amount"] == str(1 * TOKEN), "2 more units signed before the end still bill"
    early = cli.fails(["agreement", "close", str(agreement_id)], consumer)
    assert early.startswith(f"agreement {agreement_id} can be closed from ")
    status = cli.ok(["agreement", "status", str(agreement_id)])
    assert (status["status"], status["prepaid"]) == ("active", str(65 * TOKEN // 10))

    listed = cli.ok(["agreement", "list", "--party", consumer.address])
    assert [a["agreement_id"] for a in listed] == [str(agreement_id)]


def test_running_dry_suspends_and_top_up_resumes(cli, deployment, w3) -> None:
    provider, consumer, meter, agreement_id = _open(cli, deployment, w3, price="1", deposit="3")
    _settle(cli, deployment, w3, meter, agreement_id, [(1, 1005)], provider)  # 5 units cost 5, 3 prepaid
    status = cli.ok(["agreement", "status", str(agreement_id)])
    assert (status["status"], status["arrears"], status["prepaid"]) == ("suspended", str(2 * TOKEN), "0")

    error = cli.fails(
        ["agreement", "settle", "-"],
        provider,
        stdin=reading(
            meter,
            w3.eth.chain_id,
            deployment.address("MeteredBilling"),
            agreement_id,
            2,
            chain_now(w3),
            1006,
        )
        .to_payload()
        .decode(),
    )
    assert error == f"agreement {agreement_id} is suspended for arrears of 2 TEST; top it up first"

    cli.ok(["agreement", "top-up", str(agreement_id), "--amount", "4"], consumer)
    status = cli.ok(["agreement", "status", str(agreement_id)])
    assert (status["status"], status["arrears"], status["prepaid"]) == ("active", "0", str(2 * TOKEN))


def test_notice_period_close_needs_a_second_call(cli, deployment, w3) -> None:
    provider, consumer = cli.user(w3), cli.user(w3)
    vehicle = register_device(deployment.config, provider, DeviceKind.VEHICLE)  # pay-per-km uses the same contract
    agreement_id = int(
        cli.ok(
            [
                "agreement",
                "open",
                "--consumer",
                consumer.address,
                "--device",
                vehicle.address,
                "--price",
                "0.02",
                "--notice",
                "1d",
            ],
            provider,
        )["agreementId"]
    )
    cli.ok(["token", "mint", "--amount", "5"], consumer)
    cli.ok(["agreement", "accept", str(agreement_id), "--deposit", "5"], consumer)
    first = cli.ok(["agreement", "close", str(agreement_id)], consumer)
    assert first["closed"] is False and first["closeAt"] >= chain_now(w3) + 86_000
    assert first["closableFrom"] == first["closeAt"] + 3601, "readings signed by closeAt settle for an hour more"
    error = cli.fails(["agreement", "close", str(agreement_id)], provider)
    assert error == f"only the consumer of agreement {agreement_id} may do this, not {provider.address}"
    early = cli.fails(["agreement", "close", str(agreement_id)], consumer)
    assert early.startswith(f"agreement {agreement_id} can be closed from ")
    assert early.endswith("readings signed by closeAt may still arrive until then")


def test_accepting_another_start_value_is_refused_in_a_sentence(cli, deployment, w3) -> None:
    provider, consumer = cli.user(w3), cli.user(w3)
    meter = register_device(deployment.config, provider, DeviceKind.METER)
    agreement_id = int(
        cli.ok(
            [
                "agreement",
                "open",
                "--consumer",
                consumer.address,
                "--device",
                meter.address,
                "--price",
                "0.5",
                "--start-value",
                "5000",
            ],
            provider,
        )["agreementId"]
    )
    cli.ok(["token", "mint", "--amount", "10"], consumer)
    error = cli.fails(
        ["agreement", "accept", str(agreement_id), "--deposit", "10", "--expect-start-value", "1200"], consumer
    )
    assert error.startswith(f"the offer of agreement {agreement_id} bills the meter from register 5000, not 1200")
    assert cli.ok(["agreement", "status", str(agreement_id)])["status"] == "offered"
    accepted = cli.ok(
        ["agreement", "accept", str(agreement_id), "--deposit", "10", "--expect-start-value", "5000"], consumer
    )
    assert accepted["startValue"] == 5000
    assert cli.ok(["agreement", "status", str(agreement_id)])["last_value"] == 5000


def test_offer_for_a_tracker_is_refused_in_a_sentence(cli, deployment, w3) -> None:
    provider, consumer = cli.user(w3), cli.user(w3)
    tracker = register_device(deployment.config, provider, DeviceKind.TRACKER)
    error = cli.fails(
        ["agreement", "open", "--consumer", consumer.address, "--device", tracker.address, "--tariff", "1"], provider
    )
    assert error == f"device {tracker.address} is of the wrong kind for this product"


def test_an_optimistic_agreement_goes_through_the_same_commands(cli, deployment, w3) -> None:
    """`agreement open --mode optimistic` opens it on OptimisticBilling; every other command routes by the id, and
    the ones that relay single readings refuse it in a sentence (its readings reach the chain in batches)."""
    provider, consumer = cli.user(w3), cli.user(w3)
    meter = register_device(deployment.config, provider, DeviceKind.METER)
    args = ["agreement", "open", "--consumer", consumer.address, "--device", meter.address, "--price", "0.5"]
    opened = cli.ok([*args, "--start-value", "1000", "--notice", "1d", "--mode", "optimistic"], provider)
    agreement_id = int(opened["agreementId"])
    assert opened["mode"] == "optimistic"
    assert agreement_id & AGREEMENT_ID_FLAG, "minted by OptimisticBilling"
    optimistic = deployment.contract("OptimisticBilling")
    assert optimistic.functions.agreementOf(agreement_id).call()[5] == 1, "offered there, not on MeteredBilling"
    direct = int(cli.ok([*args, "--start-value", "1000"], provider)["agreementId"])
    assert not direct & AGREEMENT_ID_FLAG, "direct stays the default"

    status = cli.ok(["agreement", "status", hex(agreement_id)])
    assert (status["status"], status["mode"], status["start_value"]) == ("offered", "optimistic", 1000)
    cli.ok(["token", "mint", "--amount", "20"], consumer)
    assert cli.ok(["agreement", "accept", hex(agreement_id), "--deposit", "10"], consumer)["startValue"] == 1000
    cli.ok(["agreement", "top-up", hex(agreement_id), "--amount", "2"], consumer)
    assert cli.ok(["agreement", "status", hex(agreement_id)])["prepaid"] == str(12 * TOKEN)
    listed = cli.ok(["agreement", "list", "--party", consumer.address])
    assert sorted(int(v["agreement_id"]) for v in listed) == sorted([agreement_id, direct])

    signed = reading(meter, w3.eth.chain_id, optimistic.address, agreement_id, 1, chain_now(w3), 1004)
    refused = cli.fails(["agreement", "settle", "-"], provider, stdin=signed.to_payload().decode())
    assert refused.startswith(f"agreement {hex(agreement_id)} is optimistic: it cannot be relayed here")
    refused = cli.fails(["agreement", "close", hex(agreement_id), "--reading", "-"], consumer, stdin="{}")
    assert "is optimistic: it ends with its notice" in refused

    first = cli.ok(["agreement", "close", hex(agreement_id)], consumer)
    delay = int(optimistic.functions.closeDelay().call())
    assert delay > 2 * 3600, "the grace, the challenge window and a grace to claim"
    assert first["closed"] is False and first["closableFrom"] == first["closeAt"] + delay + 1
    assert cli.ok(["agreement", "status", hex(agreement_id)])["close_at"] == first["closeAt"]
    early = cli.fails(["agreement", "close", hex(agreement_id)], consumer)
    assert early.startswith(f"agreement {agreement_id} can be closed from ")
    # (the close itself, after the delay, is forge's: this chain is shared, its clock must not jump a day)
