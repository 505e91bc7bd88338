"""The fleet simulator: deterministic payloads, realistic registers, faults the oracle rules refuse, a real broker."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from iotsettle.oracle.chain.node import Mosquitto
from iotsettle.oracle.daemon.rules import Outcome, RuleSettings, evaluate
from iotsettle.oracle.device.fleet import (
    DrivingStyle,
    FaultClass,
    generate_fleet,
    load_fleet,
    set_policies,
    set_targets,
)
from iotsettle.oracle.device.publisher import BrokerSettings
from iotsettle.oracle.device.signer import Contracts
from iotsettle.oracle.device.sim import STYLE_RATES, EventPlan, VehicleModel, plan_events, run_simulation, sign_ahead
from iotsettle.oracle.device.sim.faults import EXPECTED_REASON
from iotsettle.oracle.protocol import eip712
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.errors import ConfigError, SignatureError
from iotsettle.oracle.protocol.location import location_bytes32
from iotsettle.oracle.protocol.wire import SignedEvent, decode, events_filter

CHAIN_ID = 31337
CONTRACTS = Contracts("0x" + "11" * 20, "0x" + "22" * 20, None, "0x" + "33" * 20, "0x" + "44" * 20)
START = 1_764_340_000
POLICY = 7 << 96 | 1


@pytest.fixture()
def fleet_path(tmp_path: Path) -> Path:
    """Meters, trackers, weather stations, and three vehicles: insured (telematics), billed per km (readings),
    both."""
    path = generate_fleet(
        tmp_path / "fleet",
        chain_id=CHAIN_ID,
        contracts=CONTRACTS,
        meters=3,
        trackers=2,
        vehicles=3,
        weather_stations=3,
        seed=7,
    )
    document = json.loads(path.read_text())
    vehicles = [entry for entry in document["devices"] if entry["kind"] == "vehicle"]
    set_policies(
        path,
        {vehicles[0]["name"]: POLICY, vehicles[2]["name"]: POLICY + 1},
        styles={vehicles[0]["name"]: DrivingStyle.AGGRESSIVE},
    )
    document = json.loads(path.read_text())
    both = next(entry for entry in document["devices"] if entry["name"] == vehicles[2]["name"])
    both["agreementId"] = "99"
    path.write_text(json.dumps(document))
    return path


def payloads(
    fleet_file: Path, seed: int, faults: tuple[FaultClass, ...] = (), weather: str = "normal", duration: float = 20
) -> list[bytes]:
    plan = plan_events(
        load_fleet(fleet_file),
        CONTRACTS,
        rate=50,
        duration=duration,
        seed=seed,
        start_time=START,
        faults=faults,
        counters="memory",
        weather=weather,
    )
    return [event.payload for event in plan]


def test_same_seed_gives_byte_identical_payloads(fleet_path: Path) -> None:
    first = payloads(fleet_path, seed=3, faults=tuple(FaultClass))
    assert first == payloads(fleet_path, seed=3, faults=tuple(FaultClass))
    assert first != payloads(fleet_path, seed=4, faults=tuple(FaultClass))
    # 50 reports/s for 20 s (the vehicle that is billed and insured signs two events a report), plus deliveries
    # and faults
    assert 950 <= len(first) <= 1200
    kinds = {decode(payload).type for payload in first}
    assert kinds == {"reading", "delivery", "telematics", "weather"}
    assert first != payloads(fleet_path, seed=3, faults=tuple(FaultClass), weather="drought")


def test_signing_in_several_processes_gives_the_same_sequence(fleet_path: Path) -> None:
    def plan() -> EventPlan:
        return plan_events(
            load_fleet(fleet_path),
            CONTRACTS,
            rate=50,
            duration=20,
            seed=3,
            start_time=START,
            faults=tuple(FaultClass),
            counters="memory",
        )

    alone, together = plan(), plan()
    one = sign_ahead(alone, 1)
    three = sign_ahead(together, 3)
    assert [event.payload for event in one] == [event.payload for event in three]
    assert alone.injected == together.injected
    assert len(alone.injected) >= 7 * 2
    assert FaultClass.HOSTILE in {item.fault for item in alone.injected}


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
    assert {event.type for event in events} == {"reading", "delivery", "telematics", "weather"}
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
    plan = plan_events(
        fleet, CONTRACTS, rate=50, duration=20, seed=5, start_time=START, faults=tuple(FaultClass), counters="memory"
    )
    states: dict[str, object] = {}
    digests: dict[tuple[str, int], bytes] = {}
    # (device, seq, verdict) of each event injected as a fault, in plan order: a weather station's bad event takes
    # the seq its next real observation reuses (station seqs are gapless on chain), so (device, seq) is not unique
    faulty: list[tuple[str, int, str]] = []

    def verdict_of(planned: Any, event: Any, verdict: str) -> None:
        if planned.fault is not None:
            faulty.append((event.device, event.seq, verdict))

    for planned in plan:
        event = decode(planned.payload)
        if event.chain_id != CHAIN_ID:
            verdict_of(planned, event, "wrong_chain")
            continue
        try:
            signer = event.signer()
        except SignatureError:
            signer = None
        if signer != event.device:
            verdict_of(planned, event, "bad_signature")
            continue
        now = START + planned.offset
        verdict = evaluate(
            event,
            event.device,
            kinds[event.device],
            states.get(event.device),  # type: ignore[arg-type]
            now,
            RuleSettings(),
            lambda device, seq: digests.get((device, seq)),
        )
        states[event.device] = verdict.state
        if verdict.outcome is Outcome.ACCEPT:
            digests[(event.device, event.seq)] = event.digest
            verdict_of(planned, event, "accepted")
            # a hostile station lies plausibly: the oracle cannot tell (the crop season's k-of-n vote does); the alert
            # classes are valid events (an early alert names them, docs/ALERTS.md)
            assert planned.fault is None or EXPECTED_REASON[planned.fault] == "accepted", f"{planned.fault} accepted"
        else:
            verdict_of(planned, event, str(verdict.reason))
            assert planned.fault is not None, f"a normal event was refused: {verdict.detail}"
    assert {item.fault for item in plan.injected} == set(FaultClass)
    assert [(item.device, item.seq, item.expect) for item in plan.injected] == faulty


def test_a_weather_stations_seqs_stay_gapless_through_its_refused_faults(fleet_path: Path) -> None:
    """CropInsurance takes a station's seqs 1, 2, 3… without gaps: the observations the oracle accepts from a
    station with every fault class must still number 1, 2, 3…"""
    fleet = load_fleet(fleet_path)
    plan = plan_events(
        fleet, CONTRACTS, rate=50, duration=20, seed=5, start_time=START, faults=tuple(FaultClass), counters="memory"
    )
    good: dict[str, list[int]] = {}
    stations = {d.address for d in fleet.devices if d.kind is DeviceKind.WEATHER_STATION}
    for planned in plan:
        if planned.fault is None or planned.fault.behaviour:
            event = decode(planned.payload)
            if event.device in stations:
                good.setdefault(event.device, []).append(event.seq)
    assert good and any(f.device in stations for f in plan.injected if not f.fault.behaviour)
    for seqs in good.values():
        assert seqs == list(range(1, len(seqs) + 1))


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
        result = run_simulation(
            load_fleet(fleet_path),
            CONTRACTS,
            broker,
            rate=400,
            duration=3,
            seed=2,
            faults=(FaultClass.CLOCK_SKEW,),
            reply_wait=0,
        )
        first = wait_for(result.planned)
        # Sequence numbers persist beside the fleet: a second run never reuses one.
        again = run_simulation(load_fleet(fleet_path), CONTRACTS, broker, rate=100, duration=1, seed=2, reply_wait=0)
        second = wait_for(len(first) + again.planned)[len(first) :]
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


# ------------------------------------------------------------------------------- telematics and weather


def _events(fleet_file: Path, **kwargs: object) -> list[tuple[SignedEvent, FaultClass | None]]:
    plan = plan_events(
        load_fleet(fleet_file),
        CONTRACTS,
        rate=kwargs.pop("rate", 50),  # type: ignore[arg-type]
        duration=kwargs.pop("duration", 20),
        seed=kwargs.pop("seed", 1),  # type: ignore[arg-type]
        start_time=START,
        counters="memory",
        **kwargs,
    )  # type: ignore[arg-type]
    return [(decode(event.payload), event.fault) for event in plan]


def test_telematics_and_observations_verify_against_the_product_contracts(fleet_path: Path) -> None:
    fleet = {device.address: device for device in load_fleet(fleet_path).devices}
    seen = set()
    for event, _fault in _events(fleet_path):
        if event.type not in ("telematics", "weather"):
            continue
        seen.add(event.type)
        contract = CONTRACTS.motor_insurance if event.type == "telematics" else CONTRACTS.crop_insurance
        assert event.contract == contract
        primary = "Telematics" if event.type == "telematics" else "WeatherObservation"
        message_digest = eip712.digest(primary, event.msg, eip712.Domain(CHAIN_ID, contract))
        assert eip712.recover(message_digest, event.sig) == event.device
        device = fleet[event.device]
        if event.type == "telematics":
            assert device.kind.name == "VEHICLE" and event.msg["policyId"] == device.policy_id
        else:
            assert device.kind.name == "WEATHER_STATION" and event.msg["station"] == event.device
    assert seen == {"telematics", "weather"}


def test_telematics_counters_and_rainfall_never_go_down_except_injected_rollbacks(fleet_path: Path) -> None:
    registers = {
        "telematics": ("odometer", "harshBraking", "speeding"),
        "weather": ("rainfall",),
        "reading": ("value",),
    }
    last: dict[tuple[str, str], tuple[int, ...]] = {}
    rollbacks = 0
    for event, fault in _events(fleet_path, duration=60, faults=tuple(FaultClass)):
        if event.type not in registers:
            continue
        values = tuple(int(event.msg[name]) for name in registers[event.type])
        key = (event.device, event.type)
        previous = last.get(key)
        if fault in (FaultClass.COUNTER_ROLLBACK, FaultClass.BEHAVIOUR_ROLLBACK):
            assert previous is not None and any(v < p for v, p in zip(values, previous, strict=False)), (
                f"{fault} went up"
            )
            rollbacks += 1
            continue
        if fault not in (None, FaultClass.HOSTILE):
            continue  # other faults (a replay, an impossible jump) are refused and leave nothing behind
        if previous is not None:
            assert all(v >= p for v, p in zip(values, previous, strict=False)), (
                f"{event.type} of {event.device} went down"
            )
        last[key] = values
    assert rollbacks == 6  # 3 of each class


def test_driving_style_sets_the_event_rates_per_100_km() -> None:
    import random

    measured = {}
    for style in DrivingStyle:
        model = VehicleModel(random.Random(f"style-test:{style}"), style)
        model.driving, model._phase_left = True, 10**9  # keep driving: rates are per distance
        start, _, _ = model.counters_at(0)
        odometer, harsh, speeding = model.counters_at(200_000)  # 2,000-6,000 km at 10-30 m/s
        km = (odometer - start) / 1000
        measured[style] = (harsh / km * 100, speeding / km * 100)
    for style, (harsh_rate, speeding_rate) in measured.items():
        expected_harsh, expected_speeding = STYLE_RATES[style]
        # (a speeding episode lasts 5-30 s, during which no new one starts: the measured rate is a little lower)
        assert expected_harsh * 0.6 <= harsh_rate <= expected_harsh * 1.4, (style, harsh_rate)
        assert expected_speeding * 0.6 <= speeding_rate <= expected_speeding * 1.4, (style, speeding_rate)
    assert measured[DrivingStyle.CALM][0] < measured[DrivingStyle.AVERAGE][0] < measured[DrivingStyle.AGGRESSIVE][0]


def _rain_and_heat(fleet_file: Path, weather: str) -> dict[str, tuple[int, int]]:
    """Per station: (rain in 0.01 mm over two minutes, highest maxTemperature in 0.01 °C)."""
    first: dict[str, int] = {}
    out: dict[str, tuple[int, int]] = {}
    for event, _fault in _events(fleet_file, duration=120, rate=5, weather=weather):
        if event.type != "weather":
            continue
        rain, heat = int(event.msg["rainfall"]), int(event.msg["maxTemperature"])
        first.setdefault(event.device, rain)
        out[event.device] = (rain - first[event.device], max(heat, out.get(event.device, (0, -(10**9)))[1]))
    return out


def test_weather_scenarios_and_a_hostile_station_that_lies(tmp_path: Path) -> None:
    path = generate_fleet(
        tmp_path / "stations",
        chain_id=CHAIN_ID,
        contracts=CONTRACTS,
        meters=0,
        trackers=0,
        vehicles=0,
        weather_stations=5,
        seed=3,
    )
    stations = [entry["address"] for entry in json.loads(path.read_text())["devices"]]
    honest_fleet = tmp_path / "honest.json"
    honest_fleet.write_text(path.read_text())
    liar = stations[4]
    set_policies(path, {}, faults={liar: [FaultClass.HOSTILE]})

    drought = _rain_and_heat(path, "drought")
    assert all(drought[s][0] < 20 for s in stations[:4]), drought  # under 0.2 mm in two minutes of drought
    assert drought[liar][0] > 50  # the hostile station claims heavy rain
    heatwave = _rain_and_heat(path, "heatwave")
    assert all(heatwave[s][1] >= 3000 for s in stations[:4]), heatwave  # 30 °C and more
    assert heatwave[liar][1] < 2600  # and mild days in a heatwave

    # the same seed and scenario give the same observations; making one station hostile changes only its own
    without_liar = _rain_and_heat(honest_fleet, "drought")
    assert {s: without_liar[s] for s in stations[:4]} == {s: drought[s] for s in stations[:4]}
    assert without_liar[liar] != drought[liar]
    assert _rain_and_heat(path, "drought") == drought


def test_fleet_files_name_policies_and_old_fleet_files_still_load(tmp_path: Path) -> None:
    path = generate_fleet(
        tmp_path / "f",
        chain_id=CHAIN_ID,
        contracts=CONTRACTS,
        meters=1,
        trackers=0,
        vehicles=1,
        weather_stations=1,
        seed=1,
        vehicle_policies=True,
    )
    fleet = load_fleet(path)
    kinds = {device.kind.name: device for device in fleet.devices}
    assert kinds["VEHICLE"].streams == ("telematics",) and kinds["VEHICLE"].policy_id is not None
    assert kinds["WEATHER_STATION"].streams == ("weather",)
    assert fleet.contracts == CONTRACTS

    # a fleet file written before the insurance products: vehicles and stations sign readings for agreements
    document = json.loads(path.read_text())
    document["contracts"] = {"MeteredBilling": CONTRACTS.metered_billing, "DeliveryEscrow": CONTRACTS.delivery_escrow}
    for entry in document["devices"]:
        entry.pop("policyId", None)
        entry["agreementId"] = "5"
    path.write_text(json.dumps(document))
    old = load_fleet(path)
    assert {device.streams for device in old.devices} == {("reading",)}
    assert old.contracts is not None and old.contracts.motor_insurance is None
    events = _events(path, duration=3)
    assert events and {event.type for event, _ in events} == {"reading"}

    # an insured vehicle against a deployment without MotorInsurance is refused before anything is signed
    set_policies(path, {next(d.name for d in old.devices if d.kind.name == "VEHICLE"): POLICY})
    with pytest.raises(ConfigError, match="MotorInsurance"):
        plan_events(load_fleet(path), old.contracts, rate=10, duration=1, seed=1)
    document = json.loads(path.read_text())
    document["devices"][0]["faults"] = ["hostile"]  # a meter cannot be a hostile weather station
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match="cannot emit hostile"):
        load_fleet(path)
