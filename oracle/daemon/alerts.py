"""Early alerts: activity that passed every fraud rule but is unusual for the device that signed it.

The fraud rules (``rules``) refuse what cannot be true; the detectors here flag what is possible but suspicious,
and never refuse anything: intake calls them after an event is accepted, stores the alerts with the batch and
publishes them on ``iotsettle/v1/{chainId}/alerts`` (docs/ALERTS.md, docs/PROTOCOL.md). Like the rules they are
pure functions of the event, the device's rule state before it (``DeviceState``: previous registers, location,
timestamp) and a small per-device ``AlertState`` they return updated.

- ``meter_spike``: a meter's consumption rate over one reading interval far above its own exponentially weighted
  mean and deviation (after a warm-up; the deviation has a floor of one register unit per interval, so integer
  registers read often do not look noisy-then-spiky);
- ``tracker_stalled``: a tracker whose fixes stayed within ``stationary_radius_m`` for ``stationary_s`` or longer
  (once per stay);
- ``lapsed_driving``: a vehicle's odometer advanced under a policy the chain reports lapsed (the status comes from
  a cache the daemon refreshes off the intake thread, ``PolicyWatch``);
- ``station_outlier``: a weather station whose smoothed rainfall over ``station_window_s`` is far above the median
  of the other stations' over the same window (once per episode).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from iotsettle.oracle.daemon.rules import cells_apart_m, decode_location
from iotsettle.oracle.daemon.store import DeviceState
from iotsettle.oracle.protocol.alerts import ALERT_VERSION, AlertKind
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.errors import ProtocolError
from iotsettle.oracle.protocol.wire import SignedEvent

#: ``IMotorInsurance.PolicyStatus.Lapsed``: premiums owed passed the money deposited
POLICY_LAPSED = 3


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """Thresholds of the detectors (config ``[alerts]``, docs/ALERTS.md); 0 switches a detector off."""

    meter_warmup: int = 10  # readings before a meter's own pattern is trusted
    meter_sigmas: float = 8.0  # deviations above the mean that make a spike
    meter_ratio: float = 10.0  # ... and times the mean: both must hold
    meter_half_life_s: float = 86_400.0  # half-life of the meter's mean and deviation
    stationary_s: float = 21_600.0  # a tracker staying put this long raises tracker_stalled
    stationary_radius_m: float = 200.0  # fixes closer than this to the stay's first one count as not moving
    lapsed_min_distance_m: int = 100  # odometer metres on a lapsed policy before lapsed_driving
    station_window_s: float = 3_600.0  # time constant of a station's smoothed rainfall rate
    station_floor: float = 5_000.0  # hundredths of a mm per window above the neighbours' median, at least
    station_ratio: float = 3.0  # ... and times the neighbours' median: both must hold
    station_min_neighbours: int = 3  # other stations needed for a median


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert, as stored, published and listed."""

    kind: AlertKind
    device: str
    event_type: str  # wire type of the event that raised it
    target: int  # agreement / escrow / policy id, or the station address as an integer
    seq: int
    timestamp: int  # the event's
    raised_at: float  # the oracle's clock
    value: float  # what was seen (a rate, seconds, metres, a window's rainfall)
    expected: float  # the threshold it passed
    detail: str
    id: int = 0  # store row id (0 until stored)

    def as_dict(self) -> dict[str, Any]:
        """The JSON object published on the alerts topic and printed by ``iotsettle oracle alerts --json``."""
        return {
            "v": ALERT_VERSION,
            "id": self.id,
            "alert": str(self.kind),
            "device": self.device,
            "type": self.event_type,
            "target": str(self.target),
            "seq": self.seq,
            "timestamp": self.timestamp,
            "raisedAt": round(self.raised_at, 3),
            "value": self.value,
            "expected": self.expected,
            "detail": self.detail,
        }

    def row(self) -> tuple[Any, ...]:
        """The store row (``store.ALERT_COLUMNS`` without the id)."""
        return (str(self.kind), self.device, self.event_type, str(self.target), self.seq, self.timestamp,
                self.raised_at, self.value, self.expected, self.detail)  # fmt: skip

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Alert:
        """An alert from a ``Store.alerts`` row."""
        alert_id, kind, device, event_type, target, seq, timestamp, raised_at, value, expected, detail = row
        return cls(AlertKind(kind), device, event_type, int(target), seq, timestamp, raised_at, value, expected,
                   detail, alert_id)  # fmt: skip


