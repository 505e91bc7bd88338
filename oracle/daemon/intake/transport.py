"""The intake's MQTT side: one MQTT connection with a persistent session, and paho made cheaper on the hot path.

- ``Transport`` connects (MQTT 5: ``clean_start=False`` + a session expiry; MQTT 3.1.1, for brokers without MQTT 5:
  ``clean_session=False``, kept until the broker cleans it; either way the broker keeps and redelivers what was not
  acknowledged), subscribes inside ``on_connect`` (a reconnect resubscribes), publishes the retained
  online/offline status with a last will, and acknowledges and answers a stored batch. Its callbacks run on paho's
  network thread and only hand each message to ``deliver``.
- ``Client`` is paho's client (pinned 2.2.0) with its private packet handling overridden where the intake's
  throughput needed it: buffered socket reads, QoS 1 PUBLISH packets parsed straight into ``(mid, topic, payload)``,
  a batch's PUBACKs and QoS 0 replies as one queued write each.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from iotsettle.oracle.chain.broker import Failover
from iotsettle.oracle.config import BrokerEndpoint, BrokerTls
from iotsettle.oracle.daemon.metrics import Metrics
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)


class Message(NamedTuple):
    received_at: float
    mid: int
    qos: int
    topic: str
    payload: bytes
    connection: int = 0  # which MQTT connection delivered it: packet ids are only meaningful on that one


@dataclass(frozen=True)
class BrokerSettings:
    """The connection part of ``IntakeSettings``."""

    host: str
    port: int
    client_id: str
    username: str
    password: str = field(repr=False)
    keepalive: int
    subscription: str
    session_expiry_s: int
    receive_maximum: int
    status_topic: str  # retained online/offline status with a last will; "" = none
    status_payload: dict[str, Any]  # extra fields of the status messages
    protocol: str = "5"  # "5" or "3.1.1"
    brokers: tuple[BrokerEndpoint, ...] = ()  # failover order; () = host:port, TLS when tls names a CA or certificate
    tls: BrokerTls = field(default_factory=BrokerTls)
    peers: str = ""  # a second filter: the oracle instances' status topics (routing.peers_filter); "" = none

    @property
    def filters(self) -> list[tuple[str, int]]:
        return [(topic, 1) for topic in (self.subscription, self.peers) if topic]

    @property
    def v5(self) -> bool:
        return self.protocol == "5"

    @property
    def endpoints(self) -> tuple[BrokerEndpoint, ...]:
        return self.brokers or (BrokerEndpoint(self.host, self.port, self.tls.configured),)


#: the [mqtt] protocol values the intake speaks
MQTT_PROTOCOLS = ("5", "3.1.1")


class Transport:
    """The intake's MQTT connection. ``start()`` connects (retrying until the broker is up); ``stopping()`` then
    ``close()`` publish "offline" and disconnect."""

    def __init__(self, settings: BrokerSettings, deliver: Callable[[Message], None], metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._deliver = deliver
        self._connected = threading.Event()
        self._stopping = threading.Event()
        # bumped by each CONNACK (paho's thread only): a message is acknowledged only on the connection that
        # delivered it, since after a reconnect its packet id may name another message; the broker redelivers
        # the unacknowledged one on a resumed session and the intake answers it "duplicate"
        self._connection = 0
        self.client = self._make_client()
        self.failover = Failover(self.client, settings.endpoints, settings.tls, f"oracle client {settings.client_id}")

    def start(self) -> None:
        options: dict[str, Any] = {}
        if self.settings.v5:  # MQTT 3.1.1 takes clean_session=False at the client's creation instead
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.settings.session_expiry_s
            properties.ReceiveMaximum = self.settings.receive_maximum
            options = {"clean_start": False, "properties": properties}
        first = self.failover.current
        try:
            self.client.connect(first.host, first.port, self.settings.keepalive, **options)
        except OSError as exc:
            # keep going: loop_start() retries (the next broker of the list first) until one is up, and health
            # reports it meanwhile
            log.warning("broker %s not reachable yet (%s); retrying", first, exc)
            self.failover.disconnected()
            then = self.failover.current
            self.client.connect_async(then.host, then.port, self.settings.keepalive, **options)
        self.client.loop_start()

    def stopping(self) -> None:
        """The intake is stopping: a disconnect from now on is expected."""
        self._stopping.set()

    def close(self) -> None:
        """Publish the "offline" status (when connected) and disconnect."""
        if self.settings.status_topic and self._connected.is_set():
            info = self.client.publish(self.settings.status_topic, self._status("offline"), qos=1, retain=True)
            try:
                info.wait_for_publish(5)
            except RuntimeError as exc:
                log.warning("offline status not published: %s", exc)
        self.client.disconnect()
        self.client.loop_stop()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def acknowledge(self, batch: Sequence[Message]) -> None:
        """PUBACK the QoS 1 messages of a stored batch that came on the current connection (the others are
        redelivered on the resumed session)."""
        connection = self._connection
        self.client.ack_many([m.mid for m in batch if m.qos == 1 and m.connection == connection])

    def reply(self, replies: Sequence[tuple[str, bytes]], qos: int) -> None:
        """Answer the devices of a stored batch on their replies topics."""
        if qos == 0:
            self.client.publish_many(replies)
        else:
            for topic, payload in replies:
                self.client.publish(topic, payload, qos=qos)

    def _make_client(self) -> Client:
        s = self.settings
        if s.v5:
            client = Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=s.client_id, protocol=mqtt.MQTTv5, manual_ack=True
            )
        else:
            client = Client(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=s.client_id,
                protocol=mqtt.MQTTv311,
                clean_session=False,
                manual_ack=True,
            )
        if s.username:
            client.username_pw_set(s.username, s.password or None)
        # QoS 1 replies: paho does not honour the broker's Receive Maximum itself, and 20 is what brokers allow
        # by default (mosquitto's max_inflight_messages)
        client.max_inflight_messages_set(20)
        client.reconnect_delay_set(1, 30)
        if s.status_topic:
            client.will_set(s.status_topic, self._status("offline"), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.fast_publish = self._on_publish
        return client

    def _status(self, state: str) -> bytes:
        body = {"status": state, "clientId": self.settings.client_id, "time": int(time.time())}
        body.update(self.settings.status_payload)
        return json.dumps(body, separators=(",", ":")).encode()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("broker %s refused the connection: %s", self.failover.current, reason_code)
            return
        self.failover.connected()
        self._connection += 1
        log.info(
            "connected to %s as %s (session present: %s); subscribing to %s",
            self.failover.current,
            self.settings.client_id,
            flags.session_present,
            " + ".join(topic for topic, _ in self.settings.filters),
        )
        client.subscribe(self.settings.filters)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        failed = [code for code in reason_codes if code.is_failure]
        if failed:
            log.error("broker refused the subscription %s: %s", self.settings.subscription, failed)
            return
        # "online" only once the subscription is in place: from here on no published event is missed
        if self.settings.status_topic:
            client.publish(self.settings.status_topic, self._status("online"), qos=1, retain=True)
        self._connected.set()
        self.metrics.mqtt_connected.set(1)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connected.clear()
        self.metrics.mqtt_connected.set(0)
        if not self._stopping.is_set():
            log.warning("disconnected from the broker %s (%s); reconnecting", self.failover.current, reason_code)
            self.failover.disconnected()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """QoS 0 events (a device that ignores the protocol) and anything the fast path left to paho."""
        self._deliver(
            Message(time.time(), message.mid, message.qos, message.topic, bytes(message.payload), self._connection)
        )

    def _on_publish(self, mid: int, topic: str, payload: bytes) -> None:
        """A QoS 1 event, from paho's network thread (``Client._handle_publish``)."""
        self._deliver(Message(time.time(), mid, 1, topic, payload, self._connection))


