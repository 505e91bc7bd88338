"""End to end: devices publish signed readings over MQTT at a fixed rate; the time until the chain shows them paid.

Pieces, all usable on their own (the smoke test drives them on the test stack):

- ``DaemonProcess``: the oracle daemon exactly as operators run it (``python -m iotsettle.cli.oracle run``, its own
  process, configured through ``IOTSETTLE_*``), with its CPU time read from /proc.
- ``Watcher``: a thread that follows the chain head and records, for each record of a ``ReadingsSettled`` batch
  log and each ``DeliveryConfirmed`` log, the wall-clock time its receipt became visible.
- ``publish_paced``: one device-side MQTT client publishing pre-signed payloads at a fixed offered rate (QoS 1).
- ``paid_latencies``: publish → paid per event. Meters sign their cumulative register, so a reading is paid once
  any reading of its agreement with the same or a higher seq has settled (the planner may settle only the newest
  reading of a window; the contract bills the delta). A delivery is paid when its own confirmation is mined.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import requests
from iotsettle.oracle.chain import logs as chain_logs
from iotsettle.oracle.chain.node import free_port
from iotsettle.oracle.chain.rpc import RpcClient
from iotsettle.oracle.protocol import settled as settled_log
from iotsettle.oracle.protocol.errors import IotSettleError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
Key = tuple[int, int]  # (agreement or escrow id, seq)


def process_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process and its reaped children (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class DaemonProcess:
    """``python -m iotsettle.cli.oracle run`` against the bench stack; ``stop()`` sends SIGTERM and waits for exit 0."""

    def __init__(
        self,
        state_dir: Path,
        rpc_url: str,
        deployments_dir: Path,
        mqtt_host: str,
        mqtt_port: int,
        relayer_key: str,
        **overrides: str,
    ) -> None:
        self.oracle_id = f"bench-{uuid.uuid4().hex[:6]}"
        self.health_port = free_port()
        self.log_file = state_dir / f"{self.oracle_id}.log"
        self.db = state_dir / f"{self.oracle_id}.db"
        empty = state_dir / "empty.toml"  # keeps a user's ./iotsettle.toml out of the daemon under test
        empty.write_text("")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IOTSETTLE_")},
            "IOTSETTLE_CONFIG": str(empty),
            "IOTSETTLE_CHAIN_RPC_URL": rpc_url,
            "IOTSETTLE_CHAIN_PRIVATE_KEY": relayer_key,
            "IOTSETTLE_PATHS_DEPLOYMENTS_DIR": str(deployments_dir),
            "IOTSETTLE_MQTT_HOST": mqtt_host,
            "IOTSETTLE_MQTT_PORT": str(mqtt_port),
            "IOTSETTLE_ORACLE_DB_PATH": str(self.db),
            "IOTSETTLE_ORACLE_CLIENT_ID": self.oracle_id,
            "IOTSETTLE_ORACLE_ORACLE_ID": self.oracle_id,
            "IOTSETTLE_ORACLE_HEALTH_PORT": str(self.health_port),
            # latency is measured per event: no window (the gas per reading received covers windows)
            "IOTSETTLE_ORACLE_SETTLEMENT_WINDOW": "0",
            **overrides,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self._output: Any = None

    def start(self) -> None:
        self._output = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iotsettle.cli.oracle", "run"],
            cwd=REPO,
            env=self.env,
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )

    def wait_running(self, timeout: float = 90.0) -> None:
        """Until the daemon's health endpoint says it is connected to the broker (start-up checks passed, registry
        followed, intake subscribed)."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.health_port}/health"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise IotSettleError(f"the oracle daemon exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                # any status code: /health answers 503 while a check is degraded, with the same JSON body
                answer = requests.get(url, timeout=2)
                if answer.json().get("checks", {}).get("mqtt", {}).get("status") == "ok":
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.1)
        raise IotSettleError(f"the oracle daemon did not start within {timeout:.0f} s: {self.log_tail()}")

    def cpu_seconds(self) -> float:
        """CPU of the daemon and its verification processes so far."""
        if self.proc is None:
            return 0.0
        return process_cpu_seconds(self.proc.pid) + sum(process_cpu_seconds(c) for c in child_pids(self.proc.pid))

    def log_tail(self, chars: int = 2_000) -> str:
        return self.log_file.read_text(errors="replace")[-chars:] if self.log_file.exists() else ""

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        if self._output is not None:
            self._output.close()
        return code


