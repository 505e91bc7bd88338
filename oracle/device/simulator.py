"""A fleet of simulated devices that sign realistic events and publish them over MQTT at a chosen rate.

- meters: a cumulative energy register (Wh) driven by a daily load curve (night base load, morning and evening
  peaks, appliance spikes, multiplicative noise);
- vehicles: an odometer (metres) that advances while driving; trips and parking alternate, speed wanders around a
  cruise speed; a driving style (calm / average / aggressive) sets how many harsh-braking events and speeding
  episodes happen per 100 km, counted in cumulative registers that start at 0 (a unit installed with the policy).
  A vehicle signs readings of its odometer for a billing agreement and/or telematics reports for a motor policy;
- weather stations: a cumulative rainfall register (hundredths of a millimetre) from rain showers that start and
  stop at random, heavier in the warm afternoon of a modelled air temperature, under a weather scenario (normal,
  drought, heatwave); a station signs weather observations (rainfall and the highest temperature since its
  previous observation), or readings of its rainfall register if its fleet entry names an agreement;
- trackers: a parcel moving along its route at its speed inside a reefer whose temperature wanders around a set
  point with door-open excursions; on reaching the destination it signs one Delivery per escrow with the
  highest temperature seen (centi-°C).

Everything random comes from ``random.Random`` seeded with (seed, device address), and timestamps are
``start_time`` + the planned offset, so the same fleet, seed, start time and starting sequence numbers give
byte-identical payloads. A register's value is sampled at whole seconds (the timestamp's resolution), so
readings within one second repeat the value and the rate rules see no growth without elapsed time.

Faults (``FaultClass``) are extra events of a chosen device, each built to be refused with the reason of the same
name (``behaviour_rollback``: ``counter_rollback``); the run's result lists every one with its (device, seq) so a
test can check the oracle's replies. ``hostile`` is no extra event but a station whose every observation lies
plausibly: the oracle accepts them (expected reply "accepted", listed once at its first observation) and the crop
season's k-of-n vote outweighs it.
"""

from __future__ import annotations

import heapq
import logging
import os
import math
import random
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from iotsettle.oracle.device.buffer import MEMORY, OfflineBuffer
from iotsettle.oracle.device.fleet import DrivingStyle, FaultClass, Fleet, FleetDevice
from iotsettle.oracle.device.keys import MemoryCounter, SequenceCounter
from iotsettle.oracle.protocol.location import geohash_encode, location_bytes32
from iotsettle.oracle.device.publisher import BrokerSettings, Publisher
from iotsettle.oracle.device.signer import Contracts, sign_event
from iotsettle.oracle.protocol.eip712 import DeviceKind
from iotsettle.oracle.protocol.errors import ConfigError
from iotsettle.oracle.protocol.reasons import Reply
from iotsettle.oracle.protocol.wire import SignedEvent, TOPIC_ROOT, events_topic

log = logging.getLogger(__name__)

#: the oracle's reply each fault class must produce (a hostile station's lies are plausible: accepted)
EXPECTED_REASON: dict[FaultClass, str] = {
    **{fault: fault.value for fault in FaultClass},
    FaultClass.BEHAVIOUR_ROLLBACK: "counter_rollback",
    FaultClass.HOSTILE: "accepted",
}
CLOCK_SKEW_SECONDS = 3_600  # far beyond the oracle's default tolerance of 300 s
IMPOSSIBLE_JUMP = 10_000_000_000  # register units in ~1 s: above every kind's plausible rate, still a uint64
PREBUILD_LIMIT = 300_000  # events signed ahead of a run (about 450 bytes each)


# ------------------------------------------------------------------------------------------------- models


