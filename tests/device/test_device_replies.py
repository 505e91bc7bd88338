"""The SDK keeps deliveries and weather observations until the oracle's reply and publishes them again without one,
against a real mosquitto of the test's own and the real intake (in this process) on a real SQLite store.

Readings (a cumulative kind) keep today's behaviour: deleted on the broker's PUBACK.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from iotsettle.oracle.chain.node import Mosquitto
from iotsettle.oracle.daemon.intake import Intake, IntakeSettings
from iotsettle.oracle.daemon.metrics import Metrics
from iotsettle.oracle.daemon.store import Store
from iotsettle.oracle.device.buffer import OfflineBuffer
from iotsettle.oracle.device.publisher import BrokerSettings, Publisher
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.testing.devices import Publisher as RawPublisher

from tests.kit.devices import ALL_CONTRACTS, CHAIN_ID, Device, register

LOCATION = b"u33dbfc".ljust(32, b"\0")


class Oracle:
    """The intake on the test's broker, started and stopped at will under one client id (its persistent session)."""

    def __init__(self, broker: Mosquitto, store: Store) -> None:
        self.settings = IntakeSettings(
            chain_id=CHAIN_ID,
            contracts=dict(ALL_CONTRACTS),
            host=broker.host,
            port=broker.port,
            client_id=f"oracle-{uuid.uuid4().hex[:8]}",
            batch_latency_s=0.01,
        )
        self.store = store
        self.intake: Intake | None = None

    def start(self) -> Intake:
        self.intake = Intake(self.settings, self.store, Metrics())
        self.intake.start()
        assert self.intake.wait_connected(15), "the intake did not connect"
        return self.intake

    def stop(self) -> None:
        if self.intake is not None:
            self.intake.stop()
            self.intake = None


@pytest.fixture
def oracle(broker: Mosquitto, store: Store) -> Iterator[Oracle]:
    broker.start()
    service = Oracle(broker, store)
    yield service
    service.stop()


def sdk(broker: Mosquitto, tmp_path: Path, name: str = "outbox.db") -> Publisher:
    settings = BrokerSettings(
        broker.host, broker.port, client_id=f"gw-{uuid.uuid4().hex[:8]}", reconnect_min_delay=1, reconnect_max_delay=1
    )
    return Publisher(OfflineBuffer(tmp_path / name), settings, reply_timeout=0.5, reply_timeout_max=1.0)


def devices(store: Store) -> tuple[Device, Device, Device]:
    meter = Device(kind=DeviceKind.METER, contracts=dict(ALL_CONTRACTS))
    tracker = Device(kind=DeviceKind.TRACKER, contracts=dict(ALL_CONTRACTS))
    station = Device(kind=DeviceKind.WEATHER_STATION, contracts=dict(ALL_CONTRACTS))
    register(store, meter, tracker, station)
    return meter, tracker, station


def stored(store: Store) -> list[tuple[str, str, int]]:
    return sorted(
        (event.kind, event.device.lower(), event.seq)
        for device in {row[0] for row in store.conn.execute("SELECT DISTINCT device FROM events")}
        for event in store.events_of_device(device)
    )


def test_a_delivery_no_oracle_received_is_published_again_until_the_oracle_accepts_it(
    oracle: Oracle, store: Store, broker: Mosquitto, tmp_path: Path
) -> None:
    meter, tracker, station = devices(store)
    publisher = sdk(broker, tmp_path)
    publisher.start()
    try:
        assert publisher.wait_connected(10)
        # no oracle has subscribed yet: the broker acknowledges the three events and delivers them to nobody
        publisher.submit(meter.topic, meter.reading(1, 1_000))
        publisher.submit(tracker.topic, tracker.delivery(1, LOCATION))
        publisher.submit(station.topic, station.weather(1, 120, 2_450))
        assert publisher.flush(10)
        assert (publisher.stats.pending, publisher.stats.awaiting_reply) == (0, 2), "the reading went on the PUBACK"
        oracle.start()
        assert publisher.wait_answered(15), f"still waiting for replies: {publisher.stats}"
        stats = publisher.stats
    finally:
        publisher.stop()
    assert stored(store) == sorted(
        [("delivery", tracker.address.lower(), 1), ("weather", station.address.lower(), 1)]
    ), "the delivery and the observation arrive; the lost reading is made good by the meter's next one"
    assert stats.republished >= 2 and stats.confirmed == 2 and stats.refused == 0, stats


