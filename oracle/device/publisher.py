"""Publish a device's buffered events to the broker: paho-mqtt 2.x, QoS 1, automatic reconnect.

The offline buffer is the source of truth. A pump thread publishes buffered messages in id order while the
client is connected, keeping at most ``max_inflight`` unacknowledged. Messages in flight during a disconnect stay
in paho's queue and are resent by paho (DUP flag, same order) after it reconnects; a process restart resends
whatever is still in the buffer. Either way delivery is at-least-once and the oracle de-duplicates by (device, seq).

What ends a message's stay in the buffer depends on its event kind (``iotsettle.oracle.protocol.kinds``):

- cumulative kinds (readings, telematics) go on the broker's PUBACK: a message the broker loses afterwards (a
  broker killed within its autosave interval) is made good by the device's next event, which carries the registers;
- the other kinds (deliveries, weather observations) stay until the oracle's reply for them (``accepted`` or
  ``duplicate``: it holds the event; ``rejected``: it never will). The publisher subscribes to the replies topic of
  each device it publishes them for. Without a reply within ``reply_timeout`` seconds the message is published
  again, the wait doubling up to ``reply_timeout_max``, at most ``reply_attempts`` times; after every (re)connect
  everything still waiting is published again at once, oldest first and ahead of paho's own resends and of newer
  events, because a reconnect is when a broker may have lost what it acknowledged, and the oracle takes a device's
  events only in rising ``seq`` order (a lost event sent after a newer one would be refused ``replayed_seq``).
  For the same reason a device whose message had to be published again (no reply in time, or a reconnect) is in
  recovery: its newer messages of these kinds wait in the buffer until the oracle answered the older one, because
  the copy published again may itself have reached nobody (an oracle not yet subscribed after a broker restart).
  Other devices' messages go on meanwhile. A message is never deleted without a reply: after its last attempt it
  waits for the next connect.

paho callbacks only hand off to the pump thread (queues + event), with one exception: on connect, the messages
waiting for a reply are published again inside the callback, since only there do they go out before paho resends
its in-flight messages of the previous connection.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from iotsettle.oracle.chain.broker import Failover
from iotsettle.oracle.config import BrokerEndpoint, BrokerTls
from iotsettle.oracle.device.buffer import BufferedMessage, OfflineBuffer, ReplyKey
from iotsettle.oracle.protocol import wire
from iotsettle.oracle.protocol.errors import ProtocolError
from iotsettle.oracle.protocol.kinds import KINDS
from iotsettle.oracle.protocol.reasons import Reply, decode_reply
from iotsettle.oracle.protocol.wire import SignedEvent, events_topic

log = logging.getLogger(__name__)

ReplyHandler = Callable[[str, Reply], None]


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Where and how to connect. ``password`` is never shown by ``repr``.

    ``brokers``: the brokers in failover order (``[mqtt] brokers``); empty = ``host:port``, over TLS when
    ``tls_ca_file`` or ``tls_cert_file`` is set. TLS checks the broker's certificate against ``tls_ca_file`` (else
    the system CAs) and, unless ``tls_check_hostname`` is off, that it names the host; ``tls_cert_file`` +
    ``tls_key_file`` are the device's own certificate for brokers that require mutual TLS.
    """

    host: str
    port: int
    client_id: str
    keepalive: int = 30
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_check_hostname: bool = True
    brokers: tuple[BrokerEndpoint, ...] = ()
    #: a persistent session keeps QoS 1 replies queued at the broker while the device is offline
    clean_session: bool = False
    reconnect_min_delay: int = 1
    reconnect_max_delay: int = 30

    @property
    def tls(self) -> BrokerTls:
        return BrokerTls(
            self.tls_ca_file or "", self.tls_cert_file or "", self.tls_key_file or "", self.tls_check_hostname
        )

    @property
    def endpoints(self) -> tuple[BrokerEndpoint, ...]:
        return self.brokers or (BrokerEndpoint(self.host, self.port, self.tls.configured),)


@dataclass(frozen=True, slots=True)
class PublisherStats:
    connected: bool
    published: int  # first publications
    acknowledged: int  # first publications the broker acknowledged
    pending: int  # buffered, not yet acknowledged by the broker
    connects: int
    replies: int
    awaiting_reply: int = 0  # acknowledged by the broker, kept until the oracle's reply
    confirmed: int = 0  # released by an "accepted" or "duplicate" reply
    refused: int = 0  # released by a "rejected" reply
    republished: int = 0  # publications again of messages without a reply