class MeterModel:
    """Cumulative energy register in Wh."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.base_w = rng.uniform(250.0, 600.0)
        self.peak_w = rng.uniform(1_500.0, 6_000.0)
        self.utc_offset_h = rng.uniform(-3.0, 3.0)
        self.register_wh = rng.uniform(1e5, 5e6)
        self._t: int | None = None

    def power_w(self, t: int) -> float:
        hour = (t / 3600.0 + self.utc_offset_h) % 24.0
        morning = math.exp(-(((hour - 7.5) / 1.2) ** 2) / 2)
        evening = math.exp(-(((hour - 19.0) / 1.8) ** 2) / 2)
        power = self.base_w + self.peak_w * (0.45 * morning + evening)
        if self._rng.random() < 0.02:  # kettle, oven, washing machine
            power += self._rng.uniform(1_000.0, 2_500.0)
        return max(0.0, power * (1.0 + self._rng.gauss(0.0, 0.08)))

    def value_at(self, t: int) -> int:
        if self._t is None:
            self._t = t
        while self._t < t:
            step = min(60, t - self._t)
            self.register_wh += self.power_w(self._t) * step / 3600.0
            self._t += step
        return int(self.register_wh)


#: (harsh-braking events, speeding episodes) per 100 km driven, by driving style. Fleet studies put typical drivers
#: at a few of each per 100 km and aggressive ones at a few tens; "reckless" (about one event per kilometre) is
#: there so a demo of a minute, in which a vehicle drives a kilometre or so, shows the factor move.
STYLE_RATES: dict[DrivingStyle, tuple[float, float]] = {
    DrivingStyle.CALM: (1.0, 0.5),
    DrivingStyle.AVERAGE: (6.0, 5.0),
    DrivingStyle.AGGRESSIVE: (30.0, 25.0),
    DrivingStyle.RECKLESS: (120.0, 80.0),
}
#: how often each style is drawn for a vehicle whose fleet entry does not fix one
STYLE_WEIGHTS: dict[DrivingStyle, float] = {DrivingStyle.CALM: 0.35, DrivingStyle.AVERAGE: 0.45,
                                            DrivingStyle.AGGRESSIVE: 0.20}
SPEEDING_FACTOR = 1.3  # speed over the cruise speed during a speeding episode


def driving_style(device: FleetDevice, seed: int) -> DrivingStyle:
    """The vehicle's style: its fleet entry's, else drawn from (seed, address) — the same in every run."""
    if device.driving_style is not None:
        return device.driving_style
    rng = random.Random(f"{seed}:{device.address}:style")
    styles = list(STYLE_WEIGHTS)
    return rng.choices(styles, weights=[STYLE_WEIGHTS[style] for style in styles])[0]


class VehicleModel:
    """Odometer in metres, cumulative counts of harsh-braking events and speeding episodes, trips."""

    def __init__(self, rng: random.Random, style: DrivingStyle = DrivingStyle.AVERAGE) -> None:
        self._rng = rng
        self.style = style
        self.odometer_m = rng.uniform(5e6, 2e8)
        self.cruise = rng.uniform(10.0, 30.0)
        self.speed = 0.0
        # A telematics unit reports from ignition on: the run starts on a trip, parking comes later.
        self.driving = True
        self._phase_left = rng.uniform(60.0, 240.0)
        self.trips = 1
        self.harsh_brakes = 0
        self.speeding = 0
        self._speeding_left = 0.0
        harsh_per_100km, speeding_per_100km = STYLE_RATES[style]
        self._harsh_per_m = harsh_per_100km / 100_000
        self._speeding_per_m = speeding_per_100km / 100_000
        self._t: int | None = None

    def _second(self) -> None:
        rng = self._rng
        self._phase_left -= 1
        if self._phase_left <= 0:
            self.driving = not self.driving
            self._phase_left = rng.uniform(40.0, 240.0) if self.driving else rng.uniform(20.0, 120.0)
            self.trips += self.driving
        if not self.driving:
            self.speed = max(0.0, self.speed - 4.0)
            self._speeding_left = 0.0
            return
        target = self.cruise * (SPEEDING_FACTOR if self._speeding_left > 0 else 1.0)
        self.speed += 0.2 * (target - self.speed) + rng.gauss(0.0, 0.8)
        # Events are rates per distance: the chance this second is the metres driven times the rate per metre.
        if rng.random() < self.speed * self._harsh_per_m:
            self.speed *= 0.3
            self.harsh_brakes += 1
        if self._speeding_left > 0:
            self._speeding_left -= 1
        elif rng.random() < self.speed * self._speeding_per_m:
            self.speeding += 1
            self._speeding_left = rng.uniform(5.0, 30.0)
        self.speed = min(max(self.speed, 0.0), 45.0)
        self.odometer_m += self.speed

    def _advance(self, t: int) -> None:
        if self._t is None:
            self._t = t
        while self._t < t:
            self._second()
            self._t += 1

    def value_at(self, t: int) -> int:
        self._advance(t)
        return int(self.odometer_m)

    def counters_at(self, t: int) -> tuple[int, int, int]:
        """(odometer metres, harsh-braking events, speeding episodes) at ``t``."""
        self._advance(t)
        return int(self.odometer_m), self.harsh_brakes, self.speeding


class WeatherScenario(StrEnum):
    """The weather the honest stations of a run report."""

    NORMAL = "normal"
    DROUGHT = "drought"
    HEATWAVE = "heatwave"


@dataclass(frozen=True, slots=True)
class Climate:
    mean_c: tuple[float, float]  # daily mean temperature drawn from this range (°C)
    amplitude_c: float  # half the day-night swing
    rain_start_per_s: float  # chance a shower starts in a second (×3 in the warmest hour)
    rain_stop_per_s: float
    raining_at_start: float  # chance it is raining when the run starts
    intensity_mm_h: tuple[float, float]


CLIMATES: dict[WeatherScenario, Climate] = {
    WeatherScenario.NORMAL: Climate((12.0, 28.0), 6.0, 1 / 900, 1 / 300, 0.3, (0.5, 25.0)),
    WeatherScenario.DROUGHT: Climate((24.0, 30.0), 8.0, 1 / 50_000, 1 / 60, 0.0, (0.2, 1.0)),
    WeatherScenario.HEATWAVE: Climate((31.0, 34.0), 6.0, 1 / 20_000, 1 / 120, 0.0, (0.5, 5.0)),
}
#: what a hostile station claims in each scenario: the opposite of what its neighbours see
HOSTILE_CLIMATES: dict[WeatherScenario, Climate] = {
    WeatherScenario.NORMAL: Climate((36.0, 39.0), 6.0, 0.0, 1.0, 0.0, (0.5, 1.0)),  # a dry heatwave
    WeatherScenario.DROUGHT: Climate((14.0, 18.0), 3.0, 1 / 60, 1 / 7_200, 1.0, (60.0, 120.0)),  # a cloudburst
    WeatherScenario.HEATWAVE: Climate((14.0, 18.0), 4.0, 1 / 900, 1 / 300, 0.5, (1.0, 8.0)),  # mild, showers
}


class WeatherStationModel:
    """Cumulative rainfall in hundredths of a millimetre, with a modelled air temperature (°C) and its highest
    value since the previous observation."""

    def __init__(self, rng: random.Random, climate: Climate = CLIMATES[WeatherScenario.NORMAL]) -> None:
        self._rng = rng
        self.climate = climate
        self.rain_001mm = rng.uniform(0.0, 5e5)
        self.mean_c = rng.uniform(*climate.mean_c)
        self.raining = rng.random() < climate.raining_at_start
        self.intensity_mm_h = rng.uniform(*climate.intensity_mm_h)
        self.temperature_c = self.mean_c
        self._max_since_c: float | None = None
        self._t: int | None = None

    def _second(self, t: int) -> None:
        rng, climate = self._rng, self.climate
        hour = (t / 3600.0) % 24.0
        self.temperature_c = (self.mean_c + climate.amplitude_c * math.sin((hour - 9.0) / 24.0 * 2 * math.pi)
                              + rng.gauss(0.0, 0.2))
        if self._max_since_c is None or self.temperature_c > self._max_since_c:
            self._max_since_c = self.temperature_c
        convective = max(0.0, self.temperature_c - self.mean_c) / max(climate.amplitude_c, 1e-9)
        if self.raining:
            if rng.random() < climate.rain_stop_per_s:
                self.raining = False
            else:
                self.rain_001mm += self.intensity_mm_h * 100.0 / 3600.0 * rng.uniform(0.5, 1.5)
        elif rng.random() < climate.rain_start_per_s * (1 + 2 * convective):
            self.raining = True
            self.intensity_mm_h = rng.uniform(*climate.intensity_mm_h)

    def value_at(self, t: int) -> int:
        if self._t is None:
            self._t = t
        while self._t < t:
            self._second(self._t)
            self._t += 1
        return int(self.rain_001mm)

    def peek(self, t: int) -> tuple[int, int]:
        """(rainfall register, highest temperature in centi-°C since the previous observation) at ``t``."""
        rain = self.value_at(t)
        highest = self.temperature_c if self._max_since_c is None else self._max_since_c
        return rain, round(highest * 100)

    def observe(self, t: int) -> tuple[int, int]:
        """Like ``peek``, and the next observation's maximum starts afresh."""
        observation = self.peek(t)
        self._max_since_c = None
        return observation