class _BufferedSocket:
    """A plain TCP socket that reads up to 64 KiB per system call and hands paho its small reads from memory.

    paho's packet reader asks for 1 byte (header), 1-4 bytes (length) and then the body, each a ``recv`` system
    call, and runs ``select`` before every packet; at thousands of messages a second that was most of the intake
    thread's time. ``pending()`` is the hook paho already uses for TLS sockets: with bytes buffered it skips the
    select wait and reads on. Everything else is the wrapped socket's.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def recv(self, size: int) -> bytes:
        if not self._buffer:
            data = self._sock.recv(65_536)  # BlockingIOError when nothing is there: paho expects exactly that
            if len(data) <= size:
                return data
            self._buffer = data
        chunk, self._buffer = self._buffer[:size], self._buffer[size:]
        return chunk

    def pending(self) -> int:
        return len(self._buffer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class Client(mqtt.Client):
    """paho's client (pinned 2.2.0) with the intake's hot paths made cheaper; everything else is paho's own.

    - buffered socket reads (plain TCP only; TLS and websockets are left as paho makes them);
    - QoS 1 PUBLISH packets handed straight to ``fast_publish(mid, topic, payload)``: paho builds a Properties
      object, an MQTTMessage and a topic-matcher walk per message, which was most of its per-message cost; the
      intake needs none of them (it subscribes once, never uses topic aliases or publish properties);
    - a batch's PUBACKs and QoS 0 replies as one queued write each.
    """

    fast_publish: Callable[[int, str, bytes], None] | None = None

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        handler = self.fast_publish
        header = self._in_packet["command"]
        if handler is None or (header & 0x06) >> 1 != 1 or not self._manual_ack:
            return super()._handle_publish()
        v5 = self._protocol == mqtt.MQTTv5
        packet = self._in_packet["packet"]
        try:
            topic_end = 2 + int.from_bytes(packet[0:2], "big")
            topic = bytes(packet[2:topic_end]).decode("utf-8")
            mid = int.from_bytes(packet[topic_end : topic_end + 2], "big")
            position, length, shift = topic_end + 2, 0, 0
            while v5:  # MQTT 5 property length (variable byte integer); the properties themselves are skipped
                byte = packet[position]
                position += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise ValueError("property length longer than 4 bytes")
            start = position + length
            if mid == 0 or len(topic) + 2 != topic_end or start > len(packet):
                raise ValueError("inconsistent lengths")
        except (IndexError, ValueError, UnicodeDecodeError):
            return super()._handle_publish()  # malformed: let paho report it its own way
        handler(mid, topic, bytes(packet[start:]))
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS  # manual ack: the PUBACK is sent after the store commit

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        return _BufferedSocket(sock) if isinstance(sock, socket.socket) and not self._ssl else sock

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        """Read every packet already buffered before going back to ``select`` (one wait per socket read)."""
        rc = super().loop_read(max_packets)
        while (
            rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
            and isinstance(self._sock, _BufferedSocket)
            and self._sock.pending()
        ):
            rc = super().loop_read(max_packets)
        return rc

    def ack_many(self, mids: Sequence[int]) -> None:
        """PUBACK every QoS 1 message id in one queued write instead of one write (and one wake-up) per ack.

        An MQTT 5 PUBACK with reason "success" and no properties is the same 4 bytes paho sends; paho writes
        queued packets as opaque bytes, so a run of PUBACKs goes out as one buffer, in order.
        """
        if not mids:
            return
        packet = b"".join(_PUBACK.pack(0x40, 2, mid) for mid in mids)
        self._packet_queue(0x40, packet, 0, 0)

    def publish_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Publish QoS 0 messages (the replies of a batch) as one queued write and one wake-up of paho's loop.

        ``publish()`` per reply built a tracking object with its own locks and woke the network thread with a
        system call each time. QoS 0 needs no tracking: while disconnected the replies are dropped, as paho
        does; devices that miss one retry and get "duplicate".
        """
        if not items or not self.is_connected():
            return
        packet = bytearray()
        v5 = self._protocol == mqtt.MQTTv5
        for topic, payload in items:
            name = topic.encode()
            _put_publish_header(packet, len(name), len(payload) + v5)
            packet += name
            if v5:
                packet += b"\x00"  # MQTT 5 property length: no properties
            packet += payload
        self._packet_queue(0x30, bytes(packet), 0, 0, mqtt.MQTTMessageInfo(0))


_PUBACK = struct.Struct("!BBH")


def _put_publish_header(packet: bytearray, topic_length: int, rest_length: int) -> None:
    """Fixed header of a QoS 0 PUBLISH, then the topic length; ``rest_length``: what follows the topic (the
    payload, and in MQTT 5 one byte of property length before it)."""
    remaining = 2 + topic_length + rest_length
    packet.append(0x30)
    while True:
        byte, remaining = remaining & 0x7F, remaining >> 7
        packet.append(byte | 0x80 if remaining else byte)
        if not remaining:
            break
    packet += topic_length.to_bytes(2, "big")
