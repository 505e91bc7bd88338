"""A simulated fleet's run: publish its planned events over MQTT at a chosen rate and count the oracle's replies."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from iotsettle.oracle.device.buffer import MEMORY, OfflineBuffer
from iotsettle.oracle.device.fleet import FaultClass, Fleet
from iotsettle.oracle.device.publisher import BrokerSettings, Publisher
from iotsettle.oracle.device.signer import Contracts
from iotsettle.oracle.device.sim.faults import InjectedFault
from iotsettle.oracle.device.sim.models import WeatherScenario, driving_style
from iotsettle.oracle.device.sim.plan import EventPlan, PlannedEvent, plan_events, sign_ahead
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.reasons import Reply
from iotsettle.oracle.protocol.wire import TOPIC_ROOT

log = logging.getLogger(__name__)

PREBUILD_LIMIT = 300_000  # events signed ahead of a run (about 450 bytes each)


@dataclass(frozen=True, slots=True)
class ProgressReport:
    elapsed: float
    submitted: int
    acknowledged: int
    pending: int
    rate: float  # events acknowledged per second over the last interval
    connected: bool


@dataclass(frozen=True)
class SimulationResult:
    seed: int
    devices: dict[str, int]
    target_rate: float
    duration: float
    planned: int
    submitted: int
    acknowledged: int
    unacknowledged: int
    publish_seconds: float  # start → last event handed to the publisher
    total_seconds: float  # start → everything acknowledged (or the flush timed out)
    by_type: dict[str, int]
    faults: list[InjectedFault]
    replies: dict[str, int]  # "accepted" and every rejection reason → count
    fault_replies: dict[str, list[str]]  # "<device>:<seq>" → reasons replied, for the injected faults
    weather: str = WeatherScenario.NORMAL.value
    driving_styles: dict[str, str] = field(default_factory=dict)  # vehicle address → style

    @property
    def achieved_rate(self) -> float:
        return self.acknowledged / self.total_seconds if self.total_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "devices": self.devices,
            "targetRate": self.target_rate,
            "durationSeconds": self.duration,
            "planned": self.planned,
            "submitted": self.submitted,
            "acknowledged": self.acknowledged,
            "unacknowledged": self.unacknowledged,
            "publishSeconds": round(self.publish_seconds, 3),
            "totalSeconds": round(self.total_seconds, 3),
            "achievedRate": round(self.achieved_rate, 1),
            "byType": self.by_type,
            "faults": [
                {
                    "class": str(item.fault),
                    "device": item.device,
                    "seq": item.seq,
                    "expect": item.expect,
                    "replied": self.fault_replies.get(f"{item.device.lower()}:{item.seq}", []),
                }
                for item in self.faults
            ],
            "replies": self.replies,
            "weather": self.weather,
            "drivingStyles": self.driving_styles,
        }


class _ReplyLog:
    """Collects the oracle's replies for the fleet's devices (called on paho's thread: only appends)."""

    def __init__(self, devices: set[str]) -> None:
        self._devices = {address.lower() for address in devices}
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.by_event: dict[str, list[str]] = {}

    def __call__(self, topic: str, reply: Reply) -> None:
        parts = topic.split("/")
        device = parts[3].lower() if len(parts) == 5 else ""
        if device not in self._devices:
            return
        label = reply.code
        with self._lock:
            self.counts[label] += 1
            if reply.seq is not None:
                self.by_event.setdefault(f"{device}:{reply.seq}", []).append(label)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())