class TrackerModel:
    """A parcel moving along a route; reefer temperature in centi-°C, sampled every second until arrival."""

    def __init__(self, rng: random.Random, route: Sequence[tuple[float, float]], speed: float) -> None:
        self._rng = rng
        self.route = list(route)
        self.speed = speed
        self._legs = [_metres(a, b) for a, b in zip(self.route, self.route[1:])]
        self.length_m = sum(self._legs)
        self.arrival_s = self.length_m / speed if speed > 0 else math.inf
        self.setpoint_c = rng.uniform(2.0, 6.0)
        self.temperature_c = self.setpoint_c
        self.max_temperature_c = self.setpoint_c
        self._sampled = 0

    def position(self, elapsed: float) -> tuple[float, float]:
        travelled = min(self.length_m, self.speed * max(0.0, elapsed))
        for (a, b), leg in zip(zip(self.route, self.route[1:]), self._legs):
            if travelled <= leg and leg > 0:
                f = travelled / leg
                return a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f
            travelled -= leg
        return self.route[-1]

    def max_temperature_until(self, elapsed: float) -> int:
        """Highest temperature seen up to ``elapsed`` seconds, in centi-°C."""
        while self._sampled < elapsed:
            drift = 0.1 * (self.setpoint_c - self.temperature_c) + self._rng.gauss(0.0, 0.05)
            if self._rng.random() < 0.02:  # door opened at a stop
                drift += self._rng.uniform(0.5, 2.0)
            self.temperature_c += drift
            self.max_temperature_c = max(self.max_temperature_c, self.temperature_c)
            self._sampled += 1
        return round(self.max_temperature_c * 100)


