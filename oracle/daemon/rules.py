"""Fraud rules: what the oracle refuses even though the signature is valid.

The rules look at one event and what the store remembers about its device (``DeviceState``), and answer
accept / duplicate / reject-with-reason plus the device's next state. They are pure functions; intake applies
them in arrival order inside a batch and commits the states with the batch.

- duplicate: (device, seq) already accepted with the same digest → acknowledged, not stored twice;
- replayed_seq: seq ≤ the last accepted seq with a different digest (or a skipped seq sent late);
- quarantined: the device failed the rules ``quarantine_threshold`` times within ``quarantine_window_s``;
- clock_skew: timestamp too far in the future, too old, or earlier than the device's previous event;
- counter_rollback: one of the event's cumulative registers went down, compared per device and target (a reading's
  value per agreement; a telematics report's odometer, harsh-braking and speeding counts per policy; a weather
  observation's rainfall per station);
- impossible_rate: the event's first register grew faster than its device kind allows (units per second: meter
  units, vehicle metres, rain gauge hundredths of a millimetre);
- invalid_location / teleport: a delivery's location is not a geohash, or implies a speed above the limit.

Which rules apply to a wire type comes from ``iotsettle.oracle.protocol.kinds.KINDS`` (``registers``, ``located``).

Locations are geohash text, ASCII, left-aligned in the bytes32 and zero-padded on the right
(``iotsettle.oracle.protocol.location``, docs/PROTOCOL.md). All-zero means "no fix" and is never a teleport.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from iotsettle.oracle.daemon.store import DeviceState
from iotsettle.oracle.protocol import wire
from iotsettle.oracle.protocol.device_kinds import DeviceKind, label_of
from iotsettle.oracle.protocol.errors import ProtocolError
from iotsettle.oracle.protocol.kinds import KINDS, EventKind
from iotsettle.oracle.protocol.location import EARTH_RADIUS_M, distance_m, geohash_decode, location_geohash
from iotsettle.oracle.protocol.reasons import Reason
from iotsettle.oracle.protocol.wire import SignedEvent

#: Rule failures that count towards quarantine (only for correctly signed events of a registered device, so a
#: third party cannot get a device quarantined by sending garbage in its name).
COUNTED_FAILURES = frozenset(
    {
        Reason.REPLAYED_SEQ,
        Reason.CLOCK_SKEW,
        Reason.COUNTER_ROLLBACK,
        Reason.IMPOSSIBLE_RATE,
        Reason.INVALID_LOCATION,
        Reason.TELEPORT,
    }
)


class Outcome(StrEnum):
    ACCEPT = "accepted"
    DUPLICATE = "duplicate"
    REJECT = "rejected"


@dataclass(frozen=True, slots=True)
class RuleSettings:
    """Thresholds of the fraud rules; 0 switches a limit off."""

    max_future_skew_s: int = 300  # timestamps later than now + this are rejected
    max_age_s: int = 7 * 86_400  # timestamps older than now - this are rejected
    max_rate_meter: float = 1_000.0  # register units per second a meter may advance
    max_rate_vehicle: float = 100.0  # odometer units (metres) per second: 360 km/h
    max_rate_weather_station: float = 10.0  # e.g. rain gauge units per second
    max_speed_m_s: float = 350.0  # teleport limit for trackers: above airliner cruise speed
    quarantine_threshold: int = 5  # counted failures within the window that quarantine a device
    quarantine_window_s: float = 3_600.0

    def max_rate(self, kind: int) -> float:
        rates: dict[int, float] = {
            DeviceKind.METER: self.max_rate_meter,
            DeviceKind.VEHICLE: self.max_rate_vehicle,
            DeviceKind.WEATHER_STATION: self.max_rate_weather_station,
        }
        return rates.get(int(kind), 0.0)


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    reason: Reason | None
    detail: str
    state: DeviceState  # the device's state after this event (unchanged for a duplicate)


# ---------------------------------------------------------------------------------------------------- geohash

#: targets per device whose last register values are remembered (a meter rarely serves more than a few agreements)
MAX_REGISTERS = 16


@dataclass(frozen=True, slots=True)
class Position:
    lat: float
    lon: float
    slack_m: float  # half the diagonal of the geohash cell: how far the device may be from the centre


def decode_location(location: bytes) -> Position | None:
    """The centre of a bytes32 geohash cell; None for all zeros (no fix). Raises ProtocolError if it is not one."""
    if len(location) == 32 and not any(location):
        return None
    geohash = location_geohash(location)
    lat, lon = geohash_decode(geohash)
    bits = 5 * len(geohash)
    lat_half, lon_half = 90.0 / 2 ** (bits // 2), 180.0 / 2 ** (bits - bits // 2)
    metres_per_degree = math.pi * EARTH_RADIUS_M / 180
    return Position(lat, lon, math.hypot(lat_half, lon_half * math.cos(math.radians(lat))) * metres_per_degree)


def cells_apart_m(a: Position, b: Position) -> float:
    """The shortest distance two devices in these cells can be apart: centre distance less both slacks."""
    return max(0.0, distance_m((a.lat, a.lon), (b.lat, b.lon)) - a.slack_m - b.slack_m)


# ------------------------------------------------------------------------------------------------------ rules


def evaluate(
    event: SignedEvent,
    device: str,
    kind: int,
    state: DeviceState | None,
    now: float,
    settings: RuleSettings,
    stored_digest: Callable[[str, int], bytes | None],
) -> Verdict:
    """Apply every rule to a correctly signed event of a registered, active device.

    ``stored_digest(device, seq)`` returns the digest of an already accepted (device, seq), or None; it is only
    called when the sequence number does not advance.
    """
    current = state or DeviceState(device)
    seq = event.seq
    if current.last_seq is not None and seq <= current.last_seq:
        digest = stored_digest(device, seq)
        if digest == event.digest:
            return Verdict(Outcome.DUPLICATE, Reason.DUPLICATE, f"seq {seq} already accepted", current)
    if current.quarantined_at is not None:
        reason = current.quarantine_reason or "repeated rule failures"
        return Verdict(Outcome.REJECT, Reason.QUARANTINED, f"device quarantined: {reason}", current)
    spec = KINDS[event.type]
    msg = event.msg
    names = spec.registers
    values = (int(msg[names[0]]),) if len(names) == 1 else tuple(int(msg[name]) for name in names)
    failure = _first_failure(event, spec, values, kind, current, now, settings)
    if failure is not None:
        reason, detail = failure
        return Verdict(Outcome.REJECT, reason, detail, _count_failure(current, reason, now, settings))
    timestamp = int(msg["timestamp"])
    registers, location = current.registers, current.last_location
    if values:
        target = event.target_id
        others = tuple(r for r in registers if r[0] != target)[-(MAX_REGISTERS - 1) :]
        registers = (*others, (target, values, timestamp))
    if spec.located and any(msg["location"]):
        location = bytes(msg["location"])
    # built directly rather than with dataclasses.replace: this runs for every accepted event
    accepted = DeviceState(
        current.device,
        seq,
        registers,
        timestamp,
        location,
        current.failures,
        current.failure_window_start,
        current.quarantined_at,
        current.quarantine_reason,
    )
    return Verdict(Outcome.ACCEPT, None, "", accepted)


def _first_failure(
    event: SignedEvent,
    spec: EventKind,
    values: tuple[int, ...],
    kind: int,
    state: DeviceState,
    now: float,
    settings: RuleSettings,
) -> tuple[Reason, str] | None:
    """The first rule the event breaks; ``values`` are its registers (``spec.registers``), ``kind`` the device's."""
    seq = event.seq
    if state.last_seq is not None and seq <= state.last_seq:
        return Reason.REPLAYED_SEQ, f"seq {seq} ≤ last accepted {state.last_seq} with a different digest"
    timestamp = int(event.msg["timestamp"])
    if settings.max_future_skew_s and timestamp > now + settings.max_future_skew_s:
        return Reason.CLOCK_SKEW, f"timestamp {timestamp} is {timestamp - now:.0f} s in the future"
    if settings.max_age_s and timestamp < now - settings.max_age_s:
        return Reason.CLOCK_SKEW, f"timestamp {timestamp} is {now - timestamp:.0f} s old"
    last_time = state.last_timestamp
    if last_time is not None and timestamp < last_time:
        return Reason.CLOCK_SKEW, f"timestamp {timestamp} is before the previous event's {last_time}"
    elapsed = None if last_time is None else timestamp - last_time
    if values:
        # the registers, per target: none may go down, the first one may not rise faster than the device kind can
        # (inline rather than a helper: this runs for every reading and report)
        target = event.target_id
        # an entry with another number of registers belongs to another kind of event with the same target id
        previous = next((r for r in reversed(state.registers) if r[0] == target and len(r[1]) == len(values)), None)
        if previous is not None:
            _, last_values, register_time = previous
            if values < last_values or len(values) > 1:  # one register: the tuple comparison says it all
                for name, value, last in zip(spec.registers, values, last_values, strict=True):
                    if value < last:
                        return Reason.COUNTER_ROLLBACK, f"{name} {value} < previous {last} of {_target_text(event)}"
            limit = settings.max_rate(kind)
            increase, seconds = values[0] - last_values[0], timestamp - register_time
            if limit and increase > limit * seconds:
                return (
                    Reason.IMPOSSIBLE_RATE,
                    f"{spec.registers[0]} rose {increase} in {seconds} s, above {limit:g}/s for a {label_of(kind)}",
                )
    if not spec.located:
        return None
    try:
        here = decode_location(bytes(event.msg["location"]))
    except ProtocolError as exc:
        return Reason.INVALID_LOCATION, str(exc)
    if here is None or state.last_location is None or elapsed is None or not settings.max_speed_m_s:
        return None
    there = decode_location(state.last_location)
    if there is None:
        return None
    metres = cells_apart_m(there, here)
    if metres > settings.max_speed_m_s * elapsed:
        speed = "instantly" if elapsed == 0 else f"in {elapsed} s ({metres / elapsed:.0f} m/s)"
        return Reason.TELEPORT, f"moved {metres / 1000:.1f} km {speed}, limit {settings.max_speed_m_s:g} m/s"
    return None


def _target_text(event: SignedEvent) -> str:
    field = wire.TARGET_FIELDS[event.type]
    target = event.msg[field]
    return f"station {target}" if field == "station" else f"{field.removesuffix('Id')} {target}"


def _count_failure(state: DeviceState, reason: Reason, now: float, settings: RuleSettings) -> DeviceState:
    if reason not in COUNTED_FAILURES or not settings.quarantine_threshold:
        return state
    start = state.failure_window_start
    if start is None or now - start > settings.quarantine_window_s:
        start, failures = now, 1
    else:
        failures = state.failures + 1
    if failures >= settings.quarantine_threshold:
        return replace(
            state,
            failures=failures,
            failure_window_start=start,
            quarantined_at=now,
            quarantine_reason=f"{failures} rule failures within {settings.quarantine_window_s:g} s, last: {reason}",
        )
    return replace(state, failures=failures, failure_window_start=start)
