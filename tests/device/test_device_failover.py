"""A broker list: the device SDK moves to the next broker, in order, when the one it uses stops, and starts on the
next one when the first is down. Two real mosquittos; each test's own subscriber tells which broker got what."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from iotsettle.oracle.chain.node import Mosquitto, free_port
from iotsettle.oracle.config import BrokerEndpoint, Config
from iotsettle.oracle.device.buffer import OfflineBuffer
from iotsettle.oracle.device.publisher import BrokerSettings, Publisher

TOPIC = "iotsettle/v1/31337/dev-failover/events"


@pytest.fixture
def brokers(test_config: Config, tmp_path: Path) -> Iterator[tuple[Mosquitto, Mosquitto]]:
    first = Mosquitto(test_config, state_dir=tmp_path / "a", port=free_port())
    second = Mosquitto(test_config, state_dir=tmp_path / "b", port=free_port())
    yield first, second
    first.stop()
    second.stop()


class _Listener:
    """A subscriber on one broker, collecting the payloads published on TOPIC there."""

    def __init__(self, broker: Mosquitto) -> None:
        self.payloads: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        subscribed = queue.SimpleQueue[bool]()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"listen-{broker.port}")
        self.client.on_message = lambda _c, _u, m: self.payloads.put(bytes(m.payload))
        self.client.on_subscribe = lambda *_: subscribed.put(True)
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(TOPIC, qos=1)
        self.client.loop_start()
        subscribed.get(timeout=10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _endpoint(broker: Mosquitto) -> BrokerEndpoint:
    return BrokerEndpoint(broker.host, broker.port)


def _publisher(tmp_path: Path, *endpoints: BrokerEndpoint) -> Publisher:
    settings = BrokerSettings(
        endpoints[0].host,
        endpoints[0].port,
        "dev-failover",
        brokers=endpoints,
        reconnect_min_delay=1,
        reconnect_max_delay=2,
    )
    return Publisher(OfflineBuffer(tmp_path / "outbox.db"), settings)


def test_publisher_moves_to_the_next_broker_when_its_broker_stops(
    brokers: tuple[Mosquitto, Mosquitto], tmp_path: Path
) -> None:
    first, second = brokers
    first.start()
    second.start()
    on_first, on_second = _Listener(first), _Listener(second)
    publisher = _publisher(tmp_path, _endpoint(first), _endpoint(second))
    publisher.start()
    try:
        publisher.submit(TOPIC, b"one")
        assert publisher.flush(20), publisher.stats
        assert on_first.payloads.get(timeout=10) == b"one"

        on_first.close()
        first.stop()
        publisher.submit(TOPIC, b"two")
        assert publisher.flush(60), publisher.stats  # acknowledged by the second broker
        assert on_second.payloads.get(timeout=10) == b"two"
        assert on_second.payloads.empty()
        assert publisher.stats.connects == 2
    finally:
        publisher.stop()
        on_second.close()


def test_publisher_starts_on_the_next_broker_when_the_first_is_down(
    brokers: tuple[Mosquitto, Mosquitto], tmp_path: Path
) -> None:
    first, second = brokers  # the first is never started: nothing listens on its port
    second.start()
    on_second = _Listener(second)
    publisher = _publisher(tmp_path, _endpoint(first), _endpoint(second))
    publisher.start()
    try:
        publisher.submit(TOPIC, b"one")
        assert publisher.flush(30), publisher.stats
        assert on_second.payloads.get(timeout=10) == b"one"
    finally:
        publisher.stop()
        on_second.close()