def _metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(min(1.0, math.sqrt(h)))


def _model(
    device: FleetDevice, rng: random.Random, seed: int, weather: WeatherScenario, hostile: bool
) -> MeterModel | VehicleModel | WeatherStationModel | TrackerModel:
    if device.kind is DeviceKind.METER:
        return MeterModel(rng)
    if device.kind is DeviceKind.VEHICLE:
        return VehicleModel(rng, driving_style(device, seed))
    if device.kind is DeviceKind.WEATHER_STATION:
        return WeatherStationModel(rng, (HOSTILE_CLIMATES if hostile else CLIMATES)[weather])
    return TrackerModel(rng, device.route, device.speed)


# ------------------------------------------------------------------------------------------------- planning


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


@dataclass(frozen=True, slots=True)
class InjectedFault:
    fault: FaultClass
    device: str
    seq: int
    expect: str


def choose_fault_devices(fleet: Fleet, faults: Sequence[FaultClass], seed: int) -> dict[str, tuple[FaultClass, ...]]:
    """Faults per device address: the fleet file's, plus one eligible device per requested class.

    Each requested class goes to a different device while there are enough, so one device's quarantine does not
    hide another class's reason.
    """
    chosen: dict[str, list[FaultClass]] = {device.address: list(device.faults) for device in fleet.devices}
    busy = {address for address, classes in chosen.items() if classes}
    order = list(fleet.devices)
    random.Random(f"faults:{seed}").shuffle(order)
    # Trackers sign only on arrival, so they take teleport first and the other classes go to reading devices.
    order.sort(key=lambda device: device.kind is DeviceKind.TRACKER)

    def eligible_for(fault: FaultClass) -> list[FleetDevice]:
        return [device for device in order if fault.applies_to_device(device)]

    # The classes few devices can emit (teleport, behaviour_rollback, hostile) pick first, so a generic class does
    # not take the only device that could.
    for fault in sorted(dict.fromkeys(faults), key=lambda fault: len(eligible_for(fault))):
        eligible = eligible_for(fault)
        if not eligible:
            log.warning("no device in the fleet can emit %s; skipped", fault)
            continue
        free = [device for device in eligible if device.address not in busy]
        target = (free or eligible)[0]
        if fault not in chosen[target.address]:
            chosen[target.address].append(fault)
        busy.add(target.address)
    return {address: tuple(classes) for address, classes in chosen.items() if classes}


