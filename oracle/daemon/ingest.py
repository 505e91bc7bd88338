"""MQTT intake: receive signed device events, verify them, apply the fraud rules, store them durably, then ack.

Threads and processes:

- paho's network thread runs the callbacks; they only put ``(received_at, mid, qos, topic, payload)`` on a queue
  (``on_message``) or subscribe (``on_connect``, so a reconnect resubscribes).
- one intake thread takes batches off the queue (``batch_size`` or ``batch_latency_s``, whichever comes first),
  has them decoded and signature-checked (inline, or in ``verify_workers`` processes while it finishes the
  previous batch), applies chain/contract/registry checks and the rules in arrival order, commits the whole
  batch in ONE SQLite transaction, and only then acknowledges every message of the batch and answers each
  device on its replies topic.

A message is acknowledged only after its event (or its rejection) is committed, so a crash anywhere before that
leaves it unacknowledged and the broker redelivers it to the same client id (persistent session:
``clean_start=False`` + a session expiry). Redeliveries are answered "duplicate" and stored once.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import multiprocessing
import os
import queue
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from iotsettle.oracle.protocol import wire
from iotsettle.oracle.protocol.kinds import KINDS
from iotsettle.oracle.daemon.metrics import Metrics
from iotsettle.oracle.daemon.rules import Outcome, RuleSettings, Verdict, evaluate
from iotsettle.oracle.daemon.store import DeviceState, EventRecord, RegistryEntry, Rejection, Store
from iotsettle.oracle.protocol.errors import ProtocolError, SignatureError, StoreError
from iotsettle.oracle.protocol.reasons import Reason, Reply, encode_reply

log = logging.getLogger(__name__)

#: Crash tests only (tests/reliability/test_reliability_crash.py): IOTSETTLE_FAULT_POINT=before_store|after_store ends the process
#: with status 137, as kill -9 would, the first time that point is reached. Read once, at import.
_FAULT_POINT = os.environ.get("IOTSETTLE_FAULT_POINT", "")


@dataclass(frozen=True)
class IntakeSettings:
    """Everything the intake needs; ``service`` builds it from the configuration and the deployment manifest."""

    chain_id: int
    contracts: dict[str, str]  # wire event type ("reading", "telematics", ...) → verifying contract (checksummed)
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "iotsettle-oracle-1"
    username: str = ""
    password: str = field(default="", repr=False)
    keepalive: int = 30
    shared_group: str = ""  # MQTT 5 shared subscription group; "" = plain subscription
    session_expiry_s: int = 7 * 86_400  # how long the broker keeps the session (and queues events) while we are down
    receive_maximum: int = 4_096  # unacknowledged QoS 1 messages the broker may have in flight to us
    batch_size: int = 512
    batch_latency_s: float = 0.02
    verify_workers: int = 0  # processes for decode + signature checks; 0 = in the intake thread
    reply_qos: int = 0  # a lost reply makes the device retry and get "duplicate"; QoS 1 costs ~40 % of intake speed
    status_topic: str = ""  # retained online/offline status with a last will; "" = none
    status_payload: dict[str, Any] = field(default_factory=dict)  # extra fields of the status messages
    rules: RuleSettings = field(default_factory=RuleSettings)

    @property
    def subscription(self) -> str:
        topic = wire.events_filter(self.chain_id)
        return f"$share/{self.shared_group}/{topic}" if self.shared_group else topic


class Message(NamedTuple):
    received_at: float
    mid: int
    qos: int
    topic: str
    payload: bytes
    connection: int = 0  # which MQTT connection delivered it: packet ids are only meaningful on that one


class Refusal(NamedTuple):
    reason: str
    detail: str
    device: str | None = None
    seq: int | None = None
    digest: bytes | None = None


#: decode + signature result of one message: (None, event, signer) or (Refusal, None, None)
Checked = tuple[Refusal | None, wire.SignedEvent | None, str | None]


def _topic_parts(topic: str) -> tuple[str, str] | None:
    """(chain id text, device text) of ``iotsettle/v1/{chainId}/{device}/events``."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[4] != "events" or f"{parts[0]}/{parts[1]}" != wire.TOPIC_ROOT:
        return None
    return parts[2], parts[3]


