"""How each simulated device's registers evolve: the physical models behind the events a fleet signs.

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
- wearables: steps and active minutes per day from an activity profile (sedentary, active, athlete) with a weekly
  rhythm (busier weekdays or a long weekend run, a rest day) and day-to-day noise; the wearable sums them over
  each finished period of its health policy and signs only the tier they reach (``device.activity.tier_of``);
- trackers: a parcel moving along its route at its speed inside a reefer whose temperature wanders around a set
  point with door-open excursions; on reaching the destination it signs one Delivery per escrow with the
  highest temperature seen (centi-°C).

A register's value is sampled at whole seconds (the timestamp's resolution), so readings within one second repeat
the value and the rate rules see no growth without elapsed time.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from iotsettle.oracle.device.activity import ActivityProfile, Cover, tier_of
from iotsettle.oracle.device.fleet import DrivingStyle, FleetDevice
from iotsettle.oracle.device.weather import WeatherScenario
from iotsettle.oracle.protocol.device_kinds import DeviceKind


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
STYLE_WEIGHTS: dict[DrivingStyle, float] = {
    DrivingStyle.CALM: 0.35,
    DrivingStyle.AVERAGE: 0.45,
    DrivingStyle.AGGRESSIVE: 0.20,
}
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

#: a station_outlier fault: a cloudburst all run long that the other stations do not see (≤ 8.3 units/s, below the
#: impossible rate of 10/s)
CLOUDBURST = Climate((14.0, 18.0), 3.0, 1.0, 0.0, 1.0, (150.0, 200.0))


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
        self.temperature_c = (
            self.mean_c + climate.amplitude_c * math.sin((hour - 9.0) / 24.0 * 2 * math.pi) + rng.gauss(0.0, 0.2)
        )
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
        self._legs = [_metres(a, b) for a, b in zip(self.route, self.route[1:], strict=False)]
        self.length_m = sum(self._legs)
        self.arrival_s = self.length_m / speed if speed > 0 else math.inf
        self.setpoint_c = rng.uniform(2.0, 6.0)
        self.temperature_c = self.setpoint_c
        self.max_temperature_c = self.setpoint_c
        self._sampled = 0

    def position(self, elapsed: float) -> tuple[float, float]:
        travelled = min(self.length_m, self.speed * max(0.0, elapsed))
        for (a, b), leg in zip(zip(self.route, self.route[1:], strict=False), self._legs, strict=False):
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


#: (steps, active minutes) of an average day, by activity profile
PROFILE_DAYS: dict[ActivityProfile, tuple[float, float]] = {
    ActivityProfile.SEDENTARY: (4_200.0, 14.0),
    ActivityProfile.ACTIVE: (9_000.0, 36.0),
    ActivityProfile.ATHLETE: (15_500.0, 75.0),
}
#: Monday … Sunday, times the average day: office weeks with a lazy weekend, or training weeks with a long Saturday
#: session and a rest day on Sunday
PROFILE_WEEKS: dict[ActivityProfile, tuple[float, ...]] = {
    ActivityProfile.SEDENTARY: (1.1, 1.1, 1.05, 1.1, 1.05, 0.85, 0.75),
    ActivityProfile.ACTIVE: (1.0, 1.05, 0.95, 1.0, 1.05, 1.25, 0.7),
    ActivityProfile.ATHLETE: (1.0, 1.1, 0.9, 1.1, 0.9, 1.5, 0.5),
}
#: how often each profile is drawn for a wearable whose fleet entry does not fix one
PROFILE_WEIGHTS: dict[ActivityProfile, float] = {
    ActivityProfile.SEDENTARY: 0.4,
    ActivityProfile.ACTIVE: 0.45,
    ActivityProfile.ATHLETE: 0.15,
}
DAY_S = 86_400


def activity_profile(device: FleetDevice, seed: int) -> ActivityProfile:
    """The fleet entry's profile, or one drawn from the seed (stable per device)."""
    if device.activity_profile is not None:
        return device.activity_profile
    rng = random.Random(f"{seed}:{device.address}:profile")
    return rng.choices(list(PROFILE_WEIGHTS), weights=list(PROFILE_WEIGHTS.values()))[0]


class WearableModel:
    """Steps and active minutes of a wearer over any span of time, stable per (device, day): asking twice, or
    for overlapping periods, gives the same figures."""

    def __init__(self, seed: str, profile: ActivityProfile = ActivityProfile.ACTIVE) -> None:
        self._seed = seed
        self.profile = profile

    def _day(self, day: int) -> tuple[float, float]:
        steps, minutes = PROFILE_DAYS[self.profile]
        rhythm = PROFILE_WEEKS[self.profile][(day + 3) % 7]  # 1970-01-01 was a Thursday
        noise = random.Random(f"{self._seed}:{day}").lognormvariate(0.0, 0.18)
        return steps * rhythm * noise, minutes * rhythm * noise

    def activity(self, start: int, end: int) -> tuple[int, int]:
        """(steps, active minutes) between ``start`` and ``end`` (unix seconds), pro rata within a day."""
        steps = minutes = 0.0
        t = start
        while t < end:
            day = t // DAY_S
            upto = min(end, (day + 1) * DAY_S)
            day_steps, day_minutes = self._day(day)
            share = (upto - t) / DAY_S
            steps += day_steps * share
            minutes += day_minutes * share
            t = upto
        return int(steps), int(minutes)

    def tier(self, cover: Cover, period: int) -> int:
        """The tier the wearable signs for ``period`` of ``cover``."""
        if cover.period_length < DAY_S:
            # a demo's periods of seconds stand for the days of the wearer's week, one after the other (its policy
            # has daily thresholds)
            steps, minutes = self.activity(period * DAY_S, (period + 1) * DAY_S)
        else:
            start = cover.start + period * cover.period_length
            steps, minutes = self.activity(start, start + cover.period_length)
        return tier_of(steps, minutes, cover.thresholds)


def _metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(min(1.0, math.sqrt(h)))


def device_model(
    device: FleetDevice, rng: random.Random, seed: int, weather: WeatherScenario, hostile: bool, outlier: bool = False
) -> MeterModel | VehicleModel | WeatherStationModel | TrackerModel | WearableModel:
    """The model of ``device``'s kind; a ``hostile`` station lives in the opposite of the scenario's weather, an
    ``outlier`` one in a cloudburst."""
    if device.kind is DeviceKind.METER:
        return MeterModel(rng)
    if device.kind is DeviceKind.VEHICLE:
        return VehicleModel(rng, driving_style(device, seed))
    if device.kind is DeviceKind.WEATHER_STATION:
        if outlier:
            return WeatherStationModel(rng, CLOUDBURST)
        return WeatherStationModel(rng, (HOSTILE_CLIMATES if hostile else CLIMATES)[weather])
    if device.kind is DeviceKind.WEARABLE:
        return WearableModel(f"{seed}:{device.address}", activity_profile(device, seed))
    return TrackerModel(rng, device.route, device.speed)
