"""Alert detectors on their own: each fires for the unusual activity it is named after, and stays quiet for honest
devices modelled by the simulator over a long stretch (a day of readings, observations, a drive)."""

from __future__ import annotations

import os
import random

import pytest
from iotsettle.oracle.config import load_config
from iotsettle.oracle.daemon.alerts import (
    POLICY_LAPSED,
    Alert,
    AlertSettings,
    AlertState,
    Context,
    detect,
)
from iotsettle.oracle.daemon.rules import RuleSettings, evaluate
from iotsettle.oracle.daemon.service import alert_settings, validate
from iotsettle.oracle.daemon.store import DeviceState
from iotsettle.oracle.device.sim.models import CLIMATES, HOSTILE_CLIMATES, MeterModel, WeatherStationModel
from iotsettle.oracle.device.weather import WeatherScenario
from iotsettle.oracle.protocol import eip712, wire
from iotsettle.oracle.protocol.alerts import AlertKind
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.errors import ConfigError
from iotsettle.oracle.protocol.location import geohash_encode, location_bytes32

CONTRACT = "0x" + "c0" * 20
T0 = 1_800_000_000
DAY = 86_400


class Device:
    """One device's events through the rules and the detectors, in order, as intake runs them."""

    def __init__(self, kind: DeviceKind, settings: AlertSettings | None = None) -> None:
        self.key = os.urandom(32)
        self.address = eip712.address_of(self.key)
        self.kind = kind
        self.settings = settings or AlertSettings()
        self.rules: DeviceState | None = None
        self.state: AlertState | None = None
        self.seq = 0

    def event(self, event_type: str, **fields: int | bytes) -> wire.SignedEvent:
        self.seq += 1
        target = wire.TARGET_FIELDS[event_type]
        msg = {target: self.address if target == "station" else 1, "seq": self.seq, **fields}
        return wire.decode(wire.encode(event_type, 31337, CONTRACT, self.address, msg, b"\x1b" * 65))

    def send(self, event: wire.SignedEvent, context: Context | None = None) -> list[Alert]:
        now = float(event.msg["timestamp"])
        rules = RuleSettings(max_age_s=0)
        verdict = evaluate(event, self.address, self.kind, self.rules, now, rules, lambda d, s: None)
        assert verdict.reason is None, verdict.detail  # the faults here are all valid events
        before = self.rules or DeviceState(self.address)
        alerts, self.state = detect(
            event, self.address, self.kind, before, self.state, now, self.settings, context or Context()
        )
        self.rules = verdict.state
        return alerts


# --------------------------------------------------------------------------------------------------- meters


def meter_day(meter: Device, model: MeterModel, start: int, minutes: int, step: int = 60) -> list[Alert]:
    alerts: list[Alert] = []
    for t in range(start, start + minutes * 60, step):
        alerts += meter.send(meter.event("reading", timestamp=t, value=model.value_at(t)))
    return alerts


def test_honest_meters_raise_no_spike_over_a_day() -> None:
    rng = random.Random(7)
    alerts: list[Alert] = []
    for _ in range(30):
        meter = Device(DeviceKind.METER)
        alerts += meter_day(meter, MeterModel(rng), T0, 24 * 60)
    assert alerts == []


def test_honest_meters_read_every_few_seconds_raise_no_spike() -> None:
    """An integer register read often jumps between n and n+1 Wh: that is not a spike."""
    rng = random.Random(8)
    alerts: list[Alert] = []
    for _ in range(30):
        alerts += meter_day(Device(DeviceKind.METER), MeterModel(rng), T0, 120, step=2)
    assert alerts == []


def test_a_meter_far_above_its_own_pattern_raises_one_spike() -> None:
    rng = random.Random(9)
    meter, model = Device(DeviceKind.METER), MeterModel(rng)
    assert meter_day(meter, model, T0, 60) == []
    t = T0 + 3_600
    model.register_wh += 60 * 300  # 300 Wh/s for a minute: over a megawatt, yet below the impossible rate (1000/s)
    spike = meter.send(meter.event("reading", timestamp=t, value=model.value_at(t)))
    assert [a.kind for a in spike] == [AlertKind.METER_SPIKE]
    assert spike[0].value > 250 and spike[0].expected < 50 and spike[0].seq == meter.seq
    # the spike did not become the meter's normal: the honest readings after it are quiet, a second spike is not
    assert meter_day(meter, model, t + 60, 60) == []
    t += 3_660
    model.register_wh += 60 * 300
    assert [a.kind for a in meter.send(meter.event("reading", timestamp=t, value=model.value_at(t)))] == [
        AlertKind.METER_SPIKE
    ]