@dataclass
class Watcher:
    """Follows the chain head; records when each settlement log of the watched contracts became visible."""

    rpc_url: str
    topics: dict[str, str]  # topic0 → contract address (lowercase)
    interval: float = 0.01
    seen: dict[str, list[tuple[Key, float]]] = field(default_factory=dict)  # topic0 → [(key, when)]
    transactions: set[str] = field(default_factory=set)
    gas_used: int = 0

    def __post_init__(self) -> None:
        self.rpc = RpcClient(url=self.rpc_url, timeout=10)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.next_block = self.rpc.block_number() + 1
        self.seen = {topic: [] for topic in self.topics}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bench-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except (requests.RequestException, ValueError, IotSettleError) as exc:
                log.warning("watcher: %s", exc)
            self._stop.wait(self.interval)

    def poll(self) -> None:
        head = self.rpc.block_number()
        if head < self.next_block:
            return
        logs = chain_logs.scan(
            self.rpc, sorted(set(self.topics.values())), self.next_block, head, [sorted(self.topics)]
        )
        now = time.time()
        new_txs = {entry["transactionHash"] for entry in logs} - self.transactions
        receipts = [self.rpc.call("eth_getTransactionReceipt", [h]) for h in new_txs]
        with self._lock:
            for entry in logs:
                topic = entry["topics"][0].lower()
                if topic in self.seen and entry["address"].lower() == self.topics[topic]:
                    self.seen[topic] += [(key, now) for key in _settled_keys(entry)]
            self.transactions |= new_txs
            self.gas_used += sum(int(r["gasUsed"], 16) for r in receipts if r)
        self.next_block = head + 1

    def snapshot(self) -> tuple[dict[str, list[tuple[Key, float]]], int, int]:
        with self._lock:
            return {t: list(v) for t, v in self.seen.items()}, len(self.transactions), self.gas_used


@dataclass(frozen=True)
class Published:
    key: Key
    kind: str  # "reading" | "delivery"
    at: float


def _settled_keys(entry: dict[str, Any]) -> list[Key]:
    """(id, seq) of what one settlement log paid: every record of a ReadingsSettled batch log, or the indexed id
    (topics[1]) and the first data word (seq) of a per-item log."""
    if bytes.fromhex(entry["topics"][0][2:]) == settled_log.TOPIC:
        return [(r.agreement_id, r.seq) for r in settled_log.decode_log_data(bytes.fromhex(entry["data"][2:]))]
    return [(int(entry["topics"][1], 16), int(entry["data"][2:66], 16))]