def reply_key(payload: bytes) -> ReplyKey | None:
    """How the oracle's reply names this event if it is of a kind kept until that reply (not cumulative); None for
    a cumulative kind, and for a payload that cannot be read (no reply could be matched to it)."""
    try:
        kind = json.loads(payload).get("type")
    except (ValueError, AttributeError):
        return None
    spec = KINDS.get(kind) if isinstance(kind, str) else None
    if spec is None or spec.cumulative:
        return None
    try:
        return event_key(wire.decode(payload))
    except (ProtocolError, ValueError, TypeError, KeyError):
        return None


def event_key(event: SignedEvent) -> ReplyKey | None:
    """``reply_key`` of an event already decoded."""
    spec = KINDS.get(event.type)
    if spec is None or spec.cumulative:
        return None
    return ReplyKey(event.device.lower(), event.seq, event.digest)


def _replies_topic_of(topic: str) -> str | None:
    return topic[: -len("events")] + "replies" if topic.endswith("/events") else None


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
        reply_timeout: float = 10.0,
        reply_timeout_max: float = 300.0,
        reply_attempts: int = 20,
    ) -> None:
        """``reply_topics``: filters to subscribe to besides the replies topic of each device whose deliveries or
        observations are published (a gateway passes ``iotsettle/v1/<chainId>/+/replies``); ``on_reply`` gets every
        reply. ``reply_timeout`` … ``reply_attempts``: when a message kept for the oracle's reply is published
        again (module docstring)."""
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        if not 0 < reply_timeout <= reply_timeout_max or reply_attempts < 0:
            raise ValueError("reply_timeout must be positive and at most reply_timeout_max; reply_attempts ≥ 0")
        self._buffer = buffer
        self._broker = broker
        self._max_inflight = max_inflight
        self._reply_topics = tuple(reply_topics)
        self._on_reply = on_reply
        self._reply_timeout = reply_timeout
        self._reply_timeout_max = reply_timeout_max
        self._reply_attempts = reply_attempts
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._answers: queue.SimpleQueue[tuple[str, Reply]] = queue.SimpleQueue()  # (device, reply)
        self._reconnect_sent: queue.SimpleQueue[tuple[int, BufferedMessage]] = queue.SimpleQueue()
        self._subscriptions_lock = threading.Lock()
        self._device_reply_topics: set[str] = set()  # replies topics subscribed for kept messages
        self._wake = threading.Event()
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._idle = threading.Event()
        # paho mid → (buffer row id, kept until the reply, a publication again); pump thread only
        self._inflight: dict[int, tuple[int, bool, bool]] = {}
        self._last_sent_id = 0
        # first publications held back while their device is in recovery (id → message); pump thread only
        self._held: dict[int, BufferedMessage] = {}
        self._recovering: set[str] = set()
        self._recovery_changed = True  # read the devices in recovery again before the next fill
        self._published = 0
        self._acknowledged = 0
        self._connects = 0
        self._replies = 0
        self._confirmed = 0
        self._refused = 0
        self._republished = 0
        self._pump: threading.Thread | None = None
        self._client = self._make_client()
        self._failover = Failover(self._client, broker.endpoints, broker.tls, f"device client {broker.client_id}")

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
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        client.on_message = self._handle_message
        return client

    def _handle_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any
    ) -> None:
        if reason_code.is_failure:
            log.warning("broker %s refused the connection: %s", self._failover.current, reason_code)
            return
        self._failover.connected()
        # Subscribing here (not once after connect) re-establishes the reply subscriptions after every reconnect.
        waiting = self._buffer.awaiting()
        for message in waiting:
            self._note_replies_topic(message.topic)
        with self._subscriptions_lock:
            topics = [*self._reply_topics, *sorted(self._device_reply_topics)]
        for topic in topics:
            client.subscribe(topic, qos=1)
        # Published here, not by the pump: paho resends its in-flight messages right after this callback returns,
        # and those are newer than anything waiting for a reply (which the broker had acknowledged before).
        for message in waiting:
            info = client.publish(message.topic, message.payload, qos=1, retain=False)
            if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                self._reconnect_sent.put((info.mid, message))
        if waiting:
            log.info("published %d events again that were waiting for the oracle's reply", len(waiting))
        self._connects += 1
        self._connected.set()
        self._wake.set()
        log.info("connected to %s as %s", self._failover.current, self._broker.client_id)

    def _handle_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any
    ) -> None:
        self._connected.clear()
        if not self._stopping.is_set():
            log.warning("disconnected from %s (%s); reconnecting", self._failover.current, reason_code)
            self._failover.disconnected()

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
        parts = message.topic.split("/")
        if len(parts) == 5 and reply.seq is not None:
            self._answers.put((parts[3].lower(), reply))
            self._wake.set()
        if self._on_reply is not None:
            self._on_reply(message.topic, reply)

    def _note_replies_topic(self, topic_of_events: str) -> str | None:
        """Remember the replies topic that pairs with ``topic_of_events`` unless a subscription covers it already;
        returns it when it is new."""
        topic = _replies_topic_of(topic_of_events)
        if topic is None:
            return None
        with self._subscriptions_lock:
            if topic in self._device_reply_topics or any(
                mqtt.topic_matches_sub(pattern, topic) for pattern in self._reply_topics
            ):
                return None
            self._device_reply_topics.add(topic)
        return topic

    def _subscribe_replies_of(self, topic_of_events: str) -> None:
        """Subscribe to the replies topic of a message kept for the oracle's reply, before publishing it (the
        SUBSCRIBE goes out first on the same connection; after a reconnect ``_handle_connect`` subscribes)."""
        topic = self._note_replies_topic(topic_of_events)
        if topic is not None and self._connected.is_set():
            self._client.subscribe(topic, qos=1)

    # -- pump ------------------------------------------------------------------------------------------------
    def _backoff(self, attempts: int) -> float:
        return float(min(self._reply_timeout * 2**attempts, self._reply_timeout_max))

    def _drain_acks(self) -> None:
        mids: list[int] = []
        while True:
            try:
                mids.append(self._acks.get_nowait())
            except queue.Empty:
                break
        # after the acks were taken: a PUBACK of a message published in on_connect cannot precede its entry here
        now = time.time()
        schedule: list[tuple[int, int, float]] = []
        while True:
            try:
                mid, message = self._reconnect_sent.get_nowait()
            except queue.Empty:
                break
            self._inflight[mid] = (message.id, True, True)
            schedule.append((message.id, message.attempts + 1, now + self._backoff(message.attempts + 1)))
        if schedule:
            self._buffer.republished(schedule)
            self._republished += len(schedule)
            self._recovery_changed = True
        delivered: list[int] = []
        kept: list[int] = []
        for mid in mids:
            entry = self._inflight.pop(mid, None)
            if entry is None:
                continue
            row, keep, again = entry
            if not keep:
                delivered.append(row)
            elif not again:
                kept.append(row)
            if not again:
                self._acknowledged += 1
        self._buffer.delete(delivered)
        self._buffer.await_reply(kept, now + self._reply_timeout)

    def _drain_answers(self) -> None:
        while True:
            try:
                device, reply = self._answers.get_nowait()
            except queue.Empty:
                return
            if reply.seq is None or not self._buffer.answered(ReplyKey(device, reply.seq, reply.digest or b"")):
                continue  # a reply for an event of another kind, or for a copy already answered
            self._recovery_changed = True
            if reply.stored:
                self._confirmed += 1
            else:
                self._refused += 1
                log.warning(
                    "the oracle refused event %d of %s (%s): it will not be sent again", reply.seq, device, reply.code
                )

    def _publish(self, message: BufferedMessage, again: bool) -> bool:
        if message.key is not None:
            self._subscribe_replies_of(message.topic)
        info = self._client.publish(message.topic, message.payload, qos=1, retain=False)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # NO_CONN still queues the message inside paho for the reconnect; anything else did not take it.
            log.warning("paho refused message %d (%s); retrying", message.id, mqtt.error_string(info.rc))
            return False
        self._inflight[info.mid] = (message.id, message.key is not None, again)
        return True

    def _republish_due(self) -> None:
        room = self._max_inflight - len(self._inflight)
        if room <= 0:
            return
        now = time.time()
        schedule: list[tuple[int, int, float]] = []
        for message in self._buffer.due(now, self._reply_attempts, room):
            if not self._publish(message, again=True):
                break
            attempts = message.attempts + 1
            schedule.append((message.id, attempts, now + self._backoff(attempts)))
            if attempts == self._reply_attempts:
                log.warning(
                    "no reply from the oracle for message %d after %d publications; it waits for the next connect",
                    message.id,
                    attempts + 1,
                )
        if schedule:
            self._buffer.republished(schedule)
            self._republished += len(schedule)
            self._recovery_changed = True

    def _fill_window(self) -> None:
        room = self._max_inflight - len(self._inflight)
        if room <= 0:
            return
        if self._recovery_changed:
            self._recovering = self._buffer.recovering()
            self._recovery_changed = False
        # held messages whose device has left recovery go first: they are older than anything not yet published
        for message_id in sorted(self._held):
            message = self._held[message_id]
            if message.key is not None and message.key.device in self._recovering:
                continue
            if room <= 0 or not self._publish(message, again=False):
                return
            del self._held[message_id]
            self._published += 1
            room -= 1
        if room <= 0:
            return
        waiting = self._recovering | {held.key.device for held in self._held.values() if held.key is not None}
        for message in self._buffer.peek(self._last_sent_id, room):
            if message.key is not None and message.key.device in waiting:
                self._held[message.id] = message  # behind an older message of its device
                self._last_sent_id = message.id
                continue
            if not self._publish(message, again=False):
                break
            self._last_sent_id = message.id
            self._published += 1

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(0.05)
            self._wake.clear()
            self._drain_acks()
            self._drain_answers()
            if self._connected.is_set():
                self._republish_due()
                self._fill_window()
            if not self._inflight and not self._held and not self._buffer.peek(self._last_sent_id, 1):
                self._idle.set()
            else:
                self._idle.clear()
        self._drain_acks()
        self._drain_answers()

    # -- public API ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background (retrying with back-off) and start publishing the buffer."""
        first = self._failover.current
        self._client.connect_async(first.host, first.port, keepalive=self._broker.keepalive)
        self._client.loop_start()
        self._pump = threading.Thread(target=self._run, name=f"publisher-{self._broker.client_id}", daemon=True)
        self._pump.start()

    def submit(self, topic: str, payload: bytes) -> int:
        """Store a message durably and schedule it; returns the buffer id. Safe from any thread."""
        return self._submit_one(topic, payload, reply_key(payload))

    def _submit_one(self, topic: str, payload: bytes, key: ReplyKey | None) -> int:
        message_id = self._buffer.push(topic, payload, key)
        self._idle.clear()
        self._wake.set()
        return message_id

    def submit_many(self, messages: Iterable[tuple[str, bytes]]) -> int:
        count = self._buffer.push_many((topic, payload, reply_key(payload)) for topic, payload in messages)
        if count:
            self._idle.clear()
            self._wake.set()
        return count

    def submit_event(self, event: SignedEvent) -> int:
        """Buffer a signed event on its device's events topic."""
        return self._submit_one(events_topic(event.chain_id, event.device), event.to_payload(), event_key(event))

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until the broker acknowledged everything buffered so far; False on timeout. Messages kept for the
        oracle's reply may still be buffered (``wait_answered``)."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while time.monotonic() < deadline:
            if self._idle.wait(min(0.05, max(0.0, deadline - time.monotonic()))) and self._buffer.counts()[0] == 0:
                return True
        return self._buffer.counts()[0] == 0

    def wait_answered(self, timeout: float) -> bool:
        """Wait until the buffer is empty: every message acknowledged by the broker and, for the kinds kept until
        the oracle's reply, answered; False on timeout."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while len(self._buffer) and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self._buffer) == 0

    @property
    def stats(self) -> PublisherStats:
        pending, awaiting = self._buffer.counts()
        return PublisherStats(
            connected=self._connected.is_set(),
            published=self._published,
            acknowledged=self._acknowledged,
            pending=pending,
            connects=self._connects,
            replies=self._replies,
            awaiting_reply=awaiting,
            confirmed=self._confirmed,
            refused=self._refused,
            republished=self._republished,
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