def test_no_spike_before_the_warm_up() -> None:
    meter = Device(DeviceKind.METER, AlertSettings(meter_warmup=10))
    model = MeterModel(random.Random(10))
    assert meter_day(meter, model, T0, 5) == []
    model.register_wh += 60 * 300
    assert meter.send(meter.event("reading", timestamp=T0 + 300, value=model.value_at(T0 + 300))) == []


# ------------------------------------------------------------------------------------------------- trackers


def fix(lat: float, lon: float) -> bytes:
    return location_bytes32(geohash_encode(lat, lon, 7))


def test_a_tracker_that_stays_put_raises_one_stalled_alert() -> None:
    tracker = Device(DeviceKind.TRACKER, AlertSettings(stationary_s=3_600))
    alerts: list[Alert] = []
    for k in range(12):  # every 10 minutes for two hours, jittering between neighbouring cells
        where = fix(52.52 + 0.0005 * (k % 2), 13.405)
        alerts += tracker.send(tracker.event("delivery", timestamp=T0 + 600 * k, location=where, maxTemperature=4))
    assert [a.kind for a in alerts] == [AlertKind.TRACKER_STALLED]
    assert alerts[0].value == 3_600 and alerts[0].timestamp == T0 + 3_600
    # moving on starts a new stay; a long stop there alerts again
    alerts = [
        a
        for k in range(8)
        for a in tracker.send(
            tracker.event("delivery", timestamp=T0 + 7_200 + 600 * k, location=fix(52.6, 13.5), maxTemperature=4)
        )
    ]
    assert [a.kind for a in alerts] == [AlertKind.TRACKER_STALLED]


def test_a_moving_tracker_raises_nothing() -> None:
    tracker = Device(DeviceKind.TRACKER, AlertSettings(stationary_s=3_600))
    alerts = [
        a
        for k in range(48)  # 25 km/h for 8 hours, a fix every 10 minutes
        for a in tracker.send(
            tracker.event("delivery", timestamp=T0 + 600 * k, location=fix(50.0 + 0.037 * k, 8.0), maxTemperature=4)
        )
    ]
    assert alerts == []


# ------------------------------------------------------------------------------------------------- vehicles


def test_driving_on_a_lapsed_policy_raises_one_alert_per_lapse() -> None:
    vehicle = Device(DeviceKind.VEHICLE)
    statuses = {1: 2}  # Active
    context = Context(policy_status=statuses.get)

    def drive(k: int) -> list[Alert]:
        event = vehicle.event("telematics", timestamp=T0 + 60 * k, odometer=900 * k, harshBraking=0, speeding=0)
        return vehicle.send(event, context)

    assert [a for k in range(5) for a in drive(k)] == []
    statuses[1] = POLICY_LAPSED
    alerts = [a for k in range(5, 10) for a in drive(k)]
    assert [a.kind for a in alerts] == [AlertKind.LAPSED_DRIVING]
    assert alerts[0].value == 900 and alerts[0].target == 1 and alerts[0].seq == 6
    statuses[1] = 2  # topped up: reinstated
    assert [a for k in range(10, 12) for a in drive(k)] == []
    statuses[1] = POLICY_LAPSED
    assert [a.kind for k in range(12, 14) for a in drive(k)] == [AlertKind.LAPSED_DRIVING]


def test_slow_driving_on_a_lapsed_policy_adds_up() -> None:
    """Reports every few seconds each move a few metres: the distance counts from the lapse, not per report."""
    vehicle = Device(DeviceKind.VEHICLE)
    context = Context(policy_status=lambda policy: POLICY_LAPSED)
    alerts = [
        a
        for k in range(30)
        for a in vehicle.send(
            vehicle.event("telematics", timestamp=T0 + 2 * k, odometer=5_000 + 8 * k, harshBraking=0, speeding=0),
            context,
        )
    ]
    assert [(a.kind, a.value) for a in alerts] == [(AlertKind.LAPSED_DRIVING, 104)]