def encode_alert(alert: Alert) -> bytes:
    """The alerts topic's payload (docs/PROTOCOL.md)."""
    return json.dumps(alert.as_dict(), separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class AlertState:
    """What the detectors remember about one device between events (``Store.alert_state``)."""

    device: str
    #: meters, per agreement: (agreement, readings seen, mean rate, variance of the rate) in units per second
    baselines: tuple[tuple[int, int, float, float], ...] = ()
    #: located devices: where the current stay started (geohash bytes32), when, and whether it was alerted
    stay: tuple[bytes, int, bool] | None = None
    #: weather stations: smoothed rainfall rate (units per second) and its timestamp
    station_rate: float | None = None
    station_time: int | None = None
    outlier: bool = False  # a station_outlier episode is running (alerted once)
    #: vehicles, per policy seen lapsed: (policy, odometer when the lapse was first seen, alerted already)
    lapsed: tuple[tuple[int, int, bool], ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "b": [list(b) for b in self.baselines],
                "s": None if self.stay is None else [self.stay[0].hex(), self.stay[1], self.stay[2]],
                "o": self.outlier,
                "l": [list(entry) for entry in self.lapsed],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_row(cls, device: str, text: str, rate: float | None, time: int | None) -> AlertState:
        data = json.loads(text)
        stay = data.get("s")
        return cls(
            device,
            tuple((int(t), int(n), float(m), float(v)) for t, n, m, v in data.get("b", [])),
            None if stay is None else (bytes.fromhex(stay[0]), int(stay[1]), bool(stay[2])),
            rate,
            time,
            bool(data.get("o", False)),
            tuple((int(p), int(o), bool(a)) for p, o, a in data.get("l", [])),
        )


@dataclass(frozen=True, slots=True)
class Context:
    """What the detectors may look at beyond the device: the chain's policy statuses (cached) and the other
    stations' smoothed rainfall rates; both read once per batch, never per event from the chain."""

    policy_status: Callable[[int], int | None] = lambda policy: None
    station_rates: Mapping[str, tuple[float, int]] = field(default_factory=dict)
    #: the median of the other stations' rates per station, computed lazily once per batch
    _medians: dict[str, float | None] = field(default_factory=dict)

    def neighbours_median(self, device: str, now: int, window: float, minimum: int) -> float | None:
        if device in self._medians:
            return self._medians[device]
        rates = sorted(
            rate for station, (rate, at) in self.station_rates.items() if station != device and now - at <= window
        )
        median: float | None = None
        if rates and len(rates) >= minimum:
            middle = len(rates) // 2
            median = rates[middle] if len(rates) % 2 else (rates[middle - 1] + rates[middle]) / 2
        self._medians[device] = median
        return median


def detect(
    event: SignedEvent,
    device: str,
    kind: int,
    before: DeviceState,
    state: AlertState | None,
    now: float,
    settings: AlertSettings,
    context: Context,
) -> tuple[list[Alert], AlertState]:
    """Alerts raised by an accepted event, and the device's next alert state.

    ``before`` is the device's rule state before this event (its previous registers, location and timestamp).
    """
    current = state or AlertState(device)
    alerts: list[Alert] = []
    event_type = event.type
    if event_type == "reading" and kind == DeviceKind.METER and settings.meter_sigmas:
        current = _meter(event, device, before, current, now, settings, alerts)
    elif event_type == "delivery" and settings.stationary_s:
        current = _stay(event, device, current, now, settings, alerts)
    elif event_type == "telematics" and settings.lapsed_min_distance_m:
        current = _lapsed(event, device, before, current, now, settings, context, alerts)
    elif event_type == "weather" and settings.station_floor:
        current = _station(event, device, before, current, now, settings, context, alerts)
    return alerts, current


def _previous(before: DeviceState, target: int, registers: int) -> tuple[tuple[int, ...], int] | None:
    entries = before.registers
    if entries and entries[-1][0] == target and len(entries[-1][1]) == registers:  # the usual case: one target
        return entries[-1][1], entries[-1][2]
    for entry_target, values, timestamp in reversed(entries):
        if entry_target == target and len(values) == registers:
            return values, timestamp
    return None


def _alert(
    kind: AlertKind, event: SignedEvent, device: str, now: float, value: float, expected: float, detail: str
) -> Alert:
    msg = event.msg
    return Alert(kind, device, event.type, event.target_id, int(msg["seq"]), int(msg["timestamp"]), now,
                 round(value, 6), round(expected, 6), detail)  # fmt: skip


def _meter(
    event: SignedEvent,
    device: str,
    before: DeviceState,
    state: AlertState,
    now: float,
    settings: AlertSettings,
    alerts: list[Alert],
) -> AlertState:
    target = event.target_id
    previous = _previous(before, target, 1)
    if previous is None:
        return state
    (last_value,), last_time = previous
    seconds = int(event.msg["timestamp"]) - last_time
    if seconds <= 0:
        return state
    rate = (int(event.msg["value"]) - last_value) / seconds
    baselines = state.baselines
    baseline = None
    for candidate in baselines:
        if candidate[0] == target:
            baseline = candidate
    count, mean, variance = (0, rate, 0.0) if baseline is None else baseline[1:]
    # an integer register read every few seconds jumps between n and n+1 units: one unit per interval is noise
    deviation = max(math.sqrt(variance), 1.0 / seconds)
    threshold = max(mean + settings.meter_sigmas * deviation, settings.meter_ratio * mean)
    # winsorised: a sample above the threshold counts as the threshold, during the warm-up too, so a spike never
    # teaches the meter that spikes are normal
    sample = min(rate, threshold)
    if count >= settings.meter_warmup and rate > threshold:
        alerts.append(
            _alert(
                AlertKind.METER_SPIKE,
                event,
                device,
                now,
                rate,
                threshold,
                f"{rate:.4g} units/s over {seconds} s, its own mean {mean:.4g} ± {deviation:.3g} units/s",
            )
        )
    if baseline is None:
        updated = (target, 1, rate, 0.0)
    else:
        # exponentially weighted mean and variance with a half-life in seconds (readings need not be regular)
        alpha = 1.0 - 0.5 ** (seconds / settings.meter_half_life_s) if settings.meter_half_life_s else 1.0
        alpha = max(alpha, 1.0 / (count + 1))  # the first readings count fully, not at the half-life's weight
        delta = sample - mean
        mean += alpha * delta
        variance = (1.0 - alpha) * (variance + alpha * delta * delta)
        updated = (target, count + 1, mean, variance)
    if len(baselines) == 1 and baseline is not None:  # the usual case: one agreement
        kept: tuple[tuple[int, int, float, float], ...] = (updated,)
    else:
        kept = (*tuple(b for b in baselines if b[0] != target)[-15:], updated)
    return AlertState(state.device, kept, state.stay, state.station_rate, state.station_time, state.outlier,
                      state.lapsed)  # fmt: skip


def _stay(
    event: SignedEvent, device: str, state: AlertState, now: float, settings: AlertSettings, alerts: list[Alert]
) -> AlertState:
    location = bytes(event.msg["location"])
    try:
        here = decode_location(location)
    except ProtocolError:
        return state
    if here is None:
        return state
    timestamp = int(event.msg["timestamp"])
    stay = state.stay
    if stay is not None:
        start = decode_location(stay[0])
        if start is not None and cells_apart_m(start, here) <= settings.stationary_radius_m:
            stayed = timestamp - stay[1]
            if stayed >= settings.stationary_s and not stay[2]:
                alerts.append(
                    _alert(
                        AlertKind.TRACKER_STALLED,
                        event,
                        device,
                        now,
                        stayed,
                        settings.stationary_s,
                        f"within {settings.stationary_radius_m:g} m of one place for {stayed} s",
                    )
                )
                return _with(state, stay=(stay[0], stay[1], True))
            return state
    return _with(state, stay=(location, timestamp, False))


def _lapsed(
    event: SignedEvent,
    device: str,
    before: DeviceState,
    state: AlertState,
    now: float,
    settings: AlertSettings,
    context: Context,
    alerts: list[Alert],
) -> AlertState:
    policy = event.target_id
    status = context.policy_status(policy)
    entry = next((e for e in state.lapsed if e[0] == policy), None)
    if status != POLICY_LAPSED:
        # reinstated (or never lapsed): a later lapse alerts again
        return state if entry is None else _with(state, lapsed=tuple(e for e in state.lapsed if e[0] != policy))
    odometer = int(event.msg["odometer"])
    if entry is None:
        # driving is counted from the report before the lapse was first seen (or this one, if it is the first)
        previous = _previous(before, policy, 3)
        entry = (policy, odometer if previous is None else previous[0][0], False)
        state = _with(state, lapsed=(*state.lapsed[-15:], entry))
    if entry[2]:
        return state
    driven = odometer - entry[1]
    if driven < settings.lapsed_min_distance_m:
        return state
    alerts.append(
        _alert(
            AlertKind.LAPSED_DRIVING,
            event,
            device,
            now,
            driven,
            settings.lapsed_min_distance_m,
            f"drove {driven} m while policy {policy:#x} is lapsed",
        )
    )
    return _with(state, lapsed=tuple((p, o, a or p == policy) for p, o, a in state.lapsed))


def _station(
    event: SignedEvent,
    device: str,
    before: DeviceState,
    state: AlertState,
    now: float,
    settings: AlertSettings,
    context: Context,
    alerts: list[Alert],
) -> AlertState:
    previous = _previous(before, event.target_id, 1)
    timestamp = int(event.msg["timestamp"])
    if previous is None:
        return state
    (last_value,), last_time = previous
    seconds = timestamp - last_time
    if seconds <= 0:
        return state
    rate = (int(event.msg["rainfall"]) - last_value) / seconds
    window = settings.station_window_s
    if state.station_rate is None or state.station_time is None:
        smoothed = rate * (1.0 - math.exp(-seconds / window))  # from zero: a new station earns its rate
    else:
        alpha = 1.0 - math.exp(-(timestamp - state.station_time) / window)
        smoothed = state.station_rate + alpha * (rate - state.station_rate)
    outlier = state.outlier
    median = context.neighbours_median(device, timestamp, window, settings.station_min_neighbours)
    if median is not None:
        excess = (smoothed - median) * window
        threshold = max(settings.station_floor, (settings.station_ratio - 1.0) * median * window)
        if excess > threshold:
            if not outlier:
                alerts.append(
                    _alert(
                        AlertKind.STATION_OUTLIER,
                        event,
                        device,
                        now,
                        smoothed * window,
                        median * window + threshold,
                        f"{smoothed * window:.0f} rainfall units per {window:g} s, the other stations' median "
                        f"{median * window:.0f}",
                    )
                )
            outlier = True
        elif excess < threshold / 2:  # hysteresis: one episode, one alert
            outlier = False
    return _with(state, station_rate=smoothed, station_time=timestamp, outlier=outlier)


def _with(state: AlertState, **changes: Any) -> AlertState:
    values = {name: getattr(state, name) for name in AlertState.__slots__}
    values.update(changes)
    return AlertState(**values)
