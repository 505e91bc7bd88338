"""The events a simulated fleet signs, in the order a run publishes them.

Everything random comes from ``random.Random`` seeded with (seed, device address), and timestamps are
``start_time`` + the planned offset, so the same fleet, seed, start time and starting sequence numbers give
byte-identical payloads.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from iotsettle.oracle.device.fleet import FaultClass, Fleet, FleetDevice
from iotsettle.oracle.device.keys import MemoryCounter, SequenceCounter
from iotsettle.oracle.device.signer import Contracts, sign_event
from iotsettle.oracle.device.sim.faults import (
    EXPECTED_REASON,
    SPIKE_RATE,
    InjectedFault,
    choose_fault_devices,
    fault_event,
)
from iotsettle.oracle.device.sim.models import (
    MeterModel,
    TrackerModel,
    VehicleModel,
    WearableModel,
    WeatherScenario,
    WeatherStationModel,
    device_model,
)
from iotsettle.oracle.protocol.device_kinds import DeviceKind, kind_name
from iotsettle.oracle.protocol.errors import ConfigError
from iotsettle.oracle.protocol.location import geohash_encode, location_bytes32
from iotsettle.oracle.protocol.wire import SignedEvent, events_topic

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    """One payload to publish ``offset`` seconds after the start."""

    offset: float
    device: str
    event_type: str
    seq: int
    topic: str
    payload: bytes
    fault: FaultClass | None = None
    index: int = 0  # the device's place in the fleet (orders events with the same offset)


class DeviceRun:
    """The state of one device during a plan: model, counter, last normal event of each stream."""

    def __init__(
        self,
        device: FleetDevice,
        fleet: Fleet,
        contracts: Contracts,
        seed: int,
        counter: Any,
        weather: WeatherScenario = WeatherScenario.NORMAL,
        behaviours: tuple[FaultClass, ...] = (),
    ) -> None:
        self.device = device
        self.chain_id = fleet.chain_id
        self.contracts = contracts
        self.rng = random.Random(f"{seed}:{device.address}")
        self.behaviours = behaviours  # FaultClass.behaviour classes: how every event of the device is made
        self.model = device_model(
            device, self.rng, seed, weather, FaultClass.HOSTILE in behaviours, FaultClass.STATION_OUTLIER in behaviours
        )
        self.spike_armed = False  # a meter_spike is due at the next reading whose timestamp moves on
        self.spiked = False  # the reading just made carries it
        self.counter = counter
        self.topic = events_topic(fleet.chain_id, device.address)
        self.streams = device.streams
        self.last_event: SignedEvent | None = None
        self.last: dict[str, SignedEvent] = {}  # stream → last normal event
        self.steps = 0  # events scheduled so far (tie-break among this device's events)
        self.next_period = 0  # wearables: the first period not summarised yet

    @property
    def register(self) -> MeterModel | VehicleModel | WeatherStationModel:
        if isinstance(self.model, (TrackerModel, WearableModel)):
            raise ConfigError(f"{self.device.name} is a {kind_name(self.device.kind)}: it signs no readings")
        return self.model

    @property
    def wearable(self) -> WearableModel:
        if not isinstance(self.model, WearableModel):
            raise ConfigError(f"{self.device.name} is not a wearable: it signs no activity summaries")
        return self.model

    @property
    def tracker(self) -> TrackerModel:
        if not isinstance(self.model, TrackerModel):
            raise ConfigError(f"{self.device.name} is not a tracker: it signs readings, not deliveries")
        return self.model

    @property
    def vehicle(self) -> VehicleModel:
        if not isinstance(self.model, VehicleModel):
            raise ConfigError(f"{self.device.name} is not a vehicle: it signs no telematics")
        return self.model

    @property
    def station(self) -> WeatherStationModel:
        if not isinstance(self.model, WeatherStationModel):
            raise ConfigError(f"{self.device.name} is not a weather station: it signs no observations")
        return self.model

    def sign(self, event_type: str, msg: dict[str, Any], *, chain_id: int | None = None) -> SignedEvent:
        contract = self.contracts.for_type(event_type)
        return sign_event(self.device.key, event_type, chain_id or self.chain_id, contract, msg)

    def message(self, stream: str, timestamp: int, *, observe: bool = True) -> dict[str, Any]:
        """A normal message of ``stream`` at ``timestamp`` with the next sequence number.

        ``observe=False`` (for faults) leaves a station's running maximum temperature to the next real observation,
        and its sequence number too: weather seqs are gapless on chain, so a bad observation the oracle refuses takes
        the number the next real one reuses, instead of leaving a gap that would stall the station for good.
        """
        seq = self.counter.next() if observe or stream != "weather" else self.counter.peek
        if stream == "reading":
            last = self.last.get("reading")
            if self.spike_armed and isinstance(self.model, MeterModel) and last is not None:
                seconds = timestamp - int(last.msg["timestamp"])
                if seconds > 0:  # with none, any rise is an impossible rate
                    self.model.register_wh += SPIKE_RATE * seconds
                    self.spike_armed, self.spiked = False, True
            value = self.register.value_at(timestamp)
            return {"agreementId": self.device.targets[0], "seq": seq, "timestamp": timestamp, "value": value}
        if stream == "telematics":
            odometer, harsh, speeding = self.vehicle.counters_at(timestamp)
            return {
                "policyId": self.device.policy_id,
                "seq": seq,
                "timestamp": timestamp,
                "odometer": odometer,
                "harshBraking": harsh,
                "speeding": speeding,
            }
        if stream == "weather":
            rainfall, highest = (self.station.observe if observe else self.station.peek)(timestamp)
            return {
                "station": self.device.address,
                "seq": seq,
                "timestamp": timestamp,
                "rainfall": rainfall,
                "maxTemperature": highest,
            }
        raise ConfigError(f"{self.device.name}: no model for {stream} events")

    def summaries(self, timestamp: int) -> list[SignedEvent]:
        """A wearable's summaries of the periods of its policy that ended since its last one, signed at
        ``timestamp`` (none while the current period runs)."""
        cover = self.device.cover
        if cover is None:
            raise ConfigError(f"{self.device.name}: a wearable needs the cover of its policy")
        events = []
        while self.next_period < cover.finished(timestamp):
            period = self.next_period
            msg = {
                "policyId": self.device.policy_id,
                "seq": self.counter.next(),
                "timestamp": timestamp,
                "period": period,
                "tier": self.wearable.tier(cover, period),
            }
            event = self.sign("activity", msg)
            self.last["activity"] = self.last_event = event
            events.append(event)
            self.next_period += 1
        return events

    def report(self, timestamp: int) -> list[SignedEvent]:
        """One normal event per stream of the device (a reading, a telematics report, an observation), or a
        wearable's summaries of the periods that ended."""
        if "activity" in self.streams:
            return self.summaries(timestamp)
        events = []
        for stream in self.streams:
            event = self.sign(stream, self.message(stream, timestamp))
            self.last[stream] = self.last_event = event
            events.append(event)
        return events

    def delivery(self, escrow_id: int, timestamp: int, elapsed: float) -> SignedEvent:
        tracker = self.tracker
        location = geohash_encode(*tracker.position(elapsed), len(self.device.destination) or 7)
        msg = {
            "escrowId": escrow_id,
            "seq": self.counter.next(),
            "timestamp": timestamp,
            "location": location_bytes32(location),
            "maxTemperature": tracker.max_temperature_until(elapsed),
        }
        event = self.sign("delivery", msg)
        self.last["delivery"] = self.last_event = event
        return event