def test_a_parked_vehicle_on_a_lapsed_policy_raises_nothing() -> None:
    vehicle = Device(DeviceKind.VEHICLE)
    context = Context(policy_status=lambda policy: POLICY_LAPSED)
    alerts = [
        a
        for k in range(10)
        for a in vehicle.send(
            vehicle.event("telematics", timestamp=T0 + 60 * k, odometer=5_000 + 10 * k, harshBraking=0, speeding=0),
            context,
        )
    ]
    assert alerts == []


# ------------------------------------------------------------------------------------------------- stations


def stations_day(models: list[WeatherStationModel], hours: int, step: int = 600) -> dict[int, list[Alert]]:
    """Observations of every station every ``step`` seconds, each seeing the others' smoothed rates."""
    devices = [Device(DeviceKind.WEATHER_STATION) for _ in models]
    rates: dict[str, tuple[float, int]] = {}
    alerts: dict[int, list[Alert]] = {index: [] for index in range(len(models))}
    for t in range(T0, T0 + hours * 3_600, step):
        context = Context(station_rates=dict(rates))
        for index, (device, model) in enumerate(zip(devices, models, strict=True)):
            rain, highest = model.observe(t)
            alerts[index] += device.send(device.event("weather", timestamp=t, rainfall=rain, maxTemperature=highest),
                                         context)  # fmt: skip
            state = device.state
            if state is not None and state.station_rate is not None and state.station_time is not None:
                rates[device.address] = (state.station_rate, state.station_time)
    return alerts


def test_honest_stations_raise_no_outlier_over_days() -> None:
    rng = random.Random(11)
    alerts = stations_day([WeatherStationModel(rng, CLIMATES[WeatherScenario.NORMAL]) for _ in range(12)], 72)
    assert [a for found in alerts.values() for a in found] == []


def test_a_station_in_a_cloudburst_its_neighbours_do_not_see_raises_one_outlier() -> None:
    rng = random.Random(12)
    models = [WeatherStationModel(rng, CLIMATES[WeatherScenario.DROUGHT]) for _ in range(6)]
    models.append(WeatherStationModel(rng, HOSTILE_CLIMATES[WeatherScenario.DROUGHT]))
    alerts = stations_day(models, 24)
    assert [a.kind for a in alerts[6]] == [AlertKind.STATION_OUTLIER]
    assert alerts[6][0].value > alerts[6][0].expected
    assert [a for index in range(6) for a in alerts[index]] == []


def test_no_outlier_without_enough_neighbours() -> None:
    rng = random.Random(13)
    models = [WeatherStationModel(rng, CLIMATES[WeatherScenario.DROUGHT]) for _ in range(2)]
    models.append(WeatherStationModel(rng, HOSTILE_CLIMATES[WeatherScenario.DROUGHT]))
    assert [a for found in stations_day(models, 12).values() for a in found] == []


def test_the_state_survives_its_stored_form() -> None:
    state = AlertState("0xabc", ((1, 12, 0.5, 0.01),), (fix(52.0, 13.0), T0, True), 0.25, T0, True, ((7, 900, True),))
    assert AlertState.from_row("0xabc", state.to_json(), 0.25, T0) == state


def test_alert_settings_come_from_the_config_and_bad_values_are_named() -> None:
    env = {"IOTSETTLE_ALERTS_METER_SIGMAS": "6", "IOTSETTLE_ALERTS_STATIONARY": "0"}
    config = load_config(env=env, read_files=False)
    settings = alert_settings(config)
    assert settings is not None and (settings.meter_sigmas, settings.stationary_s) == (6.0, 0.0)
    assert alert_settings(config.replace("alerts", enabled=False)) is None
    with pytest.raises(ConfigError, match=r"\[alerts\] station_floor must be ≥ 0; policy_poll must be > 0"):
        validate(config.replace("alerts", station_floor=-1.0, policy_poll=0.0))
