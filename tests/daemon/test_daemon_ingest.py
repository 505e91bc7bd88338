"""MQTT intake against a real mosquitto and a real SQLite file: stored, acknowledged, answered, or rejected with
the reason a device can act on."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from iotsettle.oracle.daemon.intake import Intake, IntakeSettings
from iotsettle.oracle.daemon.intake.transport import Message
from iotsettle.oracle.daemon.metrics import Metrics
from iotsettle.oracle.daemon.rules import RuleSettings
from iotsettle.oracle.daemon.store import Store
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.location import geohash_encode, location_bytes32
from iotsettle.oracle.testing.devices import Publisher
from iotsettle.oracle.testing.wait import wait_for

from tests.kit.devices import CHAIN_ID, CONTRACTS, Device, register

BERLIN = location_bytes32(geohash_encode(52.5200, 13.4050, 7))
BERLIN_NEARBY = location_bytes32(geohash_encode(52.5210, 13.4060, 7))
PARIS = location_bytes32(geohash_encode(48.8566, 2.3522, 7))

StartIntake = Callable[..., Intake]


@pytest.fixture
def start_intake(mosquitto, store: Store) -> Iterator[StartIntake]:
    started: list[Intake] = []
    client_id = f"oracle-{uuid.uuid4().hex[:8]}"

    def start(**overrides: object) -> Intake:
        settings = IntakeSettings(
            chain_id=CHAIN_ID,
            contracts=CONTRACTS,
            host=mosquitto.host,
            port=mosquitto.port,
            client_id=client_id,
            batch_latency_s=0.01,
            **overrides,  # type: ignore[arg-type]
        )
        intake = Intake(settings, store, Metrics())
        intake.start()
        assert intake.wait_connected(10), "intake did not connect to the broker"
        started.append(intake)
        return intake

    yield start
    for intake in started:
        intake.stop()


def rejected_count(intake: Intake, reason: str) -> float:
    return intake.metrics.rejected.labels(reason=reason)._value.get()


def test_events_are_stored_acknowledged_and_answered(
    start_intake: StartIntake, store: Store, publisher: Publisher
) -> None:
    devices = [Device() for _ in range(3)]
    register(store, *devices)
    intake = start_intake()
    now = int(time.time())
    publisher.publish_many(
        [(d.topic, d.reading(seq, 100 + seq, timestamp=now - 60 + seq)) for d in devices for seq in range(1, 21)]
    )
    wait_for(lambda: store.event_count() == 60, what="60 stored events")
    replies = publisher.collect(60)
    assert {body["status"] for _, body in replies} == {"accepted"}
    assert {topic for topic, _ in replies} == {d.topic.replace("/events", "/replies") for d in devices}
    for device in devices:
        rows = store.events_of_device(device.address)
        assert [row.seq for row in rows] == list(range(1, 21))
        assert rows[-1].value == 120 and rows[-1].status == "pending"
    assert intake.metrics.stored._value.get() == 60

    # Everything was acknowledged: the same client id reconnecting gets nothing redelivered.
    intake.stop()
    again = start_intake()
    time.sleep(0.5)
    assert again.metrics.received._value.get() == 0
    assert store.event_count() == 60


def test_duplicates_are_stored_once_and_answered_duplicate(
    start_intake: StartIntake, store: Store, publisher: Publisher
) -> None:
    device = Device()
    register(store, device)
    start_intake()
    payload = device.reading(1, 500)
    publisher.publish(device.topic, payload)
    publisher.publish(device.topic, payload)  # a device retry, likely in the same batch
    wait_for(lambda: store.event_count() == 1)
    statuses = sorted(body["status"] for _, body in publisher.collect(2))
    publisher.publish(device.topic, payload)  # a late redelivery, long after the commit
    statuses.append(publisher.collect(1)[0][1]["status"])
    assert statuses == ["accepted", "duplicate", "duplicate"]
    assert store.event_count() == 1
    assert store.reject_counts() == {}


def _cases(
    meter: Device, vehicle: Device, tracker: Device, stranger: Device, revoked: Device, now: int
) -> list[tuple[str, str, bytes]]:
    """(reason, topic, payload) for each bad-event class; the good events they follow are published first."""
    imposter = Device()
    return [
        ("malformed", meter.topic, b'{"v": 1, "type": "reading"'),
        ("oversize", meter.topic, b"\xff" * 2000),
        ("bad_signature", meter.topic, meter.reading(10, 2_000, timestamp=now, key=imposter.key)),
        ("topic_mismatch", meter.topic, vehicle.reading(10, 10, timestamp=now)),
        ("wrong_chain", meter.topic, meter.reading(10, 2_000, timestamp=now, chain_id=1)),
        ("wrong_contract", meter.topic, meter.reading(10, 2_000, timestamp=now, contract=CONTRACTS["delivery"])),
        ("unknown_device", stranger.topic, stranger.reading(1, 1, timestamp=now)),
        ("revoked_device", revoked.topic, revoked.reading(1, 1, timestamp=now)),
        ("replayed_seq", meter.topic, meter.reading(2, 1_050, timestamp=now)),  # seq 2 was accepted with 1_100
        ("counter_rollback", meter.topic, meter.reading(11, 900, timestamp=now)),
        ("impossible_rate", meter.topic, meter.reading(12, 10_000_000, timestamp=now)),
        ("clock_skew", meter.topic, meter.reading(13, 1_300, timestamp=now + 3_600)),
        ("clock_skew", vehicle.topic, vehicle.reading(5, 50, timestamp=now - 30 * 86_400)),
        ("teleport", tracker.topic, tracker.delivery(3, PARIS, timestamp=now - 5)),
        ("invalid_location", tracker.topic, tracker.delivery(4, b"not a geohash!".ljust(32, b"\0"), timestamp=now)),
    ]


def test_each_bad_event_class_is_rejected_with_its_reason(
    start_intake: StartIntake, store: Store, publisher: Publisher
) -> None:
    meter, vehicle = Device(DeviceKind.METER), Device(DeviceKind.VEHICLE)
    tracker, stranger, revoked = Device(DeviceKind.TRACKER), Device(), Device()
    register(store, meter, vehicle, tracker)
    register(store, revoked, active=False)
    intake = start_intake(rules=RuleSettings(quarantine_threshold=0))
    now = int(time.time())
    good = [
        (meter.topic, meter.reading(1, 1_000, timestamp=now - 100)),
        (meter.topic, meter.reading(2, 1_100, timestamp=now - 50)),
        (vehicle.topic, vehicle.reading(1, 10, timestamp=now - 50)),
        (tracker.topic, tracker.delivery(1, BERLIN, timestamp=now - 20)),
        (tracker.topic, tracker.delivery(2, BERLIN_NEARBY, timestamp=now - 10)),
    ]
    publisher.publish_many(good)
    assert all(body["status"] == "accepted" for _, body in publisher.collect(len(good)))

    cases = _cases(meter, vehicle, tracker, stranger, revoked, now)
    for reason, topic, payload in cases:
        publisher.publish(topic, payload)
        _, body = publisher.collect(1)[0]
        assert (body["status"], body.get("reason")) == ("rejected", reason), body

    assert store.event_count() == len(good)  # nothing bad reached the settlement outbox
    expected: dict[str, int] = {}
    for reason, _, _ in cases:
        expected[reason] = expected.get(reason, 0) + 1
    assert store.reject_counts() == expected
    for reason, count in expected.items():
        assert rejected_count(intake, reason) == count
    # the device's state only moved with accepted events: a correct next reading is still accepted
    publisher.publish(meter.topic, meter.reading(14, 1_200, timestamp=now))
    assert publisher.collect(1)[0][1]["status"] == "accepted"


def test_repeated_failures_quarantine_the_device(start_intake: StartIntake, store: Store, publisher: Publisher) -> None:
    meter, other = Device(), Device()
    register(store, meter, other)
    start_intake(rules=RuleSettings(quarantine_threshold=3, quarantine_window_s=60))
    now = int(time.time())
    publisher.publish(meter.topic, meter.reading(5, 1_000, timestamp=now - 10))
    for seq in (6, 7, 8):  # three rollbacks in a row
        publisher.publish(meter.topic, meter.reading(seq, 10, timestamp=now - 10 + seq))
    publisher.publish(meter.topic, meter.reading(9, 1_001, timestamp=now))  # correct, but the device is quarantined
    publisher.publish(other.topic, other.reading(1, 1, timestamp=now))  # other devices are not affected
    reasons = [body.get("reason", body["status"]) for _, body in publisher.collect(6)]
    assert sorted(reasons) == sorted(
        ["accepted", "counter_rollback", "counter_rollback", "counter_rollback", "quarantined", "accepted"]
    )
    quarantined = store.quarantined_devices()
    assert [state.device for state in quarantined] == [meter.address]
    assert "counter_rollback" in (quarantined[0].quarantine_reason or "")
    # an operator lets it back in while the intake runs (`iotsettle oracle release`)
    assert store.release_quarantine(meter.address)
    publisher.publish(meter.topic, meter.reading(10, 1_002, timestamp=now + 1))
    assert publisher.collect(1)[0][1]["status"] == "accepted"


def test_rotated_key_speaks_for_the_same_device(start_intake: StartIntake, store: Store, publisher: Publisher) -> None:
    from iotsettle.oracle.daemon.store import RegistryEntry

    old, new = Device(), Device()
    register(store, old)
    intake = start_intake()
    now = int(time.time())
    publisher.publish(old.topic, old.reading(1, 100, timestamp=now - 10))
    assert publisher.collect(1)[0][1]["status"] == "accepted"
    store.apply_registry(
        [
            RegistryEntry(old.address, old.address, None, 1, False, 2),
            RegistryEntry(new.address, old.address, None, 1, True, 2),
        ]
    )
    intake.registry_changed()
    publisher.publish(old.topic, old.reading(2, 110, timestamp=now - 5))
    publisher.publish(new.topic, new.reading(1, 120, timestamp=now))  # seq continues per device: 1 ≤ 1 is a replay
    publisher.publish(new.topic, new.reading(3, 120, timestamp=now))
    got = [body.get("reason", body["status"]) for _, body in publisher.collect(3)]
    assert sorted(got) == ["accepted", "replayed_seq", "revoked_device"]
    rows = store.events_of_device(old.address)
    assert [(row.seq, row.signer) for row in rows] == [(1, old.address), (3, new.address)]


def test_fast_accepted_reply_is_the_protocol_encoding() -> None:
    from iotsettle.oracle.daemon.intake import accepted_reply
    from iotsettle.oracle.protocol.reasons import Reply, decode_reply, encode_reply

    for seq, digest in ((0, bytes(32)), (2**53 - 1, bytes(range(32)))):
        assert accepted_reply(seq, digest) == encode_reply(Reply.accepted(seq, digest))
        assert decode_reply(accepted_reply(seq, digest)).stored


def test_two_oracles_on_one_shared_subscription_store_each_event_once(
    mosquitto,
    tmp_path: Path,
    publisher: Publisher,
) -> None:
    group = f"g{uuid.uuid4().hex[:6]}"
    device = Device()
    stores, intakes = [], []
    for number in range(2):
        db = Store.open(tmp_path / f"oracle-{number}.db")
        register(db, device)
        settings = IntakeSettings(
            chain_id=CHAIN_ID,
            contracts=CONTRACTS,
            host=mosquitto.host,
            port=mosquitto.port,
            client_id=f"{group}-{number}",
            shared_group=group,
            batch_latency_s=0.01,
        )
        intake = Intake(settings, db, Metrics())
        intake.start()
        assert intake.wait_connected(10)
        stores.append(db)
        intakes.append(intake)
    try:
        now = int(time.time())
        publisher.publish_many(
            [(device.topic, device.reading(seq, 100 + seq, timestamp=now - 100 + seq)) for seq in range(1, 41)]
        )
        wait_for(lambda: sum(db.event_count() for db in stores) == 40, what="40 events over both oracles")
        seqs = sorted(e.seq for db in stores for e in db.events_of_device(device.address))
        assert seqs == list(range(1, 41))  # each once, none twice
        assert all(db.event_count() > 0 for db in stores)  # the broker shared the load
        assert {body["status"] for _, body in publisher.collect(40)} == {"accepted"}
    finally:
        for intake in intakes:
            intake.stop()
        for db in stores:
            db.close()


def test_events_published_with_mqtt5_properties_are_read_whole(
    start_intake: StartIntake, store: Store, publisher: Publisher
) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    device = Device()
    register(store, device)
    start_intake()
    properties = Properties(PacketTypes.PUBLISH)
    properties.ContentType = "application/json"
    properties.UserProperty = [("fw", "1.2.3"), ("x" * 200, "y" * 200)]  # > 127 bytes of properties
    now = int(time.time())
    publisher.client.publish(
        device.topic, device.reading(1, 7, timestamp=now - 1), qos=1, properties=properties
    ).wait_for_publish(10)
    publisher.client.publish(device.topic, device.reading(2, 8, timestamp=now), qos=0).wait_for_publish(10)  # QoS 0 too
    replies = publisher.collect(2)
    assert sorted(body["status"] for _, body in replies) == ["accepted", "accepted"], replies
    assert [e.value for e in store.events_of_device(device.address)] == [7, 8]


def test_a_broker_restart_between_receive_and_commit_loses_nothing(tmp_path: Path) -> None:
    from iotsettle.oracle.chain.node import Mosquitto, free_port
    from iotsettle.oracle.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "empty.toml", env={})
    broker = Mosquitto(config, state_dir=tmp_path / "broker", port=free_port())
    broker.start()
    store = Store.open(tmp_path / "oracle.db")
    device = Device()
    register(store, device)
    settings = IntakeSettings(
        chain_id=CHAIN_ID,
        contracts=CONTRACTS,
        host=broker.host,
        port=broker.port,
        client_id="restart-oracle",
        batch_latency_s=2.0,
    )  # messages wait 2 s unacknowledged
    intake = Intake(settings, store, Metrics())
    intake.start()
    try:
        assert intake.wait_connected(10)
        publisher = Publisher(broker.host, broker.port)
        now = int(time.time())
        publisher.publish_many(
            [(device.topic, device.reading(seq, 10 * seq, timestamp=now - 20 + seq)) for seq in range(1, 11)]
        )
        publisher.close()
        wait_for(lambda: intake.backlog == 10, what="10 messages received")
        broker.stop()  # graceful: the session and its unacknowledged messages are saved
        broker.start()
        # the batch commits after the reconnect; the broker redelivers the ten unacknowledged messages on the
        # resumed session, and they are answered "duplicate" and acknowledged, not stored twice
        wait_for(lambda: intake.metrics.duplicates._value.get() >= 10, 30, "the redelivered copies")
        assert [e.seq for e in store.events_of_device(device.address)] == list(range(1, 11))
        intake.stop()
        again = Intake(settings, store, Metrics())
        again.start()
        assert again.wait_connected(10)
        time.sleep(0.5)
        assert again.metrics.received._value.get() == 0  # all acknowledged in the end
        again.stop()
    finally:
        intake.stop()
        store.close()
        broker.stop()


def _feed(intake: Intake, count: int, every: int, pause: float) -> threading.Thread:
    """A thread putting ``count`` messages on the intake's queue, ``every`` at a time with ``pause`` s between."""

    def run() -> None:
        for start in range(0, count, every):
            for mid in range(start + 1, min(count, start + every) + 1):
                intake._queue.put(Message(time.time(), mid, 1, "iotsettle/v1/burst", b""))
            time.sleep(pause)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_burst_still_arriving_when_the_window_closes_is_taken_whole(store: Store) -> None:
    intake = Intake(IntakeSettings(chain_id=CHAIN_ID, contracts=CONTRACTS, batch_latency_s=0.1), store, Metrics())
    # 400 messages over ≈ 0.2 s (twice the window), ≈ 50 in each 25 ms nap: well above 512 // 32 = 16 per nap
    feeder = _feed(intake, 400, 20, 0.01)

    batch = intake._take_batch(wait=True)

    feeder.join()
    assert [m.mid for m in batch] == list(range(1, 401)), "one batch: stored, acknowledged and settled together"


def test_a_steady_trickle_keeps_the_intake_window(store: Store) -> None:
    intake = Intake(IntakeSettings(chain_id=CHAIN_ID, contracts=CONTRACTS, batch_latency_s=0.1), store, Metrics())
    # 200 messages over ≈ 1 s: ≈ 5 per nap, below the burst rate; the first batch closes with the 0.1 s window
    feeder = _feed(intake, 200, 1, 0.005)

    batch = intake._take_batch(wait=True)

    assert 0 < len(batch) < 100
    feeder.join()
