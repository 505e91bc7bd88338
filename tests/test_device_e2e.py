"""Simulated devices against the real oracle intake (real mosquitto, real SQLite): every honest event is accepted,
every injected fault is answered with the reason of its class, and the replies decode with ``oracle.reasons``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from oracle.daemon.ingest import Intake, IntakeSettings
from oracle.daemon.metrics import Metrics
from oracle.daemon.store import RegistryEntry, Store
from oracle.device.fleet import FaultClass, generate_fleet, load_fleet
from oracle.device.publisher import BrokerSettings
from oracle.device.signer import Contracts
from oracle.device.simulator import run_simulation
from oracle.node import Mosquitto

CHAIN_ID = 31337
CONTRACTS = Contracts("0x" + "a1" * 20, "0x" + "b2" * 20)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store.open(tmp_path / "oracle.db")
    yield db
    db.close()


def test_a_simulated_fleet_is_accepted_and_each_fault_refused_with_its_reason(
    mosquitto: Mosquitto, store: Store, tmp_path: Path
) -> None:
    fleet_file = generate_fleet(tmp_path / "fleet", chain_id=CHAIN_ID, contracts=CONTRACTS, meters=6, trackers=2,
                                vehicles=3, weather_stations=2, seed=11)
    # Fast couriers (arrival within a few seconds) keep the run short; the teleport fault follows an arrival.
    document = json.loads(fleet_file.read_text())
    for entry in document["devices"]:
        if entry["kind"] == "tracker":
            entry["speed"] = 60.0
    fleet_file.write_text(json.dumps(document))
    fleet = load_fleet(fleet_file)
    store.apply_registry([
        RegistryEntry(device.address, device.address, None, int(device.kind), True, 1) for device in fleet.devices
    ])
    settings = IntakeSettings(
        chain_id=CHAIN_ID,
        contracts={"reading": CONTRACTS.metered_billing, "delivery": CONTRACTS.delivery_escrow},
        host=mosquitto.host, port=mosquitto.port, client_id=f"oracle-{uuid.uuid4().hex[:8]}", batch_latency_s=0.01,
    )
    intake = Intake(settings, store, Metrics())
    intake.start()
    try:
        assert intake.wait_connected(10)
        broker = BrokerSettings(mosquitto.host, mosquitto.port, client_id="sim-e2e", clean_session=True)
        result = run_simulation(fleet, CONTRACTS, broker, rate=200, duration=10, seed=4, faults=tuple(FaultClass),
                                fault_count=2, reply_wait=10)
    finally:
        intake.stop()
    assert result.unacknowledged == 0
    injected = len(result.faults)
    assert {fault.fault for fault in result.faults} == set(FaultClass)
    for fault in result.faults:
        replied = result.fault_replies[f"{fault.device.lower()}:{fault.seq}"]
        assert fault.expect in replied, f"{fault.fault} of {fault.device} seq {fault.seq} got {replied}"
    # Everything else was accepted: the only non-accepted replies are the faults (a replayed seq also has the
    # original's "accepted" reply, which is why accepted replies are planned - injected).
    refused = sum(count for code, count in result.replies.items() if code != "accepted")
    assert refused == injected
    assert result.replies["accepted"] == result.planned - injected
    assert store.event_count() == result.planned - injected