def check_payload(topic: str, payload: bytes) -> Checked:
    """Decode, schema-check and verify one message; runs in a worker process when ``verify_workers`` > 0."""
    if len(payload) > wire.MAX_PAYLOAD_BYTES:
        return Refusal(Reason.OVERSIZE.value, f"{len(payload)} bytes, the limit is {wire.MAX_PAYLOAD_BYTES}"), None, None
    try:
        event = wire.decode(payload)
    except ProtocolError as exc:
        return Refusal(Reason.MALFORMED.value, str(exc)), None, None
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
        # A payload the schema check did not foresee costs one rejection, never the intake thread: the broker
        # would redeliver it after every restart and the oracle would take in nothing any more.
        log.error("the payload decoder failed on a message on %s (%s: %s); rejected as malformed", topic,
                  type(exc).__name__, exc)  # fmt: skip
        return Refusal(Reason.MALFORMED.value, "payload could not be read"), None, None
    where = _topic_parts(topic)
    # The topic's chain id is the one subscribed to; a payload signed for another chain is answered
    # "wrong_chain" (the more useful of the two codes it deserves) by the device checks.
    if where is None or where[1].lower() != event.device.lower():
        detail = f"payload of {event.device} arrived on {topic}"
        return Refusal(Reason.TOPIC_MISMATCH.value, detail, event.device, event.seq), None, None
    try:
        signer = event.signer()
    except SignatureError as exc:
        return Refusal(Reason.BAD_SIGNATURE.value, str(exc), event.device, event.seq, event.digest), None, None
    if signer != event.device:
        detail = f"signed by {signer}, claims {event.device}"
        return Refusal(Reason.BAD_SIGNATURE.value, detail, event.device, event.seq, event.digest), None, None
    return None, event, signer


def prefer_fast_keccak() -> None:
    """Hash with safe-pysha3's C keccak when it is installed (eth-hash's documented ETH_HASH_BACKEND switch).

    Verifying one event takes four keccak-256 hashes; through pycryptodome's wrapper each costs ~12 µs, through
    pysha3 ~3 µs. Takes effect when called before the process's first hash (the backend is chosen then).
    """
    if "ETH_HASH_BACKEND" not in os.environ and importlib.util.find_spec("sha3") is not None:
        os.environ["ETH_HASH_BACKEND"] = "pysha3"


