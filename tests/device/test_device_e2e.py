"""Simulated devices against the real oracle intake (real mosquitto, real SQLite).

Every honest event is accepted, every injected fault is answered with the reason of its class, and the replies decode
with ``iotsettle.oracle.protocol.reasons``.
"""

from __future__ import annotations

import json
import os
import queue
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from eth_account import Account
from iotsettle.oracle.chain.node import Mosquitto
from iotsettle.oracle.daemon.intake import Intake, IntakeSettings
from iotsettle.oracle.daemon.metrics import Metrics
from iotsettle.oracle.daemon.store import RegistryEntry, Store
from iotsettle.oracle.device.fleet import FaultClass, generate_fleet, load_fleet, set_policies
from iotsettle.oracle.device.publisher import BrokerSettings
from iotsettle.oracle.device.signer import Contracts
from iotsettle.oracle.device.sim import run_simulation

CHAIN_ID = 31337
CONTRACTS = Contracts("0x" + "a1" * 20, "0x" + "b2" * 20, None, "0x" + "c3" * 20, "0x" + "d4" * 20)


@pytest.fixture
def intake(mosquitto: Mosquitto, store: Store) -> Iterator[Intake]:
    settings = IntakeSettings(
        chain_id=CHAIN_ID,
        contracts={kind: CONTRACTS.for_type(kind) for kind in ("reading", "delivery", "telematics", "weather")},
        host=mosquitto.host,
        port=mosquitto.port,
        client_id=f"oracle-{uuid.uuid4().hex[:8]}",
        batch_latency_s=0.01,
    )
    service = Intake(settings, store, Metrics())
    service.start()
    assert service.wait_connected(10)
    yield service
    service.stop()


def test_a_device_written_from_the_document_alone_is_accepted(
    mosquitto: Mosquitto, store: Store, intake: Intake
) -> None:
    """Signed with eth-account's generic EIP-712 encoder (not iotsettle.oracle.protocol.eip712), JSON written by hand
    in another member order with white space, published with plain paho: exactly what docs/PROTOCOL.md tells a
    firmware author."""
    account = Account.from_key(os.urandom(32))
    store.apply_registry([RegistryEntry(account.address, account.address, None, 1, True, 1)])
    intake.registry_changed()  # as the registry follower does after a DeviceRegistered event
    now = int(time.time())
    typed = {
        "domain": {
            "name": "iotsettle",
            "version": "1",
            "chainId": CHAIN_ID,
            "verifyingContract": CONTRACTS.metered_billing,
        },
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Reading": [
                {"name": "agreementId", "type": "uint256"},
                {"name": "seq", "type": "uint64"},
                {"name": "timestamp", "type": "uint64"},
                {"name": "value", "type": "uint256"},
            ],
        },
        "primaryType": "Reading",
        "message": {"agreementId": 2**200 + 5, "seq": 1, "timestamp": now, "value": 48_213},
    }
    signature = bytes(Account.sign_typed_data(account.key, full_message=typed).signature)
    payload = (
        f'{{ "device": "{account.address.lower()}", "v": 1, "sig": "0x{signature.hex().upper()}", "type": "reading", '
        f'"chainId": {CHAIN_ID},\n'
        f'  "msg": {{"value": "48213", "timestamp": {now}, "seq": 1, "agreementId": "{2**200 + 5}"}},\n'
        f'  "contract": "{CONTRACTS.metered_billing}" }}'
    ).encode()
    replies: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="dev-" + account.address[2:10].lower(), clean_session=False
    )
    client.on_connect = lambda c, *_: c.subscribe(f"iotsettle/v1/{CHAIN_ID}/{account.address}/replies", qos=1)
    client.on_message = lambda _c, _u, message: replies.put(message.payload)
    subscribed = queue.SimpleQueue[bool]()
    client.on_subscribe = lambda *_: subscribed.put(True)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    try:
        subscribed.get(timeout=5)
        info = client.publish(f"iotsettle/v1/{CHAIN_ID}/{account.address}/events", payload, qos=1, retain=False)
        info.wait_for_publish(5)
        reply = json.loads(replies.get(timeout=10))
    finally:
        client.disconnect()
        client.loop_stop()
    assert reply["status"] == "accepted", json.dumps(reply)
    assert reply["seq"] == 1
    assert store.event_count() == 1


def test_a_simulated_fleet_is_accepted_and_each_fault_refused_with_its_reason(
    mosquitto: Mosquitto, store: Store, intake: Intake, tmp_path: Path
) -> None:
    fleet_file = generate_fleet(
        tmp_path / "fleet",
        chain_id=CHAIN_ID,
        contracts=CONTRACTS,
        meters=6,
        trackers=2,
        vehicles=3,
        weather_stations=2,
        seed=11,
    )
    # Fast couriers (arrival within a few seconds) keep the run short; the teleport fault follows an arrival.
    document = json.loads(fleet_file.read_text())
    for entry in document["devices"]:
        if entry["kind"] == "tracker":
            entry["speed"] = 60.0
    fleet_file.write_text(json.dumps(document))
    # one insured vehicle signs telematics reports (behaviour_rollback needs one); the stations sign observations
    set_policies(fleet_file, {next(e["name"] for e in document["devices"] if e["kind"] == "vehicle"): 3 << 96 | 1})
    fleet = load_fleet(fleet_file)
    store.apply_registry(
        [RegistryEntry(device.address, device.address, None, int(device.kind), True, 1) for device in fleet.devices]
    )
    intake.registry_changed()
    broker = BrokerSettings(mosquitto.host, mosquitto.port, client_id="sim-e2e", clean_session=True)
    result = run_simulation(
        fleet, CONTRACTS, broker, rate=200, duration=10, seed=4, faults=tuple(FaultClass), fault_count=2, reply_wait=10
    )
    assert result.unacknowledged == 0
    # a hostile station's observations are plausible: accepted like the honest ones (the crop season's vote deals
    # with it), so it is no refused event
    injected = len([fault for fault in result.faults if fault.expect != "accepted"])
    assert {fault.fault for fault in result.faults} == set(FaultClass)
    assert {event_type for event_type in result.by_type if not event_type.startswith("fault:")} == {
        "reading",
        "delivery",
        "telematics",
        "weather",
    }
    for fault in result.faults:
        replied = result.fault_replies[f"{fault.device.lower()}:{fault.seq}"]
        assert fault.expect in replied, f"{fault.fault} of {fault.device} seq {fault.seq} got {replied}"
    # Everything else was accepted: the only non-accepted replies are the faults (a replayed seq also has the
    # original's "accepted" reply, which is why accepted replies are planned - injected).
    refused = sum(count for code, count in result.replies.items() if code != "accepted")
    assert refused == injected
    assert result.replies["accepted"] == result.planned - injected
    assert store.event_count() == result.planned - injected
