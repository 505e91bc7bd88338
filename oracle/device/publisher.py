"""Publish a device's buffered events to the broker: paho-mqtt 2.x, QoS 1, automatic reconnect.

The offline buffer is the source of truth. A pump thread publishes buffered messages in id order while the
client is connected, keeping at most ``max_inflight`` unacknowledged, and deletes a row only when paho reports
the broker's PUBACK (``on_publish``). Messages in flight during a disconnect stay in paho's queue and are resent
by paho (DUP flag, same order) after it reconnects; a process restart resends whatever is still in the buffer.
Either way delivery is at-least-once and the oracle de-duplicates by (device, seq).

paho callbacks only hand off to the pump thread (queue + event); the pump alone touches the buffer.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from iotsettle.oracle.device.buffer import OfflineBuffer
from iotsettle.oracle.protocol.errors import ProtocolError
from iotsettle.oracle.protocol.reasons import Reply, decode_reply
from iotsettle.oracle.protocol.wire import SignedEvent, events_topic

log = logging.getLogger(__name__)

ReplyHandler = Callable[[str, Reply], None]


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Where and how to connect. ``password`` is never shown by ``repr``."""

    host: str
    port: int
    client_id: str
    keepalive: int = 30
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca_file: str | None = None
    #: a persistent session keeps QoS 1 replies queued at the broker while the device is offline
    clean_session: bool = False
    reconnect_min_delay: int = 1
    reconnect_max_delay: int = 30


@dataclass(frozen=True, slots=True)
class PublisherStats:
    connected: bool
    published: int
    acknowledged: int
    pending: int
    connects: int
    replies: int


class Publisher:
    """Drains an OfflineBuffer to an MQTT broker. ``start()`` returns at once; connecting is retried forever."""

    def __init__(
        self,
        buffer: OfflineBuffer,
        broker: BrokerSettings,
        *,
        max_inflight: int = 100,
        reply_topics: Sequence[str] = (),
        on_reply: ReplyHandler | None = None,
    ) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self._buffer = buffer
        self._broker = broker
        self._max_inflight = max_inflight
        self._reply_topics = tuple(reply_topics)
        self._on_reply = on_reply
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._idle = threading.Event()
        self._inflight: dict[int, int] = {}  # paho mid → buffer row id; pump thread only
        self._last_sent_id = 0
        self._published = 0
        self._acknowledged = 0
        self._connects = 0
        self._replies = 0
        self._pump: threading.Thread | None = None
        self._client = self._make_client()

    # -- paho wiring -------------------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        broker = self._broker
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=broker.client_id,
            clean_session=broker.clean_session,
            protocol=mqtt.MQTTv311,
        )
        client.max_inflight_messages_set(self._max_inflight)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(broker.reconnect_min_delay, broker.reconnect_max_delay)
        if broker.username is not None:
            client.username_pw_set(broker.username, broker.password)
        if broker.tls_ca_file is not None:
            client.tls_set(ca_certs=broker.tls_ca_file)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        client.on_message = self._handle_message
        return client

    def _handle_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any
    ) -> None:
        if reason_code.is_failure:
            log.warning("broker %s:%d refused the connection: %s", self._broker.host, self._broker.port, reason_code)
            return
        # Subscribing here (not once after connect) re-establishes the reply subscription after every reconnect.
        for topic in self._reply_topics:
            client.subscribe(topic, qos=1)
        self._connects += 1
        self._connected.set()
        self._wake.set()
        log.info("connected to %s:%d as %s", self._broker.host, self._broker.port, self._broker.client_id)

    def _handle_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any
    ) -> None:
        self._connected.clear()
        if not self._stopping.is_set():
            log.warning("disconnected from %s:%d (%s); reconnecting", self._broker.host, self._broker.port, reason_code)

    def _handle_publish(
        self, _client: mqtt.Client, _userdata: Any, mid: int, _reason_code: Any, _properties: Any
    ) -> None:
        self._acks.put(mid)
        self._wake.set()

    def _handle_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            reply = decode_reply(bytes(message.payload))
        except ProtocolError as exc:
            log.warning("ignoring an unreadable reply on %s: %s", message.topic, exc)
            return
        self._replies += 1
        if self._on_reply is not None:
            self._on_reply(message.topic, reply)

    # -- pump ------------------------------------------------------------------------------------------------
    def _drain_acks(self) -> None:
        rows: list[int] = []
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                break
            row = self._inflight.pop(mid, None)
            if row is not None:
                rows.append(row)
        if rows:
            self._buffer.delete(rows)
            self._acknowledged += len(rows)

    def _fill_window(self) -> None:
        room = self._max_inflight - len(self._inflight)
        if room <= 0:
            return
        for message in self._buffer.peek(self._last_sent_id, room):
            info = self._client.publish(message.topic, message.payload, qos=1, retain=False)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                # NO_CONN still queues the message inside paho for the reconnect; anything else did not take it.
                log.warning("paho refused message %d (%s); retrying", message.id, mqtt.error_string(info.rc))
                break
            self._inflight[info.mid] = message.id
            self._last_sent_id = message.id
            self._published += 1

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(0.05)
            self._wake.clear()
            self._drain_acks()
            if self._connected.is_set():
                self._fill_window()
            if not self._inflight and not self._buffer.peek(self._last_sent_id, 1):
                self._idle.set()
            else:
                self._idle.clear()
        self._drain_acks()

    # -- public API ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background (retrying with back-off) and start publishing the buffer."""
        self._client.connect_async(self._broker.host, self._broker.port, keepalive=self._broker.keepalive)
        self._client.loop_start()
        self._pump = threading.Thread(target=self._run, name=f"publisher-{self._broker.client_id}", daemon=True)
        self._pump.start()

    def submit(self, topic: str, payload: bytes) -> int:
        """Store a message durably and schedule it; returns the buffer id. Safe from any thread."""
        message_id = self._buffer.push(topic, payload)
        self._idle.clear()
        self._wake.set()
        return message_id

    def submit_many(self, messages: Iterable[tuple[str, bytes]]) -> int:
        count = self._buffer.push_many(messages)
        if count:
            self._idle.clear()
            self._wake.set()
        return count

    def submit_event(self, event: SignedEvent) -> int:
        """Buffer a signed event on its device's events topic."""
        return self.submit(events_topic(event.chain_id, event.device), event.to_payload())

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until the broker acknowledged everything buffered so far; False on timeout."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while time.monotonic() < deadline:
            if self._idle.wait(min(0.05, max(0.0, deadline - time.monotonic()))) and len(self._buffer) == 0:
                return True
        return len(self._buffer) == 0

    @property
    def stats(self) -> PublisherStats:
        return PublisherStats(
            connected=self._connected.is_set(),
            published=self._published,
            acknowledged=self._acknowledged,
            pending=len(self._buffer),
            connects=self._connects,
            replies=self._replies,
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop publishing and disconnect. Unacknowledged messages stay in the buffer for the next start."""
        self._stopping.set()
        self._wake.set()
        if self._pump is not None:
            self._pump.join(timeout)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
