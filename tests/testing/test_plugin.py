"""The plugin's fixtures do what docs/TESTING.md says: accounts hold what was asked, devices are registered on chain
and sign for this deployment, `paid` tells a payment from a rejection and from nothing, and the stack, the deployment
and the daemon are the session's and module's own."""

from __future__ import annotations

import tomllib

import pytest
from iotsettle.oracle.ops import escrow, registry
from iotsettle.oracle.ops.token_info import describe_token
from iotsettle.oracle.protocol.location import location_bytes32
from iotsettle.oracle.testing.wait import EventRejected, WaitTimedOut

from tests.kit.stack import REPO

DEPOT = location_bytes32("u33dc0cpp")
ELSEWHERE = location_bytes32("u0vu2cq12")


def test_the_distribution_registers_the_plugin_for_pytest() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"iotsettle": "iotsettle.oracle.testing.plugin"}


def test_fund_gives_a_new_account_what_was_asked(fund, w3, dev_accounts) -> None:
    first, second = fund(eth=2.5), fund(eth=0)
    assert first.address != second.address
    assert first.address not in {a.address for a in dev_accounts}
    assert (w3.eth.get_balance(first.address), w3.eth.get_balance(second.address)) == (25 * 10**17, 0)


def test_register_device_registers_the_key_on_chain_to_its_owner(deployment, register_device, fund) -> None:
    owner = fund()
    vehicle = register_device("vehicle", owner=owner)
    meter = register_device()
    view = registry.device_of(deployment.ops(), vehicle.key.address)
    assert (view.owner, view.kind, view.status) == (owner.address, "vehicle", "active")
    assert registry.device_of(deployment.ops(), meter.key.address).kind == "meter"
    # it signs for this chain and this deployment's contracts, with its own key
    reading = meter.reading(7, 1_100)
    assert (reading.chain_id, reading.contract) == (deployment.chain.chain_id, deployment.address("MeteredBilling"))
    assert reading.signer() == meter.key.address


def _escrow(deployment, fund, register_device, w3, destination: bytes) -> tuple:
    buyer = fund()
    tracker = register_device("tracker")
    ctx = deployment.ops(buyer)
    created = escrow.create(
        ctx,
        seller=fund(eth=0).address,
        device=tracker.key.address,
        token=describe_token(ctx, "ETH"),
        amount=10**15,
        destination=destination,
        deadline=w3.eth.get_block("latest")["timestamp"] + 3600,
    )
    return tracker, created.escrow_id


def test_paid_tells_a_payment_from_a_rejection(deployment, fund, register_device, paid, w3) -> None:
    """Relayed directly (no daemon): one delivery at the destination, one elsewhere, in one batch."""
    good_tracker, good_escrow = _escrow(deployment, fund, register_device, w3, DEPOT)
    bad_tracker, bad_escrow = _escrow(deployment, fund, register_device, w3, DEPOT)
    good = good_tracker.delivery(good_escrow, DEPOT, 400)
    bad = bad_tracker.delivery(bad_escrow, ELSEWHERE, 400)
    escrow.confirm(deployment.ops(fund()), [good, bad])

    assert paid(good, timeout=5).args["toSeller"] == 10**15
    with pytest.raises(EventRejected, match=f"rejected delivery seq {bad.seq} of {bad.device}"):
        paid(bad, timeout=5)


def test_paid_gives_up_on_an_event_nobody_relays(deployment, fund, register_device, paid, w3) -> None:
    tracker, escrow_id = _escrow(deployment, fund, register_device, w3, DEPOT)
    with pytest.raises(WaitTimedOut, match=r"delivery seq 1 .* paid"):
        paid(tracker.delivery(escrow_id, DEPOT, 400), timeout=0.5)


def test_the_daemon_is_the_modules_own_and_ready(oracle_daemon, local_stack, deployment) -> None:
    assert oracle_daemon.proc is not None and oracle_daemon.proc.poll() is None
    health = oracle_daemon.health()
    assert health is not None and health["checks"]["mqtt"]["status"] == "ok"
    assert (
        oracle_daemon.env["IOTSETTLE_CHAIN_RPC_URL"] == local_stack.config.chain.rpc_url == local_stack.anvil.endpoint
    )
    assert oracle_daemon.env["IOTSETTLE_MQTT_PORT"] == str(local_stack.mosquitto.port)
    assert deployment.chain.chain_id == local_stack.anvil.chain_id
