"""The benchmark's building blocks on the test stack, small: gas figures come from real settlements of every kind,
the naive and the pipelined relay pay one transaction per event, and the daemon path pays every published reading;
the report carries the floors, the gas per received reading and the pipelined ratio. No timing is asserted: this
checks that what `scripts/bench` measures is real money moving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from iotsettle.oracle.chain.node import Anvil
from iotsettle.oracle.ops import motor
from iotsettle.oracle.testing.stack import private_deployment

from bench import e2e, gas, lanes, optimistic, report
from bench.floor import floors
from bench.naive import NaiveRelayProcess
from bench.received import gas_per_received
from bench.stack import METRES_PER_REPORT, PRICE_PER_UNIT, PROVIDER, RATE_PER_KM, BenchStack, Meter, topic_of

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


def test_gas_figures_come_from_settled_events_of_every_kind(stack: BenchStack) -> None:
    meters = stack.meters[:10]
    before = earnings(stack, meters)
    crop = stack.ctx_contract("CropInsurance")
    figures = gas.measure_gas(stack, stack.fund_relayer(), meters, stack.parcels, stack.vehicles, stack.stations)
    # a first round + batch 1, 10 and "100" (all ten in one transaction): four readings per agreement paid
    assert [a - b for a, b in zip(earnings(stack, meters), before, strict=True)] == [4 * PRICE_PER_UNIT] * 10
    # four reports of one km each per policy, one harsh braking (every third report): priced on the totals
    for vehicle in stack.vehicles:
        policy = motor.policy_of(stack.ctx(PROVIDER), vehicle.policy)
        assert policy.last_seq == vehicle.seq == 4 and policy.last_odometer == 4 * METRES_PER_REPORT
        expected = motor.premium(4 * METRES_PER_REPORT, 1, 10_000, 20_000, 500, RATE_PER_KM)
        assert policy.charged == expected > 0
    # the bench's own stations only: the session's chain also carries other tests' observations
    ours = {s.address for s in stack.stations}
    recorded = [e for e in crop.events.ObservationRecorded().get_logs(from_block=0) if e.args["station"] in ours]
    assert sorted((e.args["station"], e.args["seq"]) for e in recorded) == sorted(
        (s.address, n) for s in stack.stations for n in range(1, 5)
    )
    by = {(f.kind, f.batch): f for f in figures if not f.first}
    assert {f.kind for f in figures if f.first} == {"reading", "telematics", "weather"}
    for kind in ("telematics", "weather"):
        assert by[(kind, 1)].transactions == 4 and by[(kind, 10)].transactions == 1
        assert by[(kind, 1)].per_event > by[(kind, 10)].per_event + 10_000
        labels = by[(kind, 10)].breakdown
        assert labels["ecrecover (precompile)"] == 3_000 and labels["DeviceRegistry key lookup (inside the call)"] > 0
        assert sum(labels.values()) == pytest.approx(by[(kind, 10)].per_event, abs=len(labels))
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
            topic_of(billing, "ReadingsSettled"),
            grace=60,
        )
    finally:
        counts = relay.stop()
    assert load.paid == load.events == 5 and counts == {"settled": 5, "failed": 0}
    assert load.transactions == 5 and load.onchain_items == 5
    assert [a - b for a, b in zip(earnings(stack, meters), before, strict=True)] == [PRICE_PER_UNIT] * 5


def test_pipelined_relay_pays_every_event_exactly_once_one_transaction_each(
    stack: BenchStack, watcher: e2e.Watcher
) -> None:
    meters = stack.meters[25:40]
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
        pipelined=True,
    )
    relay.start()
    try:
        # two readings per agreement back to back: the second is sent before the first is mined
        load = e2e.run_load(
            stack.mosquitto.host,
            stack.mosquitto.port,
            watcher,
            readings(meters, 2),
            None,
            topic_of(billing, "ReadingsSettled"),
            grace=60,
        )
    finally:
        counts = relay.stop()
    assert counts == {"settled": 30, "failed": 0} and load.paid == load.events == 30
    assert load.transactions == 30 and load.onchain_items == 30
    assert [a - b for a, b in zip(earnings(stack, meters), before, strict=True)] == [2 * PRICE_PER_UNIT] * 15


def test_report_carries_floors_received_gas_and_the_pipelined_ratio() -> None:
    measured = [
        {"kind": kind, "batch": 100, "per_event": per, "first": False}
        for kind, per in (("reading", 18_000), ("delivery", 30_000), ("telematics", 33_000), ("weather", 33_000))
    ]
    received = gas_per_received(measured)
    by_window = {(e["kind"], e["window_s"]): e["per_event"] for e in received}
    # a meter reading once a minute: 15 readings per settlement in 15 minutes, 60 in an hour
    assert by_window[("reading", 0)] == 18_000
    assert by_window[("reading", 900)] == 1_200 and by_window[("reading", 3_600)] == 300
    assert by_window[("telematics", 900)] == 2_200 and ("delivery", 900) not in by_window
    floor = {kind: f.as_dict() for kind, f in floors(100).items()}
    for kind, entry in floor.items():
        terms = entry["terms"]
        assert entry["total"] == sum(terms.values())
        assert terms["transaction base share (21,000 ÷ batch)"] == 210 and terms["ecrecover precompile"] == 3_000
        assert any(t.startswith("calldata") for t in terms) and any(t.startswith("log") for t in terms), kind
    result = {
        "gas": measured,
        "floor": floor,
        "gas_per_received": received,
        "naive": {"paid_events_per_s": 8.0},
        "naive_pipelined": {"paid_events_per_s": 40.0, "paid_exactly_once": True},
        "daemon": {"burst": {"paid_events_per_s": 900.0}},
        "ratios": {"paid_events_per_s": 112.5, "paid_events_per_s_vs_pipelined": 22.5},
    }
    rows = {r.measure: r for r in report.rows(result)}
    ratio = rows["daemon ÷ pipelined relay, events paid/s"]
    assert (ratio.figure, ratio.target, ratio.verdict) == ("22.5×", "≥ 20×", "met")
    reading = rows["gas per meter reading, batch 100"]
    assert reading.figure == f"18,000 (floor {floor['reading']['total']:,})" and reading.verdict == "missed"
    assert rows["gas per weather observation, batch 100"].target == "≤ 18,000"
    assert rows["gas per reading received (1/min, window 15 min; arithmetic)"].figure == "1,200"
    assert "above the floor by" in report.markdown_details(result)


def test_relayer_lanes_pay_every_reading_with_1_2_and_4_keys_and_leave_automine_on(stack: BenchStack) -> None:
    meters = stack.meters[10:16]
    before = earnings(stack, meters)
    modes = {
        "automine": {"interval": 0, "oracle": {}},
        "block_time_1s": {"interval": 1, "oracle": {"batch_max_events": 2}},
    }
    result = lanes.measure_lanes(stack, meters, modes, lambda _: None)
    # two modes × three key counts: six readings per agreement, each one register unit more, all paid
    assert [a - b for a, b in zip(earnings(stack, meters), before, strict=True)] == [6 * PRICE_PER_UNIT] * 6
    assert {mode: sorted(entry["keys"]) for mode, entry in result.items()} == {mode: ["1", "2", "4"] for mode in modes}
    assert stack.chain.w3.provider.make_request("anvil_getAutomine", [])["result"] is True  # type: ignore[arg-type]
    rows = {r.measure: r for r in report.rows({"relayer_lanes": result})}
    assert "settled events/s with 1 / 2 / 4 relayer keys (block time 1s)" in rows
    assert "| block time 1s |" in report.markdown_details({"relayer_lanes": result})


def test_the_floor_is_below_every_measured_figure(stack: BenchStack) -> None:
    """A floor above a real settlement would be wrong arithmetic: every kind settles above its floor today."""
    figures = gas.measure_gas(stack, stack.fund_relayer(), stack.meters[:4], (), stack.vehicles, stack.stations)
    for f in figures:
        if not f.first:
            assert f.per_event > floors(f.batch)[f.kind].total, (f.kind, f.batch)


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
            topic_of(billing, "ReadingsSettled"),
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


def test_optimistic_figures_come_from_commits_and_claims_that_billed(
    mosquitto: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """On anvils of their own (the phase moves the chain's clock past challenge windows): the bench node's rules and
    Cancun's, whose calldata pricing has no EIP-7623 floor."""
    state = tmp_path_factory.mktemp("optimistic")
    with private_deployment(state) as deployment:
        stack = BenchStack(
            deployment.config, Anvil(deployment.config), mosquitto, deployment.chain, deployment.manifest, state
        )
        entries, other = optimistic.measure(stack)
    by = {e["batch"]: e for e in entries if e["kind"] == "reading_optimistic"}
    motor = {e["batch"]: e for e in entries if e["kind"] == "telematics_optimistic"}
    assert set(by) == set(motor) == {100, 1_000} and len(entries) == 4
    for batch, entry in motor.items():
        assert entry["readings_per_agreement"] == 100 and entry["transactions"] == 1 + batch // 100
        assert abs(entry["per_event"] - entry["commit_per_event"] - entry["claim_per_event"]) <= 1
    # a 90-byte batch item against a reading's 82, the claims charging by the same telescoping premium
    assert by[1_000]["per_event_eip2028"] < motor[1_000]["per_event_eip2028"] < 3_000
    for batch, entry in by.items():
        assert entry["kind"] == "reading_optimistic" and entry["batch"] == batch
        assert entry["readings_per_agreement"] == 100 and entry["transactions"] == 1 + batch // 100
        assert abs(entry["per_event"] - entry["commit_per_event"] - entry["claim_per_event"]) <= 1
        # a commit is data-heavy: the floor of 10 gas per calldata token binds on the bench node
        assert entry["commit_per_event"] > entry["commit_per_event_eip2028"] + 500
    # the target at batch 1,000 with one claim per agreement per window; batching spreads the fixed costs
    assert by[1_000]["per_event_eip2028"] <= 2_000 < by[100]["per_event_eip2028"]
    assert other["window_s"] == 3_600 and other["bond_wei"] == 10**17
    assert 50_000 < other["challenge_gas_eip2028"] < 300_000 and other["challenge_gas"] > 0
    result = {"gas": entries, "optimistic": other}
    rows = {r.measure: r for r in report.rows(result)}
    where = "batch 1,000, 100 per agreement per window"
    cancun = rows[f"gas per meter reading, optimistic ({where}; EIP-2028 calldata, Cancun): commit + claims"]
    assert cancun.verdict == "met" and cancun.target == "≤ 2,000"
    latency = next(r for m, r in rows.items() if m.startswith("latency to money, optimistic"))
    assert latency.figure.startswith("3,600 s vs")
    motor_where = "batch 1,000, 100 per policy per window"
    reports = rows[f"gas per telematics report, optimistic ({motor_where}; EIP-2028 calldata, Cancun): commit + claims"]
    assert reports.figure.endswith(f"= {motor[1_000]['per_event_eip2028']:,}")