def publish_paced(
    host: str, port: int, items: Sequence[tuple[str, bytes, Key, str]], rate: float | None
) -> list[Published]:
    """Publish ``(topic, payload, key, kind)`` items with QoS 1 at ``rate`` per second (None: as fast as the client
    goes); returns when each was handed to the client. Waits until the broker has acknowledged all of them."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-dev-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(5_000)
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    out: list[Published] = []
    infos = []
    try:
        start = time.time()
        for i, (topic, payload, key, kind) in enumerate(items):
            if rate:
                delay = start + i / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
            infos.append(client.publish(topic, payload, qos=1))
            out.append(Published(key, kind, time.time()))
        for info in infos:
            info.wait_for_publish(60)
    finally:
        client.disconnect()
        client.loop_stop()
    return out


def paid_latencies(
    published: Sequence[Published],
    seen: dict[str, list[tuple[Key, float]]],
    reading_topic: str,
    delivery_topic: str | None = None,
) -> list[float | None]:
    """Seconds from publish to paid for each published event (None: not paid yet)."""
    by_agreement: dict[int, list[tuple[int, float]]] = {}
    for (agreement, seq), when in sorted(seen.get(reading_topic, []), key=lambda item: item[1]):
        by_agreement.setdefault(agreement, []).append((seq, when))
    deliveries = dict(seen.get(delivery_topic, [])) if delivery_topic else {}
    out: list[float | None] = []
    for p in published:
        if p.kind == "delivery":
            when = deliveries.get(p.key)
        else:
            agreement, seq = p.key
            when = next((w for s, w in by_agreement.get(agreement, []) if s >= seq), None)
        out.append(None if when is None else max(0.0, when - p.at))
    return out


#: the daemon's own timestamps of a settled event, in order (events + settlement_tx tables of its store)
STAGES = (
    ("publish → received by the daemon (broker, MQTT client)", "published", "received_at"),
    ("received → settlement tx signed (intake, store, planner wait, batch build)", "received_at", "created_at"),
    ("tx signed → broadcast", "created_at", "sent_at"),
    ("broadcast → receipt read by the daemon (mining, tracker poll)", "sent_at", "settled_at"),
)


def stage_breakdown(db: Path, published: Sequence[Published]) -> dict[str, dict[str, float]]:
    """Where the time of the events settled in their own transaction went (p50 / p90 ms per stage), from the
    daemon's store; readings collapsed into a newer one of their agreement are not in it."""
    sent = {p.key: p.at for p in published if p.kind == "reading"}
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute(
                "SELECT e.target_id, e.seq, e.received_at, t.created_at, t.sent_at, e.settled_at FROM events e "
                "JOIN settlement_tx t ON t.tx_key = e.tx_key WHERE e.kind = 'reading' AND e.settled_at IS NOT NULL"
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        log.warning("no stage breakdown: %s", exc)
        return {}
    spans: dict[str, list[float]] = {label: [] for label, _, _ in STAGES}
    for target, seq, received, created, sent_at, settled in rows:
        at = sent.get((int(target), int(seq)))
        if at is None or None in (received, created, sent_at, settled):
            continue
        times = {
            "published": at,
            "received_at": received,
            "created_at": created,
            "sent_at": sent_at,
            "settled_at": settled,
        }
        for label, start, end in STAGES:
            spans[label].append(max(0.0, times[end] - times[start]))
    return {
        label: {
            "p50_ms": round(percentile(v, 50) * 1000, 1),
            "p90_ms": round(percentile(v, 90) * 1000, 1),
            "events": len(v),
        }
        for label, v in spans.items()
        if v
    }


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


@dataclass(frozen=True)
class LoadResult:
    """One fixed offered load (or a burst when ``offered_rate`` is None)."""

    offered_rate: float | None
    events: int
    publish_seconds: float
    paid: int
    paid_seconds: float  # first publish → last payment seen
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    onchain_items: int  # settlement logs during the phase (readings may be collapsed per agreement)
    transactions: int
    gas_used: int
    daemon_cpu_s: float
    stages: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def achieved_rate(self) -> float:
        return self.events / self.publish_seconds if self.publish_seconds else 0.0

    @property
    def paid_rate(self) -> float:
        return self.paid / self.paid_seconds if self.paid_seconds else 0.0

    @property
    def onchain_rate(self) -> float:
        return self.onchain_items / self.paid_seconds if self.paid_seconds else 0.0

    @property
    def all_paid(self) -> bool:
        return self.paid == self.events

    def as_dict(self) -> dict[str, Any]:
        return {
            "offered_rate": self.offered_rate,
            "events": self.events,
            "achieved_publish_rate": round(self.achieved_rate, 1),
            "paid": self.paid,
            "paid_seconds": round(self.paid_seconds, 3),
            "paid_events_per_s": round(self.paid_rate, 1),
            "onchain_items": self.onchain_items,
            "onchain_items_per_s": round(self.onchain_rate, 1),
            "transactions": self.transactions,
            "gas_used": self.gas_used,
            "latency_ms": {"p50": self.p50_ms, "p90": self.p90_ms, "p99": self.p99_ms, "max": self.max_ms},
            "daemon_cpu_s": round(self.daemon_cpu_s, 2),
            "daemon_cpu_us_per_event": round(self.daemon_cpu_s * 1e6 / self.events) if self.events else None,
            "stages": self.stages,
        }


def run_load(
    host: str,
    port: int,
    watcher: Watcher,
    items: Sequence[tuple[str, bytes, Key, str]],
    rate: float | None,
    reading_topic: str,
    delivery_topic: str | None = None,
    *,
    grace: float = 15.0,
    daemon: DaemonProcess | None = None,
) -> LoadResult:
    """Publish ``items`` at ``rate``, wait up to ``grace`` seconds after the last publish for every event to be paid,
    and summarise the latencies."""
    _, tx0, gas0 = watcher.snapshot()
    items0 = {t: len(v) for t, v in watcher.snapshot()[0].items()}
    cpu0 = daemon.cpu_seconds() if daemon else 0.0
    published = publish_paced(host, port, items, rate)
    deadline = time.time() + grace
    while True:
        seen, txs, gas = watcher.snapshot()
        latencies = paid_latencies(published, seen, reading_topic, delivery_topic)
        if all(x is not None for x in latencies) or time.time() > deadline:
            break
        time.sleep(0.05)
    cpu = (daemon.cpu_seconds() if daemon else 0.0) - cpu0
    paid = [x for x in latencies if x is not None]
    first = published[0].at if published else 0.0
    last_paid = max((p.at + x for p, x in zip(published, latencies, strict=True) if x is not None), default=first)

    everything = [math.inf if x is None else x for x in latencies]

    def ms(q: float) -> float | None:
        """None when more than (100 - q) % of the events were not paid within the grace period."""
        value = percentile(everything, q) if everything else math.inf
        return None if math.isinf(value) else round(value * 1000, 1)

    onchain = sum(len(v) - items0.get(t, 0) for t, v in seen.items())
    return LoadResult(
        offered_rate=rate,
        events=len(published),
        publish_seconds=(published[-1].at - first) if len(published) > 1 else 0.0,
        paid=len(paid),
        paid_seconds=last_paid - first,
        p50_ms=ms(50),
        p90_ms=ms(90),
        p99_ms=ms(99),
        max_ms=ms(100),
        onchain_items=onchain,
        transactions=txs - tx0,
        gas_used=gas - gas0,
        daemon_cpu_s=cpu,
        stages=stage_breakdown(daemon.db, published) if daemon else {},
    )