class _DeviceRun:
    """The state of one device during a plan: model, counter, last normal event of each stream."""

    def __init__(self, device: FleetDevice, fleet: Fleet, contracts: Contracts, seed: int, counter: Any,
                 weather: WeatherScenario = WeatherScenario.NORMAL, hostile: bool = False) -> None:
        self.device = device
        self.chain_id = fleet.chain_id
        self.contracts = contracts
        self.rng = random.Random(f"{seed}:{device.address}")
        self.hostile = hostile
        self.model = _model(device, self.rng, seed, weather, hostile)
        self.counter = counter
        self.topic = events_topic(fleet.chain_id, device.address)
        self.streams = device.streams
        self.last_event: SignedEvent | None = None
        self.last: dict[str, SignedEvent] = {}  # stream → last normal event
        self.steps = 0  # events scheduled so far (tie-break among this device's events)

    @property
    def register(self) -> MeterModel | VehicleModel | WeatherStationModel:
        if isinstance(self.model, TrackerModel):
            raise ConfigError(f"{self.device.name} is a tracker: it signs deliveries, not readings")
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

    def _sign(self, event_type: str, msg: dict[str, Any], *, chain_id: int | None = None) -> SignedEvent:
        contract = self.contracts.for_type(event_type)
        return sign_event(self.device.key, event_type, chain_id or self.chain_id, contract, msg)

    def _msg(self, stream: str, timestamp: int, *, observe: bool = True) -> dict[str, Any]:
        """A normal message of ``stream`` at ``timestamp`` with the next sequence number.

        ``observe=False`` (for faults) leaves a station's running maximum temperature to the next real observation,
        and its sequence number too: weather seqs are gapless on chain, so a bad observation the oracle refuses takes
        the number the next real one reuses, instead of leaving a gap that would stall the station for good.
        """
        seq = self.counter.next() if observe or stream != "weather" else self.counter.peek
        if stream == "reading":
            value = self.register.value_at(timestamp)
            return {"agreementId": self.device.targets[0], "seq": seq, "timestamp": timestamp, "value": value}
        if stream == "telematics":
            odometer, harsh, speeding = self.vehicle.counters_at(timestamp)
            return {"policyId": self.device.policy_id, "seq": seq, "timestamp": timestamp, "odometer": odometer,
                    "harshBraking": harsh, "speeding": speeding}
        if stream == "weather":
            rainfall, highest = (self.station.observe if observe else self.station.peek)(timestamp)
            return {"station": self.device.address, "seq": seq, "timestamp": timestamp, "rainfall": rainfall,
                    "maxTemperature": highest}
        raise ConfigError(f"{self.device.name}: no model for {stream} events")

    def report(self, timestamp: int) -> list[SignedEvent]:
        """One normal event per stream of the device (a reading, a telematics report, an observation)."""
        events = []
        for stream in self.streams:
            event = self._sign(stream, self._msg(stream, timestamp))
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
        event = self._sign("delivery", msg)
        self.last["delivery"] = self.last_event = event
        return event

    def fault(self, fault: FaultClass, timestamp: int, elapsed: float) -> SignedEvent | None:
        """A bad event of class ``fault``, or None when the device has nothing to build it from yet."""
        tracker = isinstance(self.model, TrackerModel)
        if fault is FaultClass.REPLAYED_SEQ:
            if self.last_event is None:
                return None
            msg = dict(self.last_event.msg)
            changed = {"delivery": "maxTemperature", "reading": "value", "telematics": "odometer",
                       "weather": "rainfall"}[self.last_event.type]
            msg[changed] = int(msg[changed]) + 1
            return self._sign(self.last_event.type, msg)
        if fault is FaultClass.TELEPORT:
            lat, lon = self.tracker.route[-1]
            far = geohash_encode(-lat, lon + 180.0 if lon <= 0 else lon - 180.0, len(self.device.destination) or 7)
            msg = {
                "escrowId": self.device.targets[0],
                "seq": self.counter.next(),
                "timestamp": timestamp,
                "location": location_bytes32(far),
                "maxTemperature": self.tracker.max_temperature_until(elapsed),
            }
            return self._sign("delivery", msg)
        if tracker:
            here = geohash_encode(*self.tracker.position(elapsed), len(self.device.destination) or 7)
            msg = {
                "escrowId": self.device.targets[0],
                "seq": self.counter.next(),
                "timestamp": timestamp,
                "location": location_bytes32(here),
                "maxTemperature": self.tracker.max_temperature_until(elapsed),
            }
            event_type = "delivery"
        else:
            event_type = "telematics" if fault is FaultClass.BEHAVIOUR_ROLLBACK else self.streams[0]
            msg = self._msg(event_type, timestamp, observe=False)
            register = {"reading": "value", "telematics": "odometer", "weather": "rainfall"}[event_type]
            last = self.last.get(event_type)
            if fault is FaultClass.COUNTER_ROLLBACK:
                below = min(int(msg[register]), int(last.msg[register]) if last is not None else int(msg[register]))
                msg[register] = max(0, below - self.rng.randint(1, 500))
            elif fault is FaultClass.BEHAVIOUR_ROLLBACK:
                before = last.msg if last is not None else msg
                if int(before["harshBraking"]) + int(before["speeding"]) == 0:
                    # Nothing counted yet: a unit that claims less distance is the same tampering, same reason.
                    msg["odometer"] = max(0, min(int(msg["odometer"]), int(before["odometer"])) - self.rng.randint(1, 500))
                else:
                    msg["harshBraking"] = max(0, int(before["harshBraking"]) - 1)
                    msg["speeding"] = max(0, int(before["speeding"]) - 1)
            elif fault is FaultClass.IMPOSSIBLE_RATE:
                msg[register] = int(msg[register]) + IMPOSSIBLE_JUMP
        if fault is FaultClass.CLOCK_SKEW:
            msg["timestamp"] = timestamp + CLOCK_SKEW_SECONDS
        if fault is FaultClass.WRONG_CHAIN:
            return self._sign(event_type, msg, chain_id=self.chain_id + 1)
        event = self._sign(event_type, msg)
        if fault is FaultClass.BAD_SIGNATURE:
            # A flipped bit in r: the signature still parses but recovers to another address (or to none).
            corrupted = bytearray(event.sig)
            corrupted[31] ^= 0x01
            event = replace(event, sig=bytes(corrupted))
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
    _runs: dict[int, _DeviceRun] = field(default_factory=dict)

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
            hostile = FaultClass.HOSTILE in self.faults.get(device.address, ())
            self._runs[index] = _DeviceRun(device, self.fleet, self.contracts, self.seed, counter, self.weather, hostile)

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
            event_faults = [fault for fault in self.faults.get(run.device.address, ()) if fault is not FaultClass.HOSTILE]
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
                if run.hostile and first_report and events:
                    # A hostile station's every observation lies; it is listed once, at its first.
                    fault = FaultClass.HOSTILE
                    self.injected.append(InjectedFault(fault, run.device.address, events[0].seq, EXPECTED_REASON[fault]))
                following = offset + self._period
                if following < self.duration:
                    heapq.heappush(heap, (following, index, run.steps, "reading", None))
                    run.steps += 1
            elif action == "delivery":
                events = [run.delivery(argument, timestamp, offset)]
            else:
                fault = argument
                event = run.fault(argument, timestamp, offset)
                if event is None:
                    log.info("%s: no earlier event to build %s from; skipped", run.device.name, argument)
                    continue
                self.injected.append(InjectedFault(argument, run.device.address, event.seq, EXPECTED_REASON[argument]))
                events = [event]
            for position, event in enumerate(events):
                yield PlannedEvent(offset, run.device.address, event.type, event.seq, run.topic, event.to_payload(),
                                   fault if position == 0 else None, index)


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
    parts = [
        replace(plan, only=frozenset(devices[i::workers]), injected=[], _runs={}) for i in range(workers)
    ]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        signed = list(pool.map(_sign_part, parts))
    merged = list(heapq.merge(*signed, key=lambda event: (event.offset, event.index)))
    plan.injected.extend(
        InjectedFault(event.fault, event.device, event.seq, EXPECTED_REASON[event.fault])
        for event in merged
        if event.fault is not None
    )
    return merged


