"""The intake pipeline: verify signed device events, apply the fraud rules, store them durably, then acknowledge.

Threads and processes:

- paho's network thread runs the transport's callbacks (``transport.Transport``); they only hand each message
  ``(received_at, mid, qos, topic, payload)`` to the queue here.
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

import dataclasses
import importlib.util
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from iotsettle.oracle.config import BrokerEndpoint, BrokerTls
from iotsettle.oracle.daemon.alerts import Alert, AlertSettings, AlertState, Context, detect, encode_alert
from iotsettle.oracle.daemon.intake.routing import Router, peers_filter
from iotsettle.oracle.daemon.intake.transport import BrokerSettings, Client, Message, Transport
from iotsettle.oracle.daemon.metrics import Metrics
from iotsettle.oracle.daemon.rules import Outcome, RuleSettings, Verdict, evaluate
from iotsettle.oracle.daemon.store import DeviceState, EventRecord, RegistryEntry, Rejection, Store, event_record
from iotsettle.oracle.protocol import wire
from iotsettle.oracle.protocol.errors import ProtocolError, SignatureError, StoreError
from iotsettle.oracle.protocol.kinds import KINDS
from iotsettle.oracle.protocol.reasons import Reason, Reply, encode_reply
from iotsettle.oracle.protocol.wire import alerts_topic

log = logging.getLogger(__name__)

#: Crash tests only (tests/reliability/test_reliability_crash.py): IOTSETTLE_FAULT_POINT=before_store|after_store
#: ends the process with status 137, as kill -9 would, the first time that point is reached. Read once, at import.
_FAULT_POINT = os.environ.get("IOTSETTLE_FAULT_POINT", "")


@dataclass(frozen=True)
class IntakeSettings:
    """Everything the intake needs; ``service`` builds it from the configuration and the deployment manifest."""

    chain_id: int
    contracts: dict[str, str]  # wire event type ("reading", "telematics", ...) → verifying contract (checksummed)
    #: when the daemon relays optimistically ([optimistic] enabled): the optimistic contracts' addresses (lower case)
    #: → the wire event type signed for each (OptimisticBilling: readings, OptimisticMotor: telematics); events signed
    #: for one are accepted too and stored for its optimistic relayer; empty = direct mode only
    optimistic: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "iotsettle-oracle-1"
    username: str = ""
    password: str = field(default="", repr=False)
    keepalive: int = 30
    protocol: str = "5"  # MQTT version: "5" or "3.1.1" (config [mqtt] protocol)
    shared_group: str = ""  # MQTT 5 shared subscription group; "" = plain subscription
    route_group: str = ""  # instances that split the devices among them (routing.py); "" = handle every event
    session_expiry_s: int = 7 * 86_400  # how long the broker keeps the session (and queues events) while we are down
    receive_maximum: int = 4_096  # unacknowledged QoS 1 messages the broker may have in flight to us
    batch_size: int = 512
    batch_latency_s: float = 0.02
    verify_workers: int = 0  # processes for decode + signature checks; 0 = in the intake thread
    # of cumulative kinds (readings, telematics): a lost reply costs nothing (the device deleted the event on the
    # broker's PUBACK); QoS 1 costs ~40 % of intake speed. The other kinds are always answered at QoS 1: the device
    # keeps each one until its reply, and publishes it again without one.
    reply_qos: int = 0
    status_topic: str = ""  # retained online/offline status with a last will; "" = none
    status_payload: dict[str, Any] = field(default_factory=dict)  # extra fields of the status messages
    brokers: tuple[BrokerEndpoint, ...] = ()  # failover order; () = host:port
    tls: BrokerTls = field(default_factory=BrokerTls)
    rules: RuleSettings = field(default_factory=RuleSettings)
    alerts: AlertSettings | None = field(default_factory=AlertSettings)  # None: no alert detectors

    @property
    def subscription(self) -> str:
        topic = wire.events_filter(self.chain_id)
        return f"$share/{self.shared_group}/{topic}" if self.shared_group else topic

    @property
    def broker(self) -> BrokerSettings:
        return BrokerSettings(
            self.host,
            self.port,
            self.client_id,
            self.username,
            self.password,
            self.keepalive,
            self.subscription,
            self.session_expiry_s,
            self.receive_maximum,
            self.status_topic,
            self.status_payload,
            self.protocol,
            self.brokers,
            self.tls,
            peers_filter(self.chain_id) if self.route_group else "",
        )


#: seconds between writes of the alert detectors' states (``Intake._unsaved``)
ALERT_STATE_FLUSH_S = 5.0


def _state_rows(states: dict[str, AlertState]) -> list[tuple[str, str, float | None, int | None]]:
    return [(a.device, a.to_json(), a.station_rate, a.station_time) for a in states.values()]


def _no_status(policy: int) -> int | None:
    return None


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
        return (
            Refusal(Reason.OVERSIZE.value, f"{len(payload)} bytes, the limit is {wire.MAX_PAYLOAD_BYTES}"),
            None,
            None,
        )
    try:
        event = wire.decode(payload)
    except ProtocolError as exc:
        return Refusal(Reason.MALFORMED.value, str(exc)), None, None
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
        # A payload the schema check did not foresee costs one rejection, never the intake thread: the broker
        # would redeliver it after every restart and the oracle would take in nothing any more.
        log.error(
            "the payload decoder failed on a message on %s (%s: %s); rejected as malformed",
            topic,
            type(exc).__name__,
            exc,
        )
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


def accepted_reply(seq: int, digest: bytes) -> bytes:
    """``encode_reply(Reply.accepted(seq, digest))`` without building the Reply: the same bytes, on the hot path
    (a test checks they are equal)."""
    return b'{"v":1,"status":"accepted","seq":%d,"digest":"0x%s"}' % (seq, digest.hex().encode())


#: a burst arriving when the intake window closes: how fast it must come (``batch_size // BURST_SHARE`` messages per
#: nap, a quarter of the window) and how many windows it may take in all (``Intake._take_batch``)
BURST_SHARE = 32
BURST_WINDOWS = 4


class Intake:
    """The MQTT → verified → stored → acknowledged pipeline. ``start()``, then ``stop()`` drains and disconnects."""

    def __init__(self, settings: IntakeSettings, store: Store, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics or Metrics()
        self._queue: queue.SimpleQueue[Message] = queue.SimpleQueue()
        #: called after a batch with accepted events is stored (the settler's ``wake``), so settlement need not poll
        self.on_stored: Callable[[], None] | None = None
        #: a policy's status on chain as last read (``PolicyWatch.status``), for the lapsed_driving detector
        self.policy_status: Callable[[int], int | None] = _no_status
        self._alert_states: dict[str, AlertState] = {}
        # detector states changed since they were last written: written with a batch every ALERT_STATE_FLUSH_S, with
        # any batch that raised an alert, and at stop (a crash loses a few seconds of baseline updates, no alert)
        self._unsaved: dict[str, AlertState] = {}
        self._saved_at = time.monotonic()
        self._station_rates: dict[str, tuple[float, int]] = {}
        self._accepting = threading.Event()  # cleared on stop: later messages stay unacknowledged for redelivery
        self._stopped = threading.Event()
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
        broker = settings.broker
        self.router: Router | None = None
        if settings.route_group:
            if not settings.status_topic:
                raise ValueError("a route group needs the instance's status topic")
            self.router = Router(settings.status_topic, settings.route_group, settings.chain_id)
            broker = dataclasses.replace(broker, status_payload={**broker.status_payload, **self.router.status_fields})
        self.transport = Transport(broker, self._receive, self.metrics)

    # ---------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._registry = self.store.registry()
        self._station_rates = self.store.station_rates()
        self.metrics.registry_devices.set(sum(entry.active for entry in self._registry.values()))
        if self.settings.verify_workers > 0:
            self._pool = _new_pool(self.settings.verify_workers)
            self._pool.submit(check_payloads, []).result()  # pay the start-up cost before the first message
        self._accepting.set()
        self._thread = threading.Thread(target=self._run, name="intake", daemon=True)
        self._thread.start()
        self.transport.start()

    def wait_connected(self, timeout: float) -> bool:
        return self.transport.wait_connected(timeout)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop taking messages, process and acknowledge everything already received, publish "offline" and
        disconnect. Returns False if the queue did not drain within ``timeout`` (what is left is redelivered)."""
        self._accepting.clear()
        self._stopped.set()
        self.transport.stopping()
        drained = True
        if self._thread is not None:
            self._thread.join(timeout)
            drained = not self._thread.is_alive()
        if drained and self._unsaved:
            try:
                self.store.add_alerts([], _state_rows(self._unsaved))
                self._unsaved = {}
            except StoreError as exc:
                log.warning("alert detector states not saved at stop: %s", exc)
        self.transport.close()
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        return drained

    def registry_changed(self) -> None:
        """The registry follower stored new registry entries; the intake thread reloads them before its next batch."""
        self._registry_dirty.set()

    @property
    def client(self) -> Client:
        """The MQTT client, for other replies to devices (a dead-lettered event's second answer)."""
        return self.transport.client

    @property
    def connected(self) -> bool:
        return self.transport.connected

    @property
    def backlog(self) -> int:
        """Messages received and not yet stored and acknowledged (queued or in the batch being processed)."""
        return self._received - self._done

    @property
    def last_error(self) -> str:
        return self._last_error

    def _receive(self, message: Message) -> None:
        """From paho's network thread: queue the message unless the intake is stopping (then it stays
        unacknowledged and the broker redelivers it)."""
        if self._accepting.is_set():
            if self.router is not None and self.router.is_status(message.topic):
                self.router.observe(message.topic, message.payload)
            self._queue.put(message)
            self._received += 1
            self.metrics.received.inc()

    # ----------------------------------------------------------------------------------------- intake thread

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:
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
            if batch and self.router is not None:
                batch = self._route(batch, self.router)
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

        A burst still pouring in when the window closes (a gateway flushing its buffer, a fleet reconnecting) is
        waited for once a nap has brought at least ``batch_size // BURST_SHARE`` messages, nap by nap until one brings
        none (its last stragglers come slower), for at most ``BURST_WINDOWS`` windows in all: cut in two, its second
        part would wait for the first one's verification and commit, and its readings would go on chain in
        transactions of their own (a few stragglers in a partial batch that waits ``batch_max_wait``). Steady loads
        below that rate (3,200 messages a second with the defaults) keep the window as it is.
        """
        size, latency = self.settings.batch_size, self.settings.batch_latency_s
        try:
            # with a batch in the verification pool, look only briefly: that batch is waiting to be finished; with
            # none, wake only twice a second to see a stop request (an idle daemon should cost next to nothing)
            first = self._queue.get(timeout=0.5 if wait else min(latency, 0.05))
        except queue.Empty:
            return []
        deadline = time.monotonic() + latency
        longest = deadline + (BURST_WINDOWS - 1) * latency
        nap = max(0.001, min(0.1, latency / 4))  # 0.1 s at most, so a stop request cuts a long window short
        burst = max(1, size // BURST_SHARE)
        queued = self._queue.qsize()
        pouring = False  # a nap brought a burst's rate
        while queued < size - 1 and not self._stopped.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(nap, remaining))
            arrived, queued = self._queue.qsize() - queued, self._queue.qsize()
            pouring = pouring or arrived >= burst
            if pouring and arrived and deadline - time.monotonic() < nap:
                deadline = min(longest, deadline + nap)
        batch = [first]
        get = self._queue.get_nowait
        try:
            while len(batch) < size:
                batch.append(get())
        except queue.Empty:
            pass
        return batch

    def _route(self, batch: list[Message], router: Router) -> list[Message]:
        """The messages of the devices this instance owns; the others' (and the status messages) are acknowledged
        at once, unread and unanswered: their owner answers them."""
        while not router.wait_ready(0.5):  # until then we do not know who else is online
            if self._stopped.is_set():
                self._done += len(batch)  # unacknowledged: redelivered after a restart
                return []
        owned: list[Message] = []
        others: list[Message] = []
        for message in batch:
            topic = message.topic
            where = None if router.is_status(topic) else _topic_parts(topic)
            (owned if where is not None and router.owns(where[1].lower()) else others).append(message)
        if others:
            self.transport.acknowledge(others)
            self._done += len(others)
            self.metrics.routed_away.inc(len(others))
        return owned

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
                self._alert_states.clear()
                self._unsaved.clear()
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
        self.transport.acknowledge(batch)
        self.metrics.acked.inc(len(batch))
        self._done += len(batch)
        replies, kept_replies, raised = outcomes
        self.transport.reply(replies, self.settings.reply_qos)
        self.transport.reply(kept_replies, 1)
        if raised:
            topic = alerts_topic(self.settings.chain_id)
            self.transport.reply([(topic, encode_alert(alert)) for alert in raised], 1)
        self.metrics.intake_batch_size.observe(len(batch))
        self.metrics.intake_batch_seconds.observe(time.perf_counter() - started)

    def _decide_and_store(
        self, batch: list[Message], checked: list[Checked]
    ) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]], list[Alert]]:
        """Run the device checks, rules and alert detectors over the batch, commit it, and return the replies to
        send: those of cumulative kinds (and unreadable payloads) at ``reply_qos``, those of the kinds a device
        keeps until its reply at QoS 1; and the alerts raised, with their store ids."""
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
        kept_replies: list[tuple[str, bytes]] = []
        verified = 0
        rejected_by: dict[str, int] = {}
        duplicates = 0
        alert_settings = settings.alerts
        context = Context(self.policy_status, self._station_rates)
        raised: list[Alert] = []
        alert_states: dict[str, AlertState] = {}

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
                        accepted.append(event_record(event, device, signer, message.received_at))
                        batch_digests[(device, event.seq)] = event.digest
                        outcome = accepted_reply(event.seq, event.digest)
                        if alert_settings is not None:
                            self._detect(event, entry.kind, state, now, alert_settings, context, raised, alert_states)
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
                    Rejection(
                        message.received_at,
                        message.topic,
                        refusal.reason,
                        refusal.detail,
                        message.payload[: wire.MAX_PAYLOAD_BYTES],
                        refusal.device,
                        refusal.seq,
                        refusal.digest,
                    )
                )
                rejected_by[refusal.reason] = rejected_by.get(refusal.reason, 0) + 1
                outcome = encode_reply(
                    Reply.rejected(refusal.seq, Reason(refusal.reason), refusal.detail or None, refusal.digest)
                )
                log.info("rejected %s on %s: %s", refusal.reason, message.topic, refusal.detail)
            if reply_topic is not None:
                kept = event is not None and not KINDS[event.type].cumulative
                (kept_replies if kept else replies).append((reply_topic, outcome))

        self._unsaved.update(alert_states)
        flush = bool(raised) or time.monotonic() - self._saved_at >= ALERT_STATE_FLUSH_S
        with self.store.transaction():
            self.store.commit_batch(accepted, rejected, states.values(), optimistic=tuple(self.settings.optimistic))
            if raised or (flush and self._unsaved):
                ids = self.store.add_alerts([alert.row() for alert in raised], _state_rows(self._unsaved))
                raised = [replace(alert, id=alert_id) for alert, alert_id in zip(raised, ids, strict=True)]
        if flush:
            self._unsaved, self._saved_at = {}, time.monotonic()
        for alert_state in alert_states.values():
            if alert_state.station_rate is not None and alert_state.station_time is not None:
                self._station_rates[alert_state.device] = (alert_state.station_rate, alert_state.station_time)
        for alert in raised:
            self.metrics.alerts.labels(kind=str(alert.kind)).inc()
            log.warning("alert %s: %s seq %d: %s", alert.kind, alert.device, alert.seq, alert.detail)
        if accepted and self.on_stored is not None:
            self.on_stored()
        self.metrics.verified.inc(verified)
        self.metrics.stored.inc(len(accepted))
        self.metrics.duplicates.inc(duplicates)
        for reason_name, count in rejected_by.items():
            self.metrics.rejected.labels(reason=reason_name).inc(count)
        return replies, kept_replies, raised

    def _detect(
        self,
        event: wire.SignedEvent,
        kind: int,
        before: DeviceState,
        now: float,
        settings: AlertSettings,
        context: Context,
        raised: list[Alert],
        states: dict[str, AlertState],
    ) -> None:
        """Run the alert detectors on an accepted event. Never fails the batch: a detector that trips over an
        event is logged and counted, and the event is stored all the same."""
        device = before.device
        state = states.get(device) or self._alert_state(device)
        try:
            alerts, after = detect(event, device, kind, before, state, now, settings, context)
        except Exception:
            log.exception("alert detectors failed on %s seq %d; the event is stored without them", device, event.seq)
            self.metrics.alert_errors.inc()
            return
        raised += alerts
        if after is not state:
            states[device] = after
            self._alert_states[device] = after

    def _alert_state(self, device: str) -> AlertState:
        state = self._alert_states.get(device)
        if state is None:
            row = self.store.alert_state(device)
            state = AlertState(device) if row is None else AlertState.from_row(*row)
            self._alert_states[device] = state
        return state

    def _device_check(self, event: wire.SignedEvent, signer: str) -> Refusal | None:
        if event.chain_id != self.settings.chain_id:
            return Refusal(
                Reason.WRONG_CHAIN.value,
                f"chain {event.chain_id}, this oracle serves {self.settings.chain_id}",
                event.device,
                event.seq,
                event.digest,
            )
        expected = self._contracts.get(event.type)
        optimistic = self.settings.optimistic.get(event.contract.lower()) == event.type
        if (expected is None or event.contract.lower() != expected) and not optimistic:
            return Refusal(
                Reason.WRONG_CONTRACT.value,
                f"{event.type} signed for {event.contract}, expected {expected}",
                event.device,
                event.seq,
                event.digest,
            )
        entry = self._registry.get(signer)
        if entry is None:
            return Refusal(
                Reason.UNKNOWN_DEVICE.value, f"{signer} is not registered", event.device, event.seq, event.digest
            )
        if not entry.active:
            return Refusal(
                Reason.REVOKED_DEVICE.value,
                f"key {signer} of device {entry.device} is revoked or rotated",
                event.device,
                event.seq,
                event.digest,
            )
        return None

    def _state(self, device: str) -> DeviceState:
        state = self._states.get(device)
        # a quarantined device is re-read each time: `iotsettle oracle release` clears it in the database
        if state is None or state.quarantined_at is not None:
            state = self.store.device_state(device) or DeviceState(device)
            self._states[device] = state
        return state
