"""The fleet simulator: deterministic payloads, realistic registers, faults the oracle rules refuse, a real broker."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from oracle.daemon.rules import Outcome, RuleSettings, evaluate
from oracle.device.fleet import FaultClass, generate_fleet, load_fleet, set_targets
from oracle.device.location import location_bytes32
from oracle.device.publisher import BrokerSettings
from oracle.device.signer import Contracts
from oracle.device.simulator import EventPlan, plan_events, run_simulation, sign_ahead
from oracle.errors import SignatureError
from oracle.node import Mosquitto
from oracle.wire import decode, events_filter

CHAIN_ID = 31337
CONTRACTS = Contracts("0x" + "11" * 20, "0x" + "22" * 20)
START = 1_764_340_000


@pytest.fixture()
def fleet_path(tmp_path: Path) -> Path:
    return generate_fleet(tmp_path / "fleet", chain_id=CHAIN_ID, contracts=CONTRACTS, meters=3, trackers=2,
                          vehicles=2, weather_stations=2, seed=7)


def payloads(fleet_file: Path, seed: int, faults: tuple[FaultClass, ...] = ()) -> list[bytes]:
    plan = plan_events(load_fleet(fleet_file), CONTRACTS, rate=50, duration=20, seed=seed, start_time=START,
                       faults=faults, counters="memory")
    return [event.payload for event in plan]


def test_same_seed_gives_byte_identical_payloads(fleet_path: Path) -> None:
    first = payloads(fleet_path, seed=3, faults=tuple(FaultClass))
    assert first == payloads(fleet_path, seed=3, faults=tuple(FaultClass))
    assert first != payloads(fleet_path, seed=4, faults=tuple(FaultClass))
    assert 950 <= len(first) <= 1050  # 50 readings/s for 20 s, plus deliveries and faults


def test_signing_in_several_processes_gives_the_same_sequence(fleet_path: Path) -> None:
    def plan() -> EventPlan:
        return plan_events(load_fleet(fleet_path), CONTRACTS, rate=50, duration=20, seed=3, start_time=START,
                           faults=tuple(FaultClass), counters="memory")

    alone, together = plan(), plan()
    one = sign_ahead(alone, 1)
    three = sign_ahead(together, 3)
    assert [event.payload for event in one] == [event.payload for event in three]
    assert alone.injected == together.injected
    assert len(alone.injected) >= 7 * 2


def test_registers_only_grow_and_trackers_deliver_at_their_destination(fleet_path: Path) -> None:
    fleet = load_fleet(fleet_path)
    events = [decode(payload) for payload in payloads(fleet_path, seed=1)]
    last: dict[str, int] = {}
    seqs: dict[str, list[int]] = {}
    for event in events:
        seqs.setdefault(event.device, []).append(event.seq)
        if event.type == "reading":
            assert event.msg["value"] >= last.get(event.device, 0)
            last[event.device] = event.msg["value"]
    for device, numbers in seqs.items():
        assert numbers == sorted(set(numbers)), f"{device} reused or reordered a sequence number"
    deliveries = [event for event in events if event.type == "delivery"]
    trackers = {device.address: device for device in fleet.devices if device.kind.name == "TRACKER"}
    assert {event.device for event in deliveries} == set(trackers)
    for event in deliveries:
        tracker = trackers[event.device]
        assert event.msg["location"] == location_bytes32(tracker.destination)
        assert event.msg["escrowId"] in tracker.targets
        assert -1000 < event.msg["maxTemperature"] < 2000  # a reefer, in centi-°C
    assert all(event.signer() == event.device for event in events)


def test_every_fault_class_is_refused_by_the_oracle_rules_with_its_own_reason(fleet_path: Path) -> None:
    fleet = load_fleet(fleet_path)
    kinds = {device.address: int(device.kind) for device in fleet.devices}
    plan = plan_events(fleet, CONTRACTS, rate=50, duration=20, seed=5, start_time=START,
                       faults=tuple(FaultClass), counters="memory")
    states: dict[str, object] = {}
    digests: dict[tuple[str, int], bytes] = {}
    verdicts: dict[tuple[str, int], str] = {}
    for planned in plan:
        event = decode(planned.payload)
        if event.chain_id != CHAIN_ID:
            verdicts[(event.device, event.seq)] = "wrong_chain"
            continue
        try:
            signer = event.signer()
        except SignatureError:
            signer = None
        if signer != event.device:
            verdicts[(event.device, event.seq)] = "bad_signature"
            continue
        now = START + planned.offset
        verdict = evaluate(event, event.device, kinds[event.device], states.get(event.device),  # type: ignore[arg-type]
                           now, RuleSettings(), lambda device, seq: digests.get((device, seq)))
        states[event.device] = verdict.state
        if verdict.outcome is Outcome.ACCEPT:
            digests[(event.device, event.seq)] = event.digest
            assert planned.fault is None, f"{planned.fault} event was accepted"
        else:
            verdicts[(event.device, event.seq)] = str(verdict.reason)
            assert planned.fault is not None, f"a normal event was refused: {verdict.detail}"
    assert {item.fault for item in plan.injected} == set(FaultClass)
    for item in plan.injected:
        assert verdicts[(item.device, item.seq)] == item.expect


def test_fleet_targets_can_be_pointed_at_real_ids(fleet_path: Path) -> None:
    document = json.loads(fleet_path.read_text())
    meter = next(entry for entry in document["devices"] if entry["kind"] == "meter")
    tracker = next(entry for entry in document["devices"] if entry["kind"] == "tracker")
    set_targets(fleet_path, {meter["name"]: [2**200], tracker["address"]: [11, 12]})
    fleet = {device.name: device for device in load_fleet(fleet_path).devices}
    assert fleet[meter["name"]].targets == (2**200,)
    assert fleet[tracker["name"]].targets == (11, 12)


def test_simulation_drives_a_real_broker_at_the_chosen_rate(fleet_path: Path, mosquitto: Mosquitto) -> None:
    received: list[bytes] = []
    lock = threading.Lock()
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-sim-listener")
    client.on_connect = lambda c, *_: c.subscribe(events_filter(CHAIN_ID), qos=1)
    client.on_subscribe = lambda *_: subscribed.set()

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with lock:
            received.append(message.payload)

    client.on_message = on_message
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()

    def wait_for(count: int) -> list[bytes]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                if len(received) >= count:
                    break
            time.sleep(0.05)
        with lock:
            return list(received)

    try:
        assert subscribed.wait(5)
        broker = BrokerSettings(mosquitto.host, mosquitto.port, client_id="sim-test", clean_session=True)
        result = run_simulation(load_fleet(fleet_path), CONTRACTS, broker, rate=400, duration=3, seed=2,
                                faults=(FaultClass.CLOCK_SKEW,), reply_wait=0)
        first = wait_for(result.planned)
        # Sequence numbers persist beside the fleet: a second run never reuses one.
        again = run_simulation(load_fleet(fleet_path), CONTRACTS, broker, rate=100, duration=1, seed=2, reply_wait=0)
        second = wait_for(len(first) + again.planned)[len(first):]
    finally:
        client.disconnect()
        client.loop_stop()
    assert result.acknowledged == result.planned == result.submitted
    assert result.unacknowledged == 0
    assert len(first) == result.planned
    assert result.achieved_rate > 300
    assert [fault.fault for fault in result.faults] == [FaultClass.CLOCK_SKEW] * 3
    assert again.acknowledged == again.planned == len(second)
    used_first = {(decode(p).device, decode(p).seq) for p in first}
    used_second = {(decode(p).device, decode(p).seq) for p in second}
    assert used_second and not used_first & used_second