# ------------------------------------------------------------------------------------------------- running


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
        fleet, contracts, rate=rate, duration=duration, seed=seed, start_time=start_time, faults=faults,
        fault_count=fault_count, weather=weather,
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
    events: Iterator[PlannedEvent] | list[PlannedEvent] = plan
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
            log.warning("broker %s:%d not reachable yet; events are buffered meanwhile", broker.host, broker.port)
        started = time.monotonic()
        batch: list[tuple[str, bytes]] = []
        last_report, last_acked = started, 0
        for event in events:
            planned += 1
            normal = event.fault is None or event.fault is FaultClass.HOSTILE  # a hostile station's lies look normal
            by_type[event.event_type if normal else f"fault:{event.fault}"] += 1
            now = time.monotonic()
            if started + event.offset > now:
                if batch:
                    submitted += publisher.submit_many(batch)
                    batch = []
                while started + event.offset > (now := time.monotonic()):
                    if progress is not None and now - last_report >= 1.0:
                        last_report, last_acked = _report(progress, publisher, started, now, last_report, last_acked, submitted)
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
        driving_styles={device.address: str(driving_style(device, seed)) for device in fleet.devices
                        if device.kind is DeviceKind.VEHICLE},
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
        ProgressReport(now - started, submitted, stats.acknowledged, stats.pending, (stats.acknowledged - last_acked) / interval, stats.connected)
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
