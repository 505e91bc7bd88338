"""The benchmark's building blocks on the test stack, small: gas figures come from real settlements, the naive relay
pays one transaction per event, and the daemon path pays every published reading. No timing is asserted: this
checks that what `scripts/bench` measures is real money moving."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import e2e, gas
from bench.naive import NaiveRelayProcess
from bench.stack import PRICE_PER_UNIT, BenchStack, Meter, topic_of

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # web3's process_receipt on other contracts' logs


def earnings(stack: BenchStack, meters: list[Meter]) -> list[int]:
    billing = stack.ctx_contract("MeteredBilling")
    return [int(billing.functions.earningsOf(m.agreement).call()) for m in meters]


def readings(meters: list[Meter], rounds: int) -> list[tuple[str, bytes, e2e.Key, str]]:
    out = []
    for _ in range(rounds):
        for meter in meters:
            msg, sig = meter.next_reading()
            out.append((meter.topic, meter.payload(msg, sig), (meter.agreement, meter.seq), "reading"))
    return out


def test_gas_figures_come_from_settled_readings_and_deliveries(stack: BenchStack) -> None:
    meters = stack.meters[:10]
    before = earnings(stack, meters)
    figures = gas.measure_gas(stack, stack.fund_relayer(), meters, stack.parcels)
    # one unmeasured round + batch 1, 10 and "100" (all ten in one transaction): four readings per agreement paid
    assert [a - b for a, b in zip(earnings(stack, meters), before, strict=True)] == [4 * PRICE_PER_UNIT] * 10
    by = {(f.kind, f.batch): f for f in figures}
    assert by[("reading", 1)].transactions == 10 and by[("reading", 10)].transactions == 1
    assert by[("delivery", 1)].events == 4 and by[("delivery", 100)].transactions == 1
    # batching spreads the 21,000 base: one per transaction costs more per event than a batch
    assert by[("reading", 1)].per_event > by[("reading", 10)].per_event + 15_000
    assert by[("delivery", 1)].per_event > by[("delivery", 10)].per_event
    escrow = stack.ctx_contract("DeliveryEscrow")
    released = 2  # IDeliveryEscrow.EscrowState.Released
    assert [escrow.functions.escrowOf(p.escrow_id).call()[10] for p in stack.parcels] == [released] * 12


def test_naive_relay_pays_one_transaction_per_event(stack: BenchStack, watcher: e2e.Watcher) -> None:
    meters = stack.meters[10:15]
    before = earnings(stack, meters)
    billing = stack.ctx_contract("MeteredBilling")
    relay = NaiveRelayProcess(
        stack.mosquitto.host,
        stack.mosquitto.port,
        stack.chain.chain_id,
        stack.config.chain.rpc_url,
        "0x" + bytes(stack.fund_relayer().key).hex(),
        billing.address,
        stack.config.path(stack.config.paths.artifacts_dir) / "MeteredBilling.json",
    )
    relay.start()
    try:
        load = e2e.run_load(
            stack.mosquitto.host,
            stack.mosquitto.port,
            watcher,
            readings(meters, 1),
            None,
            topic_of(billing, "ReadingSettled"),
            grace=60,
        )
    finally:
        counts = relay.stop()
    assert load.paid == load.events == 5 and counts == {"settled": 5, "failed": 0}
    assert load.transactions == 5 and load.onchain_items == 5
    assert [a - b for a, b in zip(earnings(stack, meters), before, strict=True)] == [PRICE_PER_UNIT] * 5


def test_daemon_pays_every_published_reading(stack: BenchStack, watcher: e2e.Watcher, tmp_path: Path) -> None:
    meters = stack.meters[15:25]
    before = earnings(stack, meters)
    billing = stack.ctx_contract("MeteredBilling")
    relayer = stack.fund_relayer()
    daemon = e2e.DaemonProcess(
        tmp_path,
        stack.config.chain.rpc_url,
        stack.config.path(stack.config.paths.deployments_dir),
        stack.mosquitto.host,
        stack.mosquitto.port,
        "0x" + bytes(relayer.key).hex(),
        IOTSETTLE_ORACLE_VERIFY_WORKERS="0",
        IOTSETTLE_ORACLE_BATCH_MAX_WAIT="0.1",
    )
    daemon.start()
    try:
        daemon.wait_running()
        load = e2e.run_load(
            stack.mosquitto.host,
            stack.mosquitto.port,
            watcher,
            readings(meters, 2),
            200,
            topic_of(billing, "ReadingSettled"),
            grace=60,
            daemon=daemon,
        )
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log_tail()
    assert load.paid == load.events == 20, daemon.log_tail()
    # cumulative registers: two readings of one unit each, billed as a delta of two units however they were batched
    assert [a - b for a, b in zip(earnings(stack, meters), before, strict=True)] == [2 * PRICE_PER_UNIT] * 10
    assert 10 <= load.onchain_items <= 20 and load.transactions < load.onchain_items
    assert load.stages and all(s["events"] > 0 for s in load.stages.values())