@dataclass
class EventPlan:
    """The ordered events of a run. Iterate once; payloads are signed as the iteration reaches them.

    Events are ordered by (offset, device's place in the fleet, device's own step), and each device's events
    depend only on its own random stream, so a plan restricted to some devices (``only``) yields exactly those
    devices' events of the whole plan: parts planned in parallel merge back into the same sequence.
    """

    fleet: Fleet
    contracts: Contracts
    rate: float
    duration: float
    seed: int
    start_time: int
    faults: Mapping[str, tuple[FaultClass, ...]] = field(default_factory=dict)
    fault_count: int = 3
    counters: str = "persistent"  # or "memory": every device starts at seq 1 and nothing is written
    only: frozenset[str] | None = None  # device addresses to plan; None = the whole fleet
    weather: WeatherScenario = WeatherScenario.NORMAL
    injected: list[InjectedFault] = field(default_factory=list)
    _runs: dict[int, DeviceRun] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.duration <= 0:
            raise ConfigError("rate and duration must be positive")
        readers = sum(1 for device in self.fleet.devices if device.kind is not DeviceKind.TRACKER)
        # Every reading device reports at the same pace, whatever part of the fleet this plan covers.
        self._period = readers / self.rate if readers else math.inf

    def _open(self) -> None:
        """Create the devices' models and open their counters, once, when the plan is first iterated."""
        if self._runs:
            return
        for index, device in enumerate(self.fleet.devices):
            if self.only is not None and device.address not in self.only:
                continue
            if self.counters == "memory" or device.counter_path is None:
                counter: Any = MemoryCounter()
            else:
                # A weather station's seqs must be gapless (CropInsurance takes seq = last + 1 only): it reserves
                # one number at a time, so a restart does not skip the rest of a reserved block.
                block = 1 if device.kind is DeviceKind.WEATHER_STATION else 1000
                counter = SequenceCounter(device.counter_path, device.address, block=block)
            behaviours = tuple(fault for fault in self.faults.get(device.address, ()) if fault.behaviour)
            self._runs[index] = DeviceRun(
                device, self.fleet, self.contracts, self.seed, counter, self.weather, behaviours
            )

    def close(self) -> None:
        for run in self._runs.values():
            run.counter.close()

    def _schedule(self) -> list[tuple[float, int, int, str, Any]]:
        """(offset, device index, device step, action, argument) for the start of the run."""
        self._open()
        heap: list[tuple[float, int, int, str, Any]] = []
        for index, run in self._runs.items():
            step = 0
            if run.device.kind is not DeviceKind.TRACKER:
                heap.append((run.rng.uniform(0.0, self._period), index, step, "reading", None))
                step += 1
            if isinstance(run.model, TrackerModel) and run.model.arrival_s < self.duration:
                for escrow_id in run.device.targets:
                    heap.append((run.model.arrival_s, index, step, "delivery", escrow_id))
                    step += 1
            event_faults = [fault for fault in self.faults.get(run.device.address, ()) if not fault.behaviour]
            for shift, fault in enumerate(event_faults):
                for k in range(self.fault_count):
                    if fault is FaultClass.TELEPORT:
                        offset = run.tracker.arrival_s + 1.0 + 2.0 * k
                    else:
                        offset = self.duration * (k + 1) / (self.fault_count + 1) + 0.137 * shift
                    if offset < self.duration:
                        heap.append((offset, index, step, "fault", fault))
                        step += 1
            run.steps = step
        heapq.heapify(heap)
        return heap

    def __iter__(self) -> Iterator[PlannedEvent]:
        heap = self._schedule()
        while heap:
            offset, index, _, action, argument = heapq.heappop(heap)
            run = self._runs[index]
            timestamp = self.start_time + int(offset)
            fault: FaultClass | None = None
            events: list[SignedEvent]
            if action == "reading":
                first_report = run.last_event is None
                events = run.report(timestamp)
                if first_report and events:
                    # A behaviour (a hostile station's lies, a lapsed vehicle's driving) is in every event; it is
                    # listed once, at the first.
                    for behaviour in run.behaviours:
                        fault = fault or behaviour
                        self.injected.append(
                            InjectedFault(behaviour, run.device.address, events[0].seq, EXPECTED_REASON[behaviour])
                        )
                if run.spiked:
                    run.spiked, fault = False, FaultClass.METER_SPIKE
                    self.injected.append(
                        InjectedFault(fault, run.device.address, events[0].seq, EXPECTED_REASON[fault])
                    )
                following = offset + self._period
                if following < self.duration:
                    heapq.heappush(heap, (following, index, run.steps, "reading", None))
                    run.steps += 1
            elif action == "delivery":
                events = [run.delivery(argument, timestamp, offset)]
            elif argument is FaultClass.METER_SPIKE:
                run.spike_armed = True  # carried by the device's next reading (listed then)
                continue
            else:
                fault = argument
                event = fault_event(run, argument, timestamp, offset)
                if event is None:
                    log.info("%s: no earlier event to build %s from; skipped", run.device.name, argument)
                    continue
                self.injected.append(InjectedFault(argument, run.device.address, event.seq, EXPECTED_REASON[argument]))
                events = [event]
            for position, event in enumerate(events):
                yield PlannedEvent(
                    offset,
                    run.device.address,
                    event.type,
                    event.seq,
                    run.topic,
                    event.to_payload(),
                    fault if position == 0 else None,
                    index,
                )