def run_simulation(
    fleet: Fleet,
    contracts: Contracts,
    broker: BrokerSettings,
    *,
    rate: float,
    duration: float,
    seed: int = 1,
    start_time: int | None = None,
    faults: Sequence[FaultClass] = (),
    fault_count: int = 3,
    max_inflight: int = 1000,
    buffer_path: str = MEMORY,
    flush_timeout: float = 30.0,
    reply_wait: float = 2.0,
    progress: Callable[[ProgressReport], None] | None = None,
    announce: Callable[[str], None] | None = None,
    workers: int | None = None,
    weather: WeatherScenario | str = WeatherScenario.NORMAL,
) -> SimulationResult:
    """Publish the fleet's events at ``rate`` events/s for ``duration`` seconds and wait for the broker's acks.

    Replies from an oracle on ``iotsettle/v1/<chainId>/+/replies`` are counted for up to ``reply_wait`` seconds
    after the last acknowledgement (stopping early when none arrive at all). ``announce`` gets one-line news for
    people (the signing phase before the clock starts), ``progress`` a report about every second.
    """
    plan = plan_events(
        fleet,
        contracts,
        rate=rate,
        duration=duration,
        seed=seed,
        start_time=start_time,
        faults=faults,
        fault_count=fault_count,
        weather=weather,
    )
    replies = _ReplyLog({device.address for device in fleet.devices})
    buffer = OfflineBuffer(buffer_path, durable=buffer_path != MEMORY)
    publisher = Publisher(
        buffer,
        broker,
        max_inflight=max_inflight,
        reply_topics=[f"{TOPIC_ROOT}/{fleet.chain_id}/+/replies"],
        on_reply=replies,
    )
    by_type: Counter[str] = Counter()
    planned = submitted = 0
    # Signing is the expensive part (~0.3 ms an event): sign everything before the clock starts when it fits in
    # memory, so the publishing loop only hands bytes to paho and the rate holds.
    events: EventPlan | list[PlannedEvent] = plan
    if rate * duration <= PREBUILD_LIMIT:
        expected = int(rate * duration)
        processes = workers if workers is not None else (min(os.cpu_count() or 1, 4) if expected >= 5_000 else 1)
        if announce is not None:
            announce(f"signing about {expected} events before the clock starts ({processes} processes)")
        signing_started = time.monotonic()
        events = sign_ahead(plan, processes)
        log.info("signed %d events in %.1f s", len(events), time.monotonic() - signing_started)
    publisher.start()
    try:
        if not publisher.wait_connected(10.0):
            log.warning(
                "broker %s not reachable yet; events are buffered meanwhile", ", ".join(map(str, broker.endpoints))
            )
        started = time.monotonic()
        batch: list[tuple[str, bytes]] = []
        last_report, last_acked = started, 0
        for event in events:
            planned += 1
            normal = event.fault is None or event.fault.behaviour  # e.g. a hostile station's lies look normal
            by_type[event.event_type if normal else f"fault:{event.fault}"] += 1
            now = time.monotonic()
            if started + event.offset > now:
                if batch:
                    submitted += publisher.submit_many(batch)
                    batch = []
                while started + event.offset > (now := time.monotonic()):
                    if progress is not None and now - last_report >= 1.0:
                        last_report, last_acked = _report(
                            progress, publisher, started, now, last_report, last_acked, submitted
                        )
                    time.sleep(min(0.005, started + event.offset - now))
            batch.append((event.topic, event.payload))
            if len(batch) >= 200:
                submitted += publisher.submit_many(batch)
                batch = []
            if progress is not None and now - last_report >= 1.0:
                last_report, last_acked = _report(progress, publisher, started, now, last_report, last_acked, submitted)
        submitted += publisher.submit_many(batch)
        publish_seconds = time.monotonic() - started
        flush_deadline = time.monotonic() + flush_timeout
        while not publisher.flush(timeout=min(1.0, max(0.0, flush_deadline - time.monotonic()))):
            now = time.monotonic()
            if progress is not None:
                last_report, last_acked = _report(progress, publisher, started, now, last_report, last_acked, submitted)
            if now >= flush_deadline:
                break
        total_seconds = time.monotonic() - started
        _await_replies(replies, publisher.stats.acknowledged, reply_wait)
        stats = publisher.stats
    finally:
        publisher.stop()
        plan.close()
        buffer.close()
    return SimulationResult(
        seed=seed,
        devices=fleet.by_kind(),
        target_rate=rate,
        duration=duration,
        planned=planned,
        submitted=submitted,
        acknowledged=stats.acknowledged,
        unacknowledged=stats.pending,
        publish_seconds=publish_seconds,
        total_seconds=total_seconds,
        by_type=dict(by_type),
        faults=list(plan.injected),
        replies=dict(replies.counts),
        fault_replies={
            f"{item.device.lower()}:{item.seq}": replies.by_event.get(f"{item.device.lower()}:{item.seq}", [])
            for item in plan.injected
        },
        weather=str(WeatherScenario(weather)),
        driving_styles={
            device.address: str(driving_style(device, seed))
            for device in fleet.devices
            if device.kind is DeviceKind.VEHICLE
        },
    )


def _report(
    progress: Callable[[ProgressReport], None],
    publisher: Publisher,
    started: float,
    now: float,
    last_report: float,
    last_acked: int,
    submitted: int,
) -> tuple[float, int]:
    stats = publisher.stats
    interval = max(now - last_report, 1e-9)
    progress(
        ProgressReport(
            now - started,
            submitted,
            stats.acknowledged,
            stats.pending,
            (stats.acknowledged - last_acked) / interval,
            stats.connected,
        )
    )
    return now, stats.acknowledged


def _await_replies(replies: _ReplyLog, expected: int, wait: float) -> None:
    if wait <= 0:
        return
    deadline = time.monotonic() + wait
    quiet_since = time.monotonic()
    seen = replies.total
    while time.monotonic() < deadline and replies.total < expected:
        time.sleep(0.05)
        if replies.total != seen:
            seen, quiet_since = replies.total, time.monotonic()
        elif seen == 0 and time.monotonic() - quiet_since > min(1.0, wait):
            return
