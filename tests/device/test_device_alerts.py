"""Simulated fleets against the real oracle intake (real mosquitto, real SQLite): each alert fault class raises the
early alert of its name on its device, and an honest fleet of the same size over the same time raises none."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from iotsettle.oracle.chain.node import Mosquitto
from iotsettle.oracle.daemon.alerts import POLICY_LAPSED, Alert, AlertSettings
from iotsettle.oracle.daemon.intake import Intake, IntakeSettings
from iotsettle.oracle.daemon.metrics import Metrics
from iotsettle.oracle.daemon.store import RegistryEntry, Store
from iotsettle.oracle.device.fleet import FaultClass, Fleet, generate_fleet, load_fleet, set_policies
from iotsettle.oracle.device.publisher import BrokerSettings
from iotsettle.oracle.device.signer import Contracts
from iotsettle.oracle.device.sim import run_simulation
from iotsettle.oracle.device.sim.faults import ALERT_OF_FAULT

CHAIN_ID = 31337
CONTRACTS = Contracts("0x" + "a1" * 20, "0x" + "b2" * 20, None, "0x" + "c3" * 20, "0x" + "d4" * 20)
#: thresholds scaled to a run of 12 s (the defaults are for hours); the honest run must stay quiet with them too
SHORT = AlertSettings(
    meter_warmup=4,
    stationary_s=3,
    lapsed_min_distance_m=10,
    station_window_s=4,
    station_floor=12,
    station_min_neighbours=3,
)
ALERT_FAULTS = tuple(ALERT_OF_FAULT)
ACTIVE = 2  # IMotorInsurance.PolicyStatus.Active


def fleet_file(directory: Path) -> Path:
    path = generate_fleet(
        directory, chain_id=CHAIN_ID, contracts=CONTRACTS, meters=4, trackers=2, vehicles=2, weather_stations=5, seed=3
    )
    document = json.loads(path.read_text())
    for entry in document["devices"]:
        if entry["kind"] == "tracker":
            entry["speed"] = 100.0  # arrival within the run
    path.write_text(json.dumps(document))
    vehicles = [e["name"] for e in document["devices"] if e["kind"] == "vehicle"]
    set_policies(path, {name: (3 << 96) | index for index, name in enumerate(vehicles, 1)})
    return path


Run = Callable[[Fleet, tuple[FaultClass, ...], dict[int, int]], tuple[list[Alert], object]]


@pytest.fixture
def simulate(mosquitto: Mosquitto, store: Store) -> Iterator[Run]:
    started: list[Intake] = []

    def run(fleet: Fleet, faults: tuple[FaultClass, ...], statuses: dict[int, int]) -> tuple[list[Alert], object]:
        settings = IntakeSettings(
            chain_id=CHAIN_ID,
            contracts={kind: CONTRACTS.for_type(kind) for kind in ("reading", "delivery", "telematics", "weather")},
            host=mosquitto.host,
            port=mosquitto.port,
            client_id=f"oracle-{uuid.uuid4().hex[:8]}",
            batch_latency_s=0.01,
            alerts=SHORT,
        )
        intake = Intake(settings, store, Metrics())
        intake.policy_status = statuses.get  # the policy statuses the chain would report (PolicyWatch)
        store.apply_registry(
            [RegistryEntry(device.address, device.address, None, int(device.kind), True, 1) for device in fleet.devices]
        )
        intake.start()
        started.append(intake)
        assert intake.wait_connected(10)
        broker = BrokerSettings(mosquitto.host, mosquitto.port, client_id=f"sim-{uuid.uuid4().hex[:6]}")
        result = run_simulation(
            fleet, CONTRACTS, broker, rate=60, duration=12, seed=4, faults=faults, fault_count=3, reply_wait=10
        )
        assert result.unacknowledged == 0
        refused = {code: count for code, count in result.replies.items() if code != "accepted"}
        assert refused == {}, "alert faults are valid events: nothing may be refused"
        return [Alert.from_row(row) for row in store.alerts(limit=10_000)], result

    yield run
    for intake in started:
        intake.stop()


def test_each_alert_fault_raises_its_alert_on_its_device_and_nothing_else(
    tmp_path: Path, simulate: Run, store: Store
) -> None:
    fleet = load_fleet(fleet_file(tmp_path / "fleet"))
    statuses = {device.policy_id: ACTIVE for device in fleet.devices if device.policy_id is not None}
    lapsed = next(device for device in fleet.devices if device.policy_id is not None)
    statuses[lapsed.policy_id] = POLICY_LAPSED  # type: ignore[index]
    alerts, result = simulate(fleet, ALERT_FAULTS, statuses)
    faulty = {(fault.device, ALERT_OF_FAULT[fault.fault]) for fault in result.faults}  # type: ignore[attr-defined]
    assert {fault for _, fault in faulty} == set(ALERT_OF_FAULT.values())
    raised = {(alert.device, alert.kind) for alert in alerts}
    # the lapsed vehicle is the one whose policy the chain reports lapsed, whichever device the plan picked
    assert raised == {(d, k) for d, k in faulty if k != "lapsed_driving"} | {(lapsed.address, "lapsed_driving")}
    assert store.alert_counts()["tracker_stalled"] == 1  # once per stay, not once per report
    assert store.alert_counts()["station_outlier"] == 1  # once per episode


def test_an_honest_fleet_of_the_same_size_over_the_same_time_raises_none(
    tmp_path: Path, simulate: Run, store: Store
) -> None:
    fleet = load_fleet(fleet_file(tmp_path / "fleet"))
    statuses = {device.policy_id: ACTIVE for device in fleet.devices if device.policy_id is not None}
    alerts, result = simulate(fleet, (), statuses)
    assert result.planned > 500  # type: ignore[attr-defined]
    assert alerts == []
    assert store.event_count() == result.planned  # type: ignore[attr-defined]