def test_a_republished_event_is_answered_duplicate_and_stored_once_and_a_rejection_ends_the_retries(
    oracle: Oracle, store: Store, broker: Mosquitto, tmp_path: Path
) -> None:
    _, tracker, _ = devices(store)
    stranger = Device(kind=DeviceKind.TRACKER, contracts=dict(ALL_CONTRACTS))  # never registered
    oracle.start()
    delivery = tracker.delivery(1, LOCATION)
    raw = RawPublisher(broker.host, broker.port, CHAIN_ID)
    try:
        raw.publish(tracker.topic, delivery)  # the first copy, e.g. from before the device rebooted
        ((_, first),) = raw.collect(1, 10)
    finally:
        raw.close()
    assert first["status"] == "accepted"

    publisher = sdk(broker, tmp_path)
    publisher.start()
    try:
        publisher.submit(tracker.topic, delivery)
        publisher.submit(stranger.topic, stranger.delivery(1, LOCATION))
        assert publisher.wait_answered(15), f"still waiting for replies: {publisher.stats}"
        time.sleep(1.5)  # three reply timeouts: nothing is published again once answered
        stats = publisher.stats
    finally:
        publisher.stop()
    assert (stats.confirmed, stats.refused, stats.republished) == (1, 1, 0), stats
    assert stored(store) == [("delivery", tracker.address.lower(), 1)]


def test_events_a_broker_lost_to_kill_9_are_published_again_on_reconnect(
    oracle: Oracle, store: Store, broker: Mosquitto, tmp_path: Path
) -> None:
    """The reliability tests' broker kill -9 (tests/reliability/test_reliability_broker.py), at the device's side:
    the oracle is away, the broker acknowledges a burst and is killed before its next autosave."""
    _, tracker, station = devices(store)
    oracle.start()
    oracle.stop()  # its session stays at the broker, which queues the events for it
    time.sleep(1.5)  # past mosquitto's autosave: the session itself survives the kill
    publisher = Publisher(
        OfflineBuffer(tmp_path / "outbox.db"),
        BrokerSettings(broker.host, broker.port, "gw-kill9", reconnect_min_delay=1, reconnect_max_delay=1),
        reply_timeout=30.0,  # longer than the test: only the publication on reconnect can bring them back
        reply_timeout_max=30.0,
    )
    publisher.start()
    try:
        assert publisher.wait_connected(10)
        for seq in (1, 2, 3):
            publisher.submit(station.topic, station.weather(seq, 100 + seq, 2_400, timestamp=int(time.time()) + seq))
        publisher.submit(tracker.topic, tracker.delivery(1, LOCATION))
        assert publisher.flush(10)
        broker.kill()
        broker.start()
        oracle.start()
        assert publisher.wait_answered(20), f"still waiting for replies: {publisher.stats}"
        stats = publisher.stats
    finally:
        publisher.stop()
    station_seqs = [seq for kind, _, seq in stored(store) if kind == "weather"]
    assert station_seqs == [1, 2, 3], "every observation, none refused as replayed_seq"
    assert [kind for kind, _, _ in stored(store)].count("delivery") == 1
    assert stats.refused == 0 and stats.confirmed == 4, stats


def test_a_newer_event_waits_while_an_older_one_of_its_device_is_published_again(
    oracle: Oracle, store: Store, broker: Mosquitto, tmp_path: Path
) -> None:
    """The race of a broker restart: the copy published again on reconnect can reach no oracle (it has not
    subscribed yet), and a newer observation sent as soon as the oracle is back would be accepted first, leaving the
    older one refused as replayed_seq for ever (and CropInsurance takes seq = last + 1 only). Here the older one has
    been published again to nobody; the newer one, submitted the moment the oracle is up, must wait for its reply."""
    _, tracker, station = devices(store)
    publisher = Publisher(
        OfflineBuffer(tmp_path / "outbox.db"),
        BrokerSettings(broker.host, broker.port, "gw-order", reconnect_min_delay=1, reconnect_max_delay=1),
        reply_timeout=0.5,
        reply_timeout_max=4.0,  # the second copy of seq 1 goes out 1 s after the first: seq 2 would overtake it
    )
    now = int(time.time())
    publisher.start()
    try:
        assert publisher.wait_connected(10)
        publisher.submit(station.topic, station.weather(1, 101, 2_400, timestamp=now))
        deadline = time.monotonic() + 10
        while publisher.stats.republished < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert publisher.stats.republished == 1, publisher.stats
        oracle.start()
        publisher.submit(station.topic, station.weather(2, 102, 2_400, timestamp=now + 1))
        publisher.submit(tracker.topic, tracker.delivery(1, LOCATION))  # another device is not held back
        assert publisher.wait_answered(20), f"still waiting for replies: {publisher.stats}"
        stats = publisher.stats
    finally:
        publisher.stop()
    assert [seq for kind, _, seq in stored(store) if kind == "weather"] == [1, 2], "none refused as replayed_seq"
    assert stats.refused == 0 and stats.confirmed == 3, stats