def _sign_part(plan: EventPlan) -> list[PlannedEvent]:
    """Worker process: sign one part of a plan (its devices' counters are opened and closed here)."""
    try:
        return list(plan)
    finally:
        plan.close()


def sign_ahead(plan: EventPlan, workers: int) -> list[PlannedEvent]:
    """Every event of ``plan`` signed now, using up to ``workers`` processes (devices split between them).

    The result is the same sequence a single process produces; signing is CPU-bound, so this scales with cores.
    """
    devices = [device.address for device in plan.fleet.devices]
    workers = max(1, min(workers, len(devices)))
    if workers == 1:
        try:
            return list(plan)
        finally:
            plan.close()
    if plan._runs:
        raise ConfigError("a plan that was already iterated cannot be signed again")
    parts = [replace(plan, only=frozenset(devices[i::workers]), injected=[], _runs={}) for i in range(workers)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        signed = list(pool.map(_sign_part, parts))
    merged = list(heapq.merge(*signed, key=lambda event: (event.offset, event.index)))
    plan.injected.extend(
        InjectedFault(event.fault, event.device, event.seq, EXPECTED_REASON[event.fault])
        for event in merged
        if event.fault is not None
    )
    return merged


def plan_events(
    fleet: Fleet,
    contracts: Contracts,
    *,
    rate: float,
    duration: float,
    seed: int,
    start_time: int | None = None,
    faults: Sequence[FaultClass] = (),
    fault_count: int = 3,
    counters: str = "persistent",
    weather: WeatherScenario | str = WeatherScenario.NORMAL,
) -> EventPlan:
    """The events a run would publish, in order (for dry runs, tests and firmware fixtures)."""
    for stream in sorted({stream for device in fleet.devices for stream in device.streams}):
        contracts.for_type(stream)  # a ConfigError now rather than in the middle of a run
    return EventPlan(
        fleet,
        contracts,
        rate,
        duration,
        seed,
        int(time.time()) if start_time is None else start_time,
        choose_fault_devices(fleet, faults, seed),
        fault_count,
        counters,
        weather=WeatherScenario(weather),
    )