def _worker_init() -> None:
    """Pool workers leave SIGINT/SIGTERM to the daemon, which drains through them before shutting them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    prefer_fast_keccak()


def _new_pool(workers: int) -> ProcessPoolExecutor:
    # spawn, not fork: paho and the store hold threads and locks a forked child must not inherit
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)


def check_payloads(items: Sequence[tuple[str, bytes]]) -> list[Checked]:
    return [check_payload(topic, payload) for topic, payload in items]


def replies_topic_for(topic: str) -> str | None:
    """The replies topic that pairs with the events topic a message came on."""
    return topic[: -len("events")] + "replies" if _topic_parts(topic) is not None else None


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

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - delegation to the wrapped socket
        return getattr(self._sock, name)


class _Client(mqtt.Client):
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
        if handler is None or (header & 0x06) >> 1 != 1 or not self._manual_ack or self._protocol != mqtt.MQTTv5:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        try:
            topic_end = 2 + int.from_bytes(packet[0:2], "big")
            topic = bytes(packet[2:topic_end]).decode("utf-8")
            mid = int.from_bytes(packet[topic_end : topic_end + 2], "big")
            position, length, shift = topic_end + 2, 0, 0
            while True:  # MQTT 5 property length (variable byte integer); the properties themselves are skipped
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

    def _create_socket(self) -> Any:  # noqa: ANN401 - paho's SocketLike
        sock = super()._create_socket()
        return _BufferedSocket(sock) if isinstance(sock, socket.socket) and not self._ssl else sock

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        """Read every packet already buffered before going back to ``select`` (one wait per socket read)."""
        rc = super().loop_read(max_packets)
        while rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and isinstance(self._sock, _BufferedSocket) and self._sock.pending():
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
        for topic, payload in items:
            name = topic.encode()
            _put_publish_header(packet, len(name), len(payload))
            packet += name
            packet += b"\x00"  # MQTT 5 property length: no properties
            packet += payload
        self._packet_queue(0x30, bytes(packet), 0, 0, mqtt.MQTTMessageInfo(0))


_PUBACK = struct.Struct("!BBH")


def _put_publish_header(packet: bytearray, topic_length: int, payload_length: int) -> None:
    """Fixed header of a QoS 0 PUBLISH, then the topic length (MQTT 5: + 1 byte of property length)."""
    remaining = 2 + topic_length + 1 + payload_length
    packet.append(0x30)
    while True:
        byte, remaining = remaining & 0x7F, remaining >> 7
        packet.append(byte | 0x80 if remaining else byte)
        if not remaining:
            break
    packet += topic_length.to_bytes(2, "big")


def accepted_reply(seq: int, digest: bytes) -> bytes:
    """``encode_reply(Reply.accepted(seq, digest))`` without building the Reply: the same bytes, on the hot path
    (a test checks they are equal)."""
    return b'{"v":1,"status":"accepted","seq":%d,"digest":"0x%s"}' % (seq, digest.hex().encode())


class Intake:
    """The MQTT → verified → stored → acknowledged pipeline. ``start()``, then ``stop()`` drains and disconnects."""

    def __init__(self, settings: IntakeSettings, store: Store, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics or Metrics()
        self._queue: queue.SimpleQueue[Message] = queue.SimpleQueue()
        #: called after a batch with accepted events is stored (the settler's ``wake``), so settlement need not poll
        self.on_stored: Callable[[], None] | None = None
        self._accepting = threading.Event()  # cleared on stop: later messages stay unacknowledged for redelivery
        self._stopped = threading.Event()
        self._connected = threading.Event()
        self._registry_dirty = threading.Event()
        self._registry: dict[str, RegistryEntry] = {}
        self._states: dict[str, DeviceState] = {}
        self._contracts = {kind: address.lower() for kind, address in settings.contracts.items()}
        self._pool: ProcessPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._last_error: str = ""
        # received - done = messages in this process not yet acknowledged; each counter has a single writer thread
        self._received = 0
        self._done = 0
        # bumped by each CONNACK (paho's thread only): a message is acknowledged only on the connection that
        # delivered it, since after a reconnect its packet id may name another message; the broker redelivers
        # the unacknowledged one on a resumed session and the intake answers it "duplicate"
        self._connection = 0
        self.client = self._make_client()

    # ---------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._registry = self.store.registry()
        self.metrics.registry_devices.set(sum(entry.active for entry in self._registry.values()))
        if self.settings.verify_workers > 0:
            self._pool = _new_pool(self.settings.verify_workers)
            self._pool.submit(check_payloads, []).result()  # pay the start-up cost before the first message
        self._accepting.set()
        self._thread = threading.Thread(target=self._run, name="intake", daemon=True)
        self._thread.start()
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.settings.session_expiry_s
        properties.ReceiveMaximum = self.settings.receive_maximum
        try:
            self.client.connect(
                self.settings.host, self.settings.port, self.settings.keepalive, clean_start=False,
                properties=properties,
            )  # fmt: skip
        except OSError as exc:
            # keep going: loop_start() retries until the broker is up, and health reports it meanwhile
            log.warning("broker %s:%d not reachable yet (%s); retrying", self.settings.host, self.settings.port, exc)
            self.client.connect_async(
                self.settings.host, self.settings.port, self.settings.keepalive, clean_start=False,
                properties=properties,
            )  # fmt: skip
        self.client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop taking messages, process and acknowledge everything already received, publish "offline" and
        disconnect. Returns False if the queue did not drain within ``timeout`` (what is left is redelivered)."""
        self._accepting.clear()
        self._stopped.set()
        drained = True
        if self._thread is not None:
            self._thread.join(timeout)
            drained = not self._thread.is_alive()
        if self.settings.status_topic and self._connected.is_set():
            info = self.client.publish(self.settings.status_topic, self._status("offline"), qos=1, retain=True)
            try:
                info.wait_for_publish(5)
            except RuntimeError as exc:
                log.warning("offline status not published: %s", exc)
        self.client.disconnect()
        self.client.loop_stop()
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        return drained

    def registry_changed(self) -> None:
        """The registry follower stored new registry entries; the intake thread reloads them before its next batch."""
        self._registry_dirty.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def backlog(self) -> int:
        """Messages received and not yet stored and acknowledged (queued or in the batch being processed)."""
        return self._received - self._done

    @property
    def last_error(self) -> str:
        return self._last_error

    # ------------------------------------------------------------------------------------------------- MQTT

    def _make_client(self) -> _Client:
        s = self.settings
        client = _Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=s.client_id, protocol=mqtt.MQTTv5, manual_ack=True
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
            log.error("broker refused the connection: %s", reason_code)
            return
        self._connection += 1
        log.info(
            "connected to %s:%d as %s (session present: %s); subscribing to %s",
            self.settings.host, self.settings.port, self.settings.client_id, flags.session_present,
            self.settings.subscription,
        )  # fmt: skip
        client.subscribe(self.settings.subscription, qos=1)

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
        if not self._stopped.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """QoS 0 events (a device that ignores the protocol) and anything the fast path left to paho."""
        if self._accepting.is_set():
            self._queue.put(Message(time.time(), message.mid, message.qos, message.topic, message.payload,
                                    self._connection))  # fmt: skip
            self._received += 1
            self.metrics.received.inc()

    def _on_publish(self, mid: int, topic: str, payload: bytes) -> None:
        """A QoS 1 event, from paho's network thread (``_Client._handle_publish``)."""
        if self._accepting.is_set():
            self._queue.put(Message(time.time(), mid, 1, topic, payload, self._connection))
            self._received += 1
            self.metrics.received.inc()

    # ----------------------------------------------------------------------------------------- intake thread

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # noqa: BLE001 - a bug must not vanish silently; health reports the dead thread
            self._last_error = f"intake thread stopped: {exc!r}"
            log.exception("intake thread stopped; unacknowledged messages will be redelivered after a restart")

    @property
    def alive(self) -> bool:
        """False once the intake thread has died (after start and before stop)."""
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        inflight: tuple[list[Message], Callable[[], list[Checked]]] | None = None
        while True:
            batch = self._take_batch(wait=inflight is None)
            submitted = (batch, self._submit(batch)) if batch else None
            if inflight is not None:
                self._finish(*inflight)
            inflight = submitted
            if inflight is None and self._stopped.is_set() and self._queue.empty():
                return

    def _take_batch(self, wait: bool) -> list[Message]:
        """Up to ``batch_size`` messages: the first one, then whatever arrives within ``batch_latency_s``.

        After the first message the thread sleeps in short naps instead of waiting on the queue: a waiting
        getter is woken (and takes the GIL from paho's network thread) on every single put, which at thousands
        of messages a second cost more than the work itself.
        """
        size, latency = self.settings.batch_size, self.settings.batch_latency_s
        try:
            # with a batch in the verification pool, look only briefly: that batch is waiting to be finished; with
            # none, wake only twice a second to see a stop request (an idle daemon should cost next to nothing)
            first = self._queue.get(timeout=0.5 if wait else min(latency, 0.05))
        except queue.Empty:
            return []
        deadline = time.monotonic() + latency
        nap = max(0.001, min(0.1, latency / 4))  # 0.1 s at most, so a stop request cuts a long window short
        while self._queue.qsize() < size - 1 and not self._stopped.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(nap, remaining))
        batch = [first]
        get = self._queue.get_nowait
        try:
            while len(batch) < size:
                batch.append(get())
        except queue.Empty:
            pass
        return batch

    def _submit(self, batch: list[Message]) -> Callable[[], list[Checked]]:
        """Start checking a batch; returns a function that yields the results in message order."""
        items = [(m.topic, m.payload) for m in batch]
        pool = self._pool
        if pool is None:
            return lambda: check_payloads(items)
        workers = self.settings.verify_workers
        step = max(1, -(-len(items) // workers))
        futures: list[Future[list[Checked]]] = [
            pool.submit(check_payloads, items[i : i + step]) for i in range(0, len(items), step)
        ]

        def collect() -> list[Checked]:
            try:
                return [result for future in futures for result in future.result()]
            except BrokenProcessPool:
                log.error("a verification process died; checking this batch inline and restarting the pool")
                self._pool = _new_pool(workers)
                return check_payloads(items)

        return collect

    def _finish(self, batch: list[Message], results: Callable[[], list[Checked]]) -> None:
        started = time.perf_counter()
        checked = results()
        if _FAULT_POINT == "before_store":
            os._exit(137)
        attempt = 0
        while True:
            try:
                outcomes = self._decide_and_store(batch, checked)
                break
            except StoreError as exc:
                attempt += 1
                self._states.clear()  # the cached states may be ahead of what is committed
                self.metrics.store_errors.inc()
                self._last_error = str(exc)
                log.error("intake batch of %d not stored (attempt %d): %s", len(batch), attempt, exc)
                if self._stopped.is_set() and attempt >= 3:
                    log.error("giving up on this batch at shutdown; the broker redelivers it")
                    self._done += len(batch)
                    return
                time.sleep(min(5.0, 0.1 * 2**attempt))
        self._last_error = ""
        if _FAULT_POINT == "after_store":
            os._exit(137)
        connection = self._connection
        self.client.ack_many([m.mid for m in batch if m.qos == 1 and m.connection == connection])
        self.metrics.acked.inc(len(batch))
        self._done += len(batch)
        if self.settings.reply_qos == 0:
            self.client.publish_many(outcomes)
        else:
            for topic, payload in outcomes:
                self.client.publish(topic, payload, qos=self.settings.reply_qos)
        self.metrics.intake_batch_size.observe(len(batch))
        self.metrics.intake_batch_seconds.observe(time.perf_counter() - started)

    def _decide_and_store(self, batch: list[Message], checked: list[Checked]) -> list[tuple[str, bytes]]:
        """Run the device checks and rules over the batch, commit it, and return the replies to send."""
        if self._registry_dirty.is_set():
            self._registry_dirty.clear()
            self._registry = self.store.registry()
            self.metrics.registry_devices.set(sum(entry.active for entry in self._registry.values()))
        settings = self.settings
        now = time.time()
        accepted: list[EventRecord] = []
        rejected: list[Rejection] = []
        states: dict[str, DeviceState] = {}
        batch_digests: dict[tuple[str, int], bytes] = {}
        replies: list[tuple[str, bytes]] = []
        verified = 0
        rejected_by: dict[str, int] = {}
        duplicates = 0

        def stored_digest(device: str, seq: int) -> bytes | None:
            return batch_digests.get((device, seq)) or self.store.accepted_digest(device, seq)

        for message, (refusal, event, signer) in zip(batch, checked, strict=True):
            reply_topic = replies_topic_for(message.topic)
            outcome = b""
            if event is not None and signer is not None:
                verified += 1
                refusal = self._device_check(event, signer)
                if refusal is None:
                    entry = self._registry[signer]
                    device = entry.device
                    state = states.get(device) or self._state(device)
                    try:
                        verdict = evaluate(event, device, entry.kind, state, now, settings.rules, stored_digest)
                    except (ArithmeticError, LookupError, TypeError, ValueError):
                        # a rule that trips over an event costs that event, never the intake thread (which the
                        # same message would stop again after every restart); logged in full to be fixed
                        log.exception("fraud rules failed on %s seq %d; rejected as malformed", device, event.seq)
                        verdict = Verdict(Outcome.REJECT, Reason.MALFORMED, "event could not be checked", state)
                    if verdict.state is not state:
                        states[device] = verdict.state
                        self._states[device] = verdict.state
                    if verdict.outcome is Outcome.ACCEPT:
                        accepted.append(_record(event, device, signer, message.received_at))
                        batch_digests[(device, event.seq)] = event.digest
                        outcome = accepted_reply(event.seq, event.digest)
                    elif verdict.outcome is Outcome.DUPLICATE:
                        duplicates += 1
                        outcome = encode_reply(Reply.duplicate(event.seq, event.digest))
                    else:
                        reason = verdict.reason or Reason.MALFORMED
                        refusal = Refusal(str(reason), verdict.detail, event.device, event.seq, event.digest)
            if refusal is not None:
                rejected.append(
                    # at most MAX_PAYLOAD_BYTES of it: the audit needs the start of an oversize payload, and storing
                    # all of it would let anyone fill the disk with what the broker accepts (256 MB by default)
                    Rejection(message.received_at, message.topic, refusal.reason, refusal.detail,
                              message.payload[: wire.MAX_PAYLOAD_BYTES], refusal.device, refusal.seq, refusal.digest)
                )  # fmt: skip
                rejected_by[refusal.reason] = rejected_by.get(refusal.reason, 0) + 1
                outcome = encode_reply(
                    Reply.rejected(refusal.seq, Reason(refusal.reason), refusal.detail or None, refusal.digest)
                )
                log.info("rejected %s on %s: %s", refusal.reason, message.topic, refusal.detail)
            if reply_topic is not None:
                replies.append((reply_topic, outcome))

        self.store.commit_batch(accepted, rejected, states.values())
        if accepted and self.on_stored is not None:
            self.on_stored()
        self.metrics.verified.inc(verified)
        self.metrics.stored.inc(len(accepted))
        self.metrics.duplicates.inc(duplicates)
        for reason, count in rejected_by.items():
            self.metrics.rejected.labels(reason=reason).inc(count)
        return replies

    def _device_check(self, event: wire.SignedEvent, signer: str) -> Refusal | None:
        if event.chain_id != self.settings.chain_id:
            return Refusal(
                Reason.WRONG_CHAIN.value, f"chain {event.chain_id}, this oracle serves {self.settings.chain_id}",
                event.device, event.seq, event.digest,
            )  # fmt: skip
        expected = self._contracts.get(event.type)
        if expected is None or event.contract.lower() != expected:
            return Refusal(
                Reason.WRONG_CONTRACT.value, f"{event.type} signed for {event.contract}, expected {expected}",
                event.device, event.seq, event.digest,
            )  # fmt: skip
        entry = self._registry.get(signer)
        if entry is None:
            return Refusal(
                Reason.UNKNOWN_DEVICE.value, f"{signer} is not registered", event.device, event.seq, event.digest
            )
        if not entry.active:
            return Refusal(
                Reason.REVOKED_DEVICE.value, f"key {signer} of device {entry.device} is revoked or rotated",
                event.device, event.seq, event.digest,
            )  # fmt: skip
        return None

    def _state(self, device: str) -> DeviceState:
        state = self._states.get(device)
        # a quarantined device is re-read each time: `iotsettle oracle release` clears it in the database
        if state is None or state.quarantined_at is not None:
            state = self.store.device_state(device) or DeviceState(device)
            self._states[device] = state
        return state


def _column_fields(kind: str) -> tuple[str | None, str | None, str | None, tuple[str, ...]]:
    """The signed fields stored in the columns value, location and max_temperature (None: not used), and in extra."""
    spec = KINDS[kind]
    own = {column: name for name, column in spec.own_columns}
    return own.get("value"), own.get("location"), own.get("max_temperature"), spec.extra_fields


#: wire type → ``_column_fields``, looked up once per event on the hot path
_COLUMN_FIELDS = {kind: _column_fields(kind) for kind in KINDS}


def _record(event: wire.SignedEvent, device: str, signer: str, received_at: float) -> EventRecord:
    """The stored form of an accepted event; which column holds which signed field comes from ``kinds.KINDS``."""
    msg = event.msg
    value, location, max_temperature, extra = _COLUMN_FIELDS[event.type]
    return EventRecord(
        event.type, device, signer, event.chain_id, event.contract, event.target_id, event.seq,
        int(msg["timestamp"]), msg[value] if value else None, msg[location] if location else None,
        msg[max_temperature] if max_temperature else None, event.digest, event.sig, received_at,
        extra=tuple((name, int(msg[name])) for name in extra) if extra else (),
    )  # fmt: skip
