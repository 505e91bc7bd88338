"""Alerts through the intake against a real mosquitto and a real SQLite file: raised on the event that earns one,
stored, published on the alerts topic and counted; a detector that fails never costs the event."""

from __future__ import annotations

import json
import queue
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from iotsettle.oracle.daemon import store as store_module
from iotsettle.oracle.daemon.alerts import Alert, AlertSettings, AlertState
from iotsettle.oracle.daemon.intake import Intake, IntakeSettings
from iotsettle.oracle.daemon.metrics import Metrics
from iotsettle.oracle.daemon.store import Store
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.wire import alerts_topic
from iotsettle.oracle.testing.devices import Publisher
from iotsettle.oracle.testing.wait import wait_for

from tests.kit.devices import ALL_CONTRACTS, CHAIN_ID, Device, register


class AlertListener:
    """An operator's MQTT client on the alerts topic."""

    def __init__(self, host: str, port: int) -> None:
        self.alerts: queue.SimpleQueue[tuple[int, dict[str, Any]]] = queue.SimpleQueue()
        subscribed = queue.SimpleQueue[bool]()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ops-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = lambda c, *_: c.subscribe(alerts_topic(CHAIN_ID), qos=1)
        self.client.on_subscribe = lambda *_: subscribed.put(True)
        self.client.on_message = lambda c, u, m: self.alerts.put((m.qos, json.loads(m.payload)))
        self.client.connect(host, port)
        self.client.loop_start()
        subscribed.get(timeout=10)

    def take(self, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
        return self.alerts.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def listener(mosquitto: Any) -> Iterator[AlertListener]:
    made = AlertListener(mosquitto.host, mosquitto.port)
    yield made
    made.close()


@pytest.fixture
def intake(mosquitto: Any, store: Store) -> Iterator[Intake]:
    settings = IntakeSettings(
        chain_id=CHAIN_ID,
        contracts=ALL_CONTRACTS,
        host=mosquitto.host,
        port=mosquitto.port,
        client_id=f"oracle-{uuid.uuid4().hex[:8]}",
        batch_latency_s=0.01,
        alerts=AlertSettings(meter_warmup=5),
    )
    made = Intake(settings, store, Metrics())
    made.start()
    assert made.wait_connected(10)
    yield made
    made.stop()


def test_a_meter_spike_is_stored_published_and_counted(
    intake: Intake, store: Store, publisher: Publisher, listener: AlertListener
) -> None:
    meter = Device()
    register(store, meter)
    intake.registry_changed()
    start = int(time.time()) - 3_600
    # a meter at ~0.14 Wh/s (500 W) read every minute, then 300 Wh/s for one minute
    values = [100_000 + int(0.14 * 60 * k) for k in range(20)]
    values.append(values[-1] + 300 * 60)
    publisher.publish_many(
        [(meter.topic, meter.reading(k + 1, value, timestamp=start + 60 * k)) for k, value in enumerate(values)]
    )
    wait_for(lambda: store.event_count() == 21, what="21 stored events")
    qos, published = listener.take()
    assert qos == 1
    assert published["alert"] == "meter_spike" and published["device"] == meter.address
    assert published["seq"] == 21 and published["type"] == "reading" and published["target"] == "1"
    stored = [Alert.from_row(row) for row in store.alerts()]
    assert [(a.kind, a.seq, a.id) for a in stored] == [("meter_spike", 21, published["id"])]
    assert store.alert_counts() == {"meter_spike": 1}
    assert b'iotsettle_oracle_alerts_total{kind="meter_spike"} 1.0' in intake.metrics.render()
    # alerts never block settlement: the spiking reading is stored pending, and was answered accepted
    assert store.events_of_device(meter.address)[-1].status == "pending"
    assert publisher.collect(21)[-1][1]["status"] == "accepted"


def test_a_failing_detector_costs_neither_the_event_nor_the_batch(
    intake: Intake, store: Store, publisher: Publisher
) -> None:
    vehicle, meter = Device(kind=DeviceKind.VEHICLE, contracts=ALL_CONTRACTS), Device()
    register(store, vehicle, meter)
    intake.registry_changed()

    def broken(policy: int) -> int | None:
        raise RuntimeError("policy cache broken")

    intake.policy_status = broken
    now = int(time.time())
    publisher.publish_many(
        [
            (vehicle.topic, vehicle.telematics(1, 1_000, timestamp=now - 60)),
            (meter.topic, meter.reading(1, 500, timestamp=now - 60)),
            (vehicle.topic, vehicle.telematics(2, 2_000, timestamp=now - 5)),
        ]
    )
    wait_for(lambda: store.event_count() == 3, what="3 stored events")
    assert [body["status"] for _, body in publisher.collect(3)] == ["accepted"] * 3
    assert intake.metrics.alert_errors._value.get() == 2
    assert intake.alive and store.alerts() == []


def test_a_version_2_store_file_is_migrated_with_its_events_kept(tmp_path: Path) -> None:
    """A store written before the alerts existed (schema version 2) opens with the alert tables added."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for script in store_module._MIGRATIONS[:2]:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("PRAGMA user_version=2")
    conn.execute("INSERT INTO device_state (device, last_seq) VALUES ('0xabc', 41)")
    conn.close()
    migrated = Store.open(path)
    try:
        assert migrated.conn.execute("PRAGMA user_version").fetchone()[0] == 3
        assert migrated.device_state("0xabc").last_seq == 41  # type: ignore[union-attr]
        assert migrated.alerts() == [] and migrated.alert_state("0xabc") is None
        migrated.add_alerts([], [("0xabc", '{"b":[[1,12,0.5,0.01]]}', None, None)])
        assert migrated.alert_state("0xabc") == ("0xabc", '{"b":[[1,12,0.5,0.01]]}', None, None)
    finally:
        migrated.close()


def test_the_detectors_state_outlives_a_restart(intake: Intake, store: Store, publisher: Publisher) -> None:
    meter = Device()
    register(store, meter)
    intake.registry_changed()
    start = int(time.time()) - 3_600
    publisher.publish_many([(meter.topic, meter.reading(k + 1, 1_000 + k, timestamp=start + 60 * k)) for k in range(8)])
    wait_for(lambda: store.event_count() == 8, what="8 stored events")
    intake.stop()  # saves the detectors' states it held back between flushes
    row = store.alert_state(meter.address)
    assert row is not None
    [(agreement, readings, mean, _)] = AlertState.from_row(*row).baselines
    assert (agreement, readings) == (1, 7) and abs(mean - 1 / 60) < 1e-9
