"""`iotsettle policy health ...` against a real chain: offer, accept, relay summaries, tiers and premium, close, a
late summary's credit, and the one-sentence errors of bad inputs."""

from __future__ import annotations

from iotsettle.oracle.protocol.device_kinds import DeviceKind

from tests.kit.cli import Cli, register_device
from tests.kit.products import activity, token_balance, warp_to

TOKEN = 10**18
WEEK = 7 * 86_400


def test_health_policy_prices_each_week_by_its_best_tier_and_credits_a_late_summary(own_deployment) -> None:
    deployment, w3 = own_deployment, own_deployment.chain.w3
    cli = Cli(deployment.config)
    insurer, holder = cli.user(w3), cli.user(w3)
    wearable = register_device(deployment.config, holder, DeviceKind.WEARABLE)
    health = deployment.address("HealthInsurance")
    offered = cli.ok(
        [
            "policy",
            "health",
            "offer",
            "--holder",
            holder.address,
            "--wearable",
            wearable.address,
            "--rate",
            "10",
            "--period",
            "7d",
            "--periods",
            "3",
        ],
        insurer,
    )
    policy_id = int(offered["policyId"])
    cli.ok(["token", "mint", "--amount", "40"], holder)
    accepted = cli.ok(["policy", "health", "accept", hex(policy_id), "--deposit", "40"], holder)
    start = accepted["start"]

    # two weeks over: week 0 at tier 1, then its better summary (tier 3); week 1 withheld for now
    warp_to(w3, start + 2 * WEEK + 60)
    lines = [activity(wearable, w3, health, policy_id, 1, 0, 1), activity(wearable, w3, health, policy_id, 2, 0, 3)]
    out = cli.ok(["policy", "health", "settle", "-"], insurer, stdin="\n".join(lines))
    assert [(r["seq"], r["settled"], r["period"], r["tier"]) for r in out["results"]] == [
        (1, True, 0, 1),
        (2, True, 0, 3),
    ]
    shown = cli.ok(["policy", "health", "show", hex(policy_id)])
    assert [(p["period"], p["tier"], p["cost"]) for p in shown["periodTiers"]] == [
        (0, 3, str(65 * TOKEN // 10)),
        (1, None, str(10 * TOKEN)),
        (2, None, "0"),
    ]
    assert (shown["premium"], shown["prepaid"], shown["tier_counts"]) == (
        str(165 * TOKEN // 10),
        str(235 * TOKEN // 10),
        [0, 0, 0, 1],
    )
    listed = cli.ok(["policy", "health", "list", "--party", holder.address])
    assert [(p["policy_id"], p["status"]) for p in listed] == [(str(policy_id), "active")]

    # a worse summary of week 0 changes nothing and says why
    worse = activity(wearable, w3, health, policy_id, 3, 0, 2)
    replay = cli.fails(["policy", "health", "settle", "-"], insurer, stdin=worse)
    assert replay == (
        f"no summary settled: seq 3 for policy {hex(policy_id)}: the period already has a summary of this tier or a "
        "better one"
    )

    # the insurer takes only what no summary can take back: each week over at the best tier's price
    assert cli.ok(["policy", "health", "withdraw", hex(policy_id)], insurer)["amount"] == str(13 * TOKEN)
    warp_to(w3, start + 3 * WEEK)
    closed = cli.ok(["policy", "health", "close", hex(policy_id)], holder)
    assert closed["refund"] == str(40 * TOKEN - 265 * TOKEN // 10)
    # the withheld summary of week 1 (tier 2) after the close: its 2 TEST come back as a credit
    late = activity(wearable, w3, health, policy_id, 4, 1, 2)
    cli.ok(["policy", "health", "settle", "-"], insurer, stdin=late)
    before = token_balance(deployment, holder.address)
    assert cli.ok(["policy", "health", "withdraw-credit"], holder)["amount"] == str(2 * TOKEN)
    assert token_balance(deployment, holder.address) == before + 2 * TOKEN
    assert cli.ok(["policy", "health", "show", hex(policy_id)])["premium"] == str(245 * TOKEN // 10)


def test_health_bad_inputs_change_nothing(own_deployment) -> None:
    deployment, w3 = own_deployment, own_deployment.chain.w3
    cli = Cli(deployment.config)
    insurer, holder = cli.user(w3), cli.user(w3)
    vehicle = register_device(deployment.config, holder, DeviceKind.VEHICLE)
    wearable = register_device(deployment.config, holder, DeviceKind.WEARABLE)
    base = ["policy", "health", "offer", "--holder", holder.address, "--rate", "1"]
    error = cli.fails([*base, "--wearable", vehicle.address], insurer)
    assert error == f"{vehicle.address} is not a wearable: health policies are priced by a WEARABLE device"
    error = cli.fails([*base, "--wearable", wearable.address, "--discounts", "0,20,10,30"], insurer)
    assert (
        error == "the tier discounts [0, 2000, 1000, 3000] (basis points) must not fall from tier 0 to 3 nor pass 10000"
    )
    assert cli.fails([*base, "--wearable", wearable.address, "--discounts", "0,10"], insurer).startswith(
        "Invalid value: '0,10': four percentages"
    )
    assert cli.ok(["policy", "health", "list", "--party", insurer.address]) == []
    policy_id = int(cli.ok([*base, "--wearable", wearable.address, "--periods", "2"], insurer)["policyId"])
    cli.ok(["token", "mint", "--amount", "5"], holder)
    cli.ok(["policy", "health", "accept", hex(policy_id), "--deposit", "5"], holder)
    early = cli.fails(["policy", "health", "close", hex(policy_id)], holder)
    assert early.startswith(f"health policy {hex(policy_id)} ends at ") and early.endswith("it can be closed from then")
    assert cli.fails(["policy", "health", "withdraw", hex(policy_id)], holder) == (
        f"only the insurer of health policy {hex(policy_id)} may do this, not {holder.address}"
    )
