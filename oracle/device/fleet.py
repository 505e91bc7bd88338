"""The fleet file: which simulated devices exist, their keys, kinds and what they report on (docs/PROTOCOL.md).

::

    {"format": "iotsettle-fleet-1", "chainId": 31337,
     "contracts": {"MeteredBilling": "0x…", "DeliveryEscrow": "0x…", "DeviceRegistry": "0x…",   # optional
                   "MotorInsurance": "0x…", "CropInsurance": "0x…"},
     "devices": [
       {"name": "meter-000", "kind": "meter", "privateKey": "0x…", "agreementId": "1"},
       {"name": "tracker-000", "kind": "tracker", "keyFile": "keys/0x….json", "escrowIds": ["4"],
        "route": [[52.52, 13.405], [52.5205, 13.4072]], "speed": 11.5, "destination": "u33dbfc"},
       {"name": "vehicle-000", "kind": "vehicle", "privateKey": "0x…", "agreementId": "2", "faults": ["clock_skew"]},
       {"name": "vehicle-001", "kind": "vehicle", "privateKey": "0x…", "policyId": "…", "drivingStyle": "calm"},
       {"name": "weather-station-000", "kind": "weather_station", "privateKey": "0x…", "faults": ["hostile"]},
       {"name": "wearable-000", "kind": "wearable", "privateKey": "0x…", "policyId": "…", "activityProfile": "active",
        "cover": {"start": 1764340000, "periodLength": 604800, "periods": 52,
                  "minSteps": [35000, 56000, 84000], "minActiveMinutes": [150, 210, 300]}}]}

``contracts`` may be left out: the addresses then come from the deployment manifest of ``chainId``. Key files
are relative to the fleet file and share one password (``IOTSETTLE_DEVICE_PASSWORD`` or a password file);
``privateKey`` is for local demos only. Sequence counters persist beside each key file, or for raw keys in
``<fleet file>.seq/``.

What a device signs follows from its entry: a meter signs readings for its ``agreementId``; a vehicle signs
readings for an ``agreementId`` (pay-per-km billing) and/or telematics reports for a ``policyId`` (motor
insurance); a weather station signs weather observations (they name the station, so it needs no id), or readings
of its rainfall register if an older fleet file gives it an ``agreementId``; a tracker signs deliveries; a wearable
signs an activity summary (the tier only) of each finished period of the HealthInsurance policy ``policyId``, whose
calendar and thresholds its ``cover`` repeats, for a wearer of its ``activityProfile`` (sedentary, active, athlete).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from eth_utils import is_hex_address, to_checksum_address
from iotsettle.oracle.device.activity import WEEK_S, WEEKLY_THRESHOLDS, ActivityProfile, Cover, Thresholds
from iotsettle.oracle.device.keys import DeviceKey, create_keystore, load_keystore, parse_private_key, resolve_password
from iotsettle.oracle.device.signer import Contracts
from iotsettle.oracle.protocol.device_kinds import DeviceKind, kind_from_name, kind_name
from iotsettle.oracle.protocol.errors import ConfigError, KeyFileError
from iotsettle.oracle.protocol.location import geohash_encode

log = logging.getLogger(__name__)

FLEET_FORMAT = "iotsettle-fleet-1"
DESTINATION_PRECISION = 7  # geohash characters: a cell of about 153 m × 153 m
_MAX_UINT256 = (1 << 256) - 1

#: a few city centres the generated tracker routes start from (lat, lon)
_CITIES: tuple[tuple[float, float], ...] = (
    (52.5200, 13.4050),  # Berlin
    (48.8566, 2.3522),  # Paris
    (-1.2921, 36.8219),  # Nairobi
    (6.5244, 3.3792),  # Lagos
    (19.0760, 72.8777),  # Mumbai
    (-23.5505, -46.6333),  # São Paulo
)


class FaultClass(StrEnum):
    """A class of bad event the simulator can make a device emit, named after the reason the oracle must give."""

    BAD_SIGNATURE = "bad_signature"
    REPLAYED_SEQ = "replayed_seq"
    COUNTER_ROLLBACK = "counter_rollback"
    IMPOSSIBLE_RATE = "impossible_rate"
    CLOCK_SKEW = "clock_skew"
    TELEPORT = "teleport"
    WRONG_CHAIN = "wrong_chain"
    #: a telematics report whose harsh-braking and speeding counters went down (a unit reset to hide bad driving)
    BEHAVIOUR_ROLLBACK = "behaviour_rollback"
    #: a weather station that lies in all its observations, plausibly (the oracle accepts them; the crop season's
    #: k-of-n vote outweighs it): heavy rain in a drought, mild days in a heatwave, a dry heatwave otherwise
    HOSTILE = "hostile"
    # The classes below are valid events the oracle accepts and raises an early alert of the same name on
    # (docs/ALERTS.md): they never cost the device a refusal.
    #: a meter whose register jumps by ~500 units a second for one reading: far above its own pattern, below the
    #: impossible rate
    METER_SPIKE = "meter_spike"
    #: a tracker that also reports from one place next to its destination, again and again over the run
    TRACKER_STALLED = "tracker_stalled"
    #: an insured vehicle that keeps driving; its events are normal, the lapse is on chain (the demo gives its policy
    #: a deposit its first settled report exhausts)
    LAPSED_DRIVING = "lapsed_driving"
    #: a weather station in a cloudburst (150-200 mm/h) that its neighbours do not see
    STATION_OUTLIER = "station_outlier"

    @property
    def behaviour(self) -> bool:
        """A way the device behaves in every event (listed once, at its first), not extra events of its own."""
        return self in (FaultClass.HOSTILE, FaultClass.LAPSED_DRIVING, FaultClass.STATION_OUTLIER)

    def applies_to(self, kind: DeviceKind) -> bool:
        if kind is DeviceKind.WEARABLE:  # a wearable signs one summary per period: no fault classes yet
            return False
        if self in (FaultClass.TELEPORT, FaultClass.TRACKER_STALLED):
            return kind is DeviceKind.TRACKER
        if self is FaultClass.METER_SPIKE:
            return kind is DeviceKind.METER
        if self is FaultClass.LAPSED_DRIVING:
            return kind is DeviceKind.VEHICLE
        if self is FaultClass.STATION_OUTLIER:
            return kind is DeviceKind.WEATHER_STATION
        if self is FaultClass.BEHAVIOUR_ROLLBACK:
            return kind is DeviceKind.VEHICLE
        if self is FaultClass.HOSTILE:
            return kind is DeviceKind.WEATHER_STATION
        if self in (FaultClass.COUNTER_ROLLBACK, FaultClass.IMPOSSIBLE_RATE):
            return kind is not DeviceKind.TRACKER
        return True

    def applies_to_device(self, device: FleetDevice) -> bool:
        """Whether ``device`` can emit this class with the events its fleet entry makes it sign."""
        if not self.applies_to(device.kind):
            return False
        if self in (FaultClass.BEHAVIOUR_ROLLBACK, FaultClass.LAPSED_DRIVING):
            return device.policy_id is not None
        if self in (FaultClass.HOSTILE, FaultClass.STATION_OUTLIER):
            return "weather" in device.streams
        if self is FaultClass.METER_SPIKE:
            return "reading" in device.streams
        return True


class DrivingStyle(StrEnum):
    """How a simulated vehicle is driven: sets its harsh-braking and speeding rates per 100 km."""

    CALM = "calm"
    AVERAGE = "average"
    AGGRESSIVE = "aggressive"
    RECKLESS = "reckless"  # never drawn at random: a fleet file (or the demo) names it


@dataclass(frozen=True, slots=True)
class FleetDevice:
    name: str
    kind: DeviceKind
    key: DeviceKey
    #: agreement id (readings) or escrow ids (tracker deliveries, one per parcel, all delivered at the destination)
    targets: tuple[int, ...]
    route: tuple[tuple[float, float], ...] = ()
    speed: float = 0.0  # m/s along the route
    destination: str = ""  # geohash of the escrows' destination
    faults: tuple[FaultClass, ...] = ()
    counter_path: Path | None = None
    policy_id: int | None = None  # vehicles: the MotorInsurance policy their telematics reports are for
    driving_style: DrivingStyle | None = None  # vehicles: None = drawn from the simulation's seed
    activity_profile: ActivityProfile | None = None  # wearables: None = drawn from the simulation's seed
    cover: Cover | None = None  # wearables: the health policy's calendar and thresholds

    @property
    def address(self) -> str:
        return self.key.address

    @property
    def streams(self) -> tuple[str, ...]:
        """The payload types this device signs on each report (trackers: "delivery", on arrival)."""
        if self.kind is DeviceKind.TRACKER:
            return ("delivery",)
        streams: list[str] = []
        if self.targets:
            streams.append("reading")
        if self.policy_id is not None:
            streams.append("activity" if self.kind is DeviceKind.WEARABLE else "telematics")
        if self.kind is DeviceKind.WEATHER_STATION and not self.targets:
            streams.append("weather")
        return tuple(streams)


@dataclass(frozen=True, slots=True)
class Fleet:
    chain_id: int
    contracts: Contracts | None
    devices: tuple[FleetDevice, ...]
    path: Path

    def by_kind(self) -> dict[str, int]:
        counts = {kind_name(kind): 0 for kind in DeviceKind}
        for device in self.devices:
            counts[kind_name(device.kind)] += 1
        return counts


def _uint(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where} must be a non-negative integer")
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= _MAX_UINT256:
        raise ConfigError(f"{where} must be a non-negative integer (a decimal string for large ids)")
    return value


def _address(value: Any, where: str) -> str:
    if not (isinstance(value, str) and is_hex_address(value)):
        raise ConfigError(f"{where} must be a 0x-prefixed address")
    return to_checksum_address(value)


def _contracts(raw: Any) -> Contracts | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("fleet contracts must be an object of name → address")
    try:
        return Contracts.from_names(
            {name: _address(raw[name], f"contracts.{name}") for name in Contracts.names() if name in raw}
        )
    except KeyError as exc:
        raise ConfigError(f"fleet contracts lack {exc.args[0]}") from None


def contracts_from_manifest(manifest: Mapping[str, Any]) -> Contracts:
    """The signing domains from a deployment manifest (``deployments/<chainId>.json``); the registry and the
    insurance products are optional (a manifest written before them still works)."""
    entries = manifest.get("contracts", {})
    try:
        return Contracts.from_names(
            {name: to_checksum_address(entries[name]["address"]) for name in Contracts.names() if name in entries}
        )
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"the deployment manifest has no address for {exc}") from None


def contracts_document(contracts: Contracts) -> dict[str, str]:
    """The fleet file's ``contracts`` object for ``contracts`` (manifest names → addresses)."""
    return contracts.by_name()


def load_fleet(path: str | os.PathLike[str], *, password_file: str | os.PathLike[str] | None = None) -> Fleet:
    """Read and check a fleet file, loading every key. Raises ConfigError / KeyFileError naming the problem."""
    fleet_path = Path(path)
    try:
        document = json.loads(fleet_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read fleet file {fleet_path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"fleet file {fleet_path} is not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FLEET_FORMAT:
        raise ConfigError(f"{fleet_path} is not a fleet file (format must be {FLEET_FORMAT!r})")
    chain_id = document.get("chainId")
    if isinstance(chain_id, bool) or not isinstance(chain_id, int) or chain_id <= 0:
        raise ConfigError("fleet chainId must be a positive integer")
    raw_devices = document.get("devices")
    if not isinstance(raw_devices, list) or not raw_devices:
        raise ConfigError("fleet devices must be a non-empty list")
    password: str | None = None
    devices: list[FleetDevice] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_devices):
        where = f"devices[{index}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be an object")
        kind = kind_from_name(str(raw.get("kind", "")))
        name = str(raw.get("name") or f"{kind_name(kind)}-{index:03d}")
        if "keyFile" in raw:
            key_path = (fleet_path.parent / str(raw["keyFile"])).resolve()
            if password is None:
                password = resolve_password(password_file)
            key = load_keystore(key_path, password)
            counter_path = Path(f"{key_path}.seq")
        elif "privateKey" in raw:
            key = DeviceKey.from_private_key(str(raw["privateKey"]), kind)
            counter_path = Path(f"{fleet_path}.seq") / f"{key.address}.seq"
        else:
            raise ConfigError(f"{where} needs keyFile or privateKey")
        if key.address in seen:
            raise ConfigError(f"{where}: device {key.address} appears twice")
        seen.add(key.address)
        if kind is DeviceKind.TRACKER:
            ids = raw.get("escrowIds", [raw["escrowId"]] if "escrowId" in raw else None)
            if not isinstance(ids, list) or not ids:
                raise ConfigError(f"{where}: a tracker needs escrowIds")
            targets = tuple(_uint(value, f"{where}.escrowIds") for value in ids)
        else:
            targets = (_uint(raw["agreementId"], f"{where}.agreementId"),) if "agreementId" in raw else ()
        policy_id: int | None = None
        style: DrivingStyle | None = None
        profile: ActivityProfile | None = None
        cover: Cover | None = None
        if kind is DeviceKind.VEHICLE:
            if "policyId" in raw:
                policy_id = _uint(raw["policyId"], f"{where}.policyId")
            if "drivingStyle" in raw:
                style = _style(raw["drivingStyle"], where)
        elif kind is DeviceKind.WEARABLE:
            if "policyId" not in raw or "cover" not in raw:
                raise ConfigError(f"{where}: a wearable needs policyId and cover (its health policy)")
            policy_id = _uint(raw["policyId"], f"{where}.policyId")
            cover = _cover(raw["cover"], where)
            if "activityProfile" in raw:
                profile = _profile(raw["activityProfile"], where)
        elif "policyId" in raw or "drivingStyle" in raw:
            raise ConfigError(f"{where}: only vehicles and wearables take policyId, only vehicles drivingStyle")
        if kind is not DeviceKind.WEARABLE and ("cover" in raw or "activityProfile" in raw):
            raise ConfigError(f"{where}: only wearables take cover and activityProfile")
        if kind is DeviceKind.METER and not targets:
            raise ConfigError(f"{where}: a meter needs agreementId")
        if kind is DeviceKind.VEHICLE and not targets and policy_id is None:
            raise ConfigError(f"{where}: a vehicle needs agreementId (billing) or policyId (motor insurance)")
        route: tuple[tuple[float, float], ...] = ()
        speed = 0.0
        destination = ""
        if kind is DeviceKind.TRACKER:
            route, speed, destination = _route(raw, where)
        entry = FleetDevice(
            name, kind, key, targets, route, speed, destination, (), counter_path, policy_id, style, profile, cover
        )
        faults = tuple(_fault(value, entry, where) for value in raw.get("faults", []))
        devices.append(dataclasses.replace(entry, faults=faults))
    return Fleet(chain_id, _contracts(document.get("contracts")), tuple(devices), fleet_path)


def _fault(value: Any, device: FleetDevice, where: str) -> FaultClass:
    try:
        fault = FaultClass(str(value))
    except ValueError:
        raise ConfigError(f"{where}: unknown fault {value!r} (one of {', '.join(FaultClass)})") from None
    if not fault.applies_to(device.kind):
        raise ConfigError(f"{where}: a {kind_name(device.kind)} cannot emit {fault}")
    if not fault.applies_to_device(device):
        raise ConfigError(
            f"{where}: {fault} needs a device that signs "
            f"{'telematics (a policyId)' if fault is FaultClass.BEHAVIOUR_ROLLBACK else 'weather observations'}"
        )
    return fault


def _style(value: Any, where: str) -> DrivingStyle:
    try:
        return DrivingStyle(str(value))
    except ValueError:
        raise ConfigError(f"{where}: unknown drivingStyle {value!r} (one of {', '.join(DrivingStyle)})") from None


def _profile(value: Any, where: str) -> ActivityProfile:
    try:
        return ActivityProfile(str(value))
    except ValueError:
        raise ConfigError(f"{where}: unknown activityProfile {value!r} (one of {', '.join(ActivityProfile)})") from None


def _cover(raw: Any, where: str) -> Cover:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}.cover must be an object (start, periodLength, periods, minSteps, minActiveMinutes)")
    try:
        steps, minutes = raw["minSteps"], raw["minActiveMinutes"]
        if not (isinstance(steps, list) and isinstance(minutes, list) and len(steps) == len(minutes) == 3):
            raise ConfigError(f"{where}.cover: minSteps and minActiveMinutes are lists of three")
        cover = Cover(
            _uint(raw["start"], f"{where}.cover.start"),
            _uint(raw["periodLength"], f"{where}.cover.periodLength"),
            _uint(raw["periods"], f"{where}.cover.periods"),
            Thresholds(
                (_uint(steps[0], where), _uint(steps[1], where), _uint(steps[2], where)),
                (_uint(minutes[0], where), _uint(minutes[1], where), _uint(minutes[2], where)),
            ),
        )
    except KeyError as exc:
        raise ConfigError(f"{where}.cover lacks {exc.args[0]}") from None
    if cover.period_length == 0 or cover.periods == 0:
        raise ConfigError(f"{where}.cover: periodLength and periods must be positive")
    return cover


def _route(raw: dict[str, Any], where: str) -> tuple[tuple[tuple[float, float], ...], float, str]:
    points = raw.get("route")
    if not isinstance(points, list) or len(points) < 2:
        raise ConfigError(f"{where}: a tracker needs a route of at least two [lat, lon] points")
    route: list[tuple[float, float]] = []
    for point in points:
        if not (isinstance(point, list) and len(point) == 2 and all(isinstance(c, (int, float)) for c in point)):
            raise ConfigError(f"{where}: route points must be [lat, lon]")
        lat, lon = float(point[0]), float(point[1])
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise ConfigError(f"{where}: route point {point} is not a latitude/longitude")
        route.append((lat, lon))
    speed = raw.get("speed", 12.0)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0 < speed <= 100:
        raise ConfigError(f"{where}: speed must be in (0, 100] m/s")
    destination = raw.get("destination") or geohash_encode(*route[-1], DESTINATION_PRECISION)
    if not isinstance(destination, str):
        raise ConfigError(f"{where}: destination must be a geohash string")
    try:
        if geohash_encode(*route[-1], len(destination)) != destination:
            raise ConfigError(f"{where}: the route does not end inside the destination cell {destination}")
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return tuple(route), float(speed), destination


def _generated_route(rng: random.Random) -> tuple[list[list[float]], float]:
    """A last-leg courier route: 3 legs from a city centre, arriving 8-20 s after the start at 8-14 m/s."""
    lat, lon = rng.choice(_CITIES)
    lat += rng.uniform(-0.03, 0.03)
    lon += rng.uniform(-0.03, 0.03)
    speed = rng.uniform(8.0, 14.0)
    total = speed * rng.uniform(8.0, 20.0)
    heading = rng.uniform(0, 2 * math.pi)
    points = [[round(lat, 6), round(lon, 6)]]
    for _ in range(3):
        heading += rng.uniform(-0.8, 0.8)
        leg = total / 3
        lat += leg * math.cos(heading) / 111_320
        lon += leg * math.sin(heading) / (111_320 * math.cos(math.radians(lat)))
        points.append([round(lat, 6), round(lon, 6)])
    return points, round(speed, 2)


def generate_fleet(
    out_dir: str | os.PathLike[str],
    *,
    chain_id: int,
    contracts: Contracts | None = None,
    meters: int = 2,
    trackers: int = 1,
    vehicles: int = 1,
    weather_stations: int = 1,
    wearables: int = 0,
    seed: int = 1,
    keystores: bool = False,
    password: str | None = None,
    kdf_iterations: int | None = None,
    targets: Mapping[str, Sequence[int]] | None = None,
    vehicle_policies: bool = False,
) -> Path:
    """Create keys and ``<out_dir>/fleet.json`` for a demo fleet; returns the fleet file path.

    Keys are fresh random keys: raw in the file (``keystores=False``, local demos) or keystores under
    ``<out_dir>/keys`` encrypted with ``password``. Routes and placeholder ids come from ``seed``; ``targets``
    (device name → agreement id, policy id with ``vehicle_policies``, or escrow ids for trackers) replaces the
    placeholders, or edit them later with ``set_targets`` / ``set_policies``. Vehicles get an ``agreementId``
    (pay-per-km billing) or, with ``vehicle_policies``, a ``policyId`` (motor insurance); weather stations need no
    id (their observations name the station; given ``contracts`` without CropInsurance they get an ``agreementId``
    and sign readings of their rain register, as before the insurance products). Refuses to overwrite an existing
    fleet file.
    """
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    fleet_path = directory / "fleet.json"
    if fleet_path.exists():
        raise ConfigError(f"{fleet_path} already exists; refusing to overwrite a fleet")
    if keystores and not password:
        raise KeyFileError("keystores need a password")
    rng = random.Random(f"iotsettle-fleet:{seed}")
    # Against a deployment without CropInsurance, stations keep signing readings of their rain register.
    observations = contracts is None or contracts.crop_insurance is not None
    plan = [
        (DeviceKind.METER, meters),
        (DeviceKind.TRACKER, trackers),
        (DeviceKind.VEHICLE, vehicles),
        (DeviceKind.WEATHER_STATION, weather_stations),
        (DeviceKind.WEARABLE, wearables),
    ]
    devices: list[dict[str, Any]] = []
    next_id = 1
    for kind, count in plan:
        for index in range(count):
            name = f"{kind_name(kind).replace('_', '-')}-{index:03d}"
            entry: dict[str, Any] = {"name": name, "kind": kind_name(kind)}
            if keystores:
                key = create_keystore(
                    directory / "keys", password or "", kind=kind, kdf="pbkdf2", iterations=kdf_iterations
                )
                entry["address"] = key.address
                entry["keyFile"] = os.path.relpath(key.path or "", directory)
            else:
                key = DeviceKey.from_private_key(_random_key(), kind)
                entry["address"] = key.address
                entry["privateKey"] = "0x" + key.private_key.hex()
            chosen = list((targets or {}).get(name, ()))
            if kind is DeviceKind.TRACKER:
                entry["escrowIds"] = [str(value) for value in chosen] or [str(next_id)]
                route, speed = _generated_route(rng)
                entry["route"] = route
                entry["speed"] = speed
                entry["destination"] = geohash_encode(route[-1][0], route[-1][1], DESTINATION_PRECISION)
            elif kind is DeviceKind.VEHICLE and vehicle_policies:
                entry["policyId"] = str(chosen[0]) if chosen else str(next_id)
            elif kind is DeviceKind.WEARABLE:
                # a placeholder policy of weekly periods from now: `set_health_policies` (or an edit) names the real one
                entry["policyId"] = str(chosen[0]) if chosen else str(next_id)
                entry["cover"] = Cover(0, WEEK_S, 52, WEEKLY_THRESHOLDS).as_dict()
            elif kind is not DeviceKind.WEATHER_STATION or not observations:
                entry["agreementId"] = str(chosen[0]) if chosen else str(next_id)
            next_id += 1
            devices.append(entry)
    document: dict[str, Any] = {"format": FLEET_FORMAT, "chainId": chain_id}
    if contracts is not None:
        document["contracts"] = contracts_document(contracts)
    document["devices"] = devices
    _write_private_json(fleet_path, document)
    return fleet_path


def _random_key() -> bytes:
    while True:
        try:
            return parse_private_key(secrets.token_bytes(32))
        except KeyFileError:
            continue


def _write_private_json(path: Path, document: dict[str, Any]) -> None:
    """Fleet files may hold raw demo keys: write them 0600, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)


def set_targets(fleet_path: str | os.PathLike[str], targets: Mapping[str, Sequence[int]]) -> None:
    """Point devices (by name or address) at real agreement / escrow ids, e.g. after creating them on-chain."""
    path = Path(fleet_path)
    document = json.loads(path.read_text(encoding="utf-8"))
    wanted = {key.lower(): list(values) for key, values in targets.items()}
    for entry in document["devices"]:
        ids = wanted.get(str(entry.get("name", "")).lower()) or wanted.get(str(entry.get("address", "")).lower())
        if not ids:
            continue
        if entry["kind"] == "tracker":
            entry["escrowIds"] = [str(value) for value in ids]
        else:
            entry["agreementId"] = str(ids[0])
    _write_private_json(path, document)


def set_health_policies(
    fleet_path: str | os.PathLike[str],
    policies: Mapping[str, tuple[int, Cover]],
    *,
    profiles: Mapping[str, ActivityProfile] | None = None,
) -> None:
    """Point wearables (by name or address) at HealthInsurance policies: the id and the cover the device reads from
    the policy on chain (calendar, thresholds), and optionally the wearer's activity profile."""
    path = Path(fleet_path)
    document = json.loads(path.read_text(encoding="utf-8"))
    wanted = {key.lower(): value for key, value in policies.items()}
    chosen = {key.lower(): value for key, value in (profiles or {}).items()}
    for entry in document["devices"]:
        names = (str(entry.get("name", "")).lower(), str(entry.get("address", "")).lower())
        policy = next((wanted[n] for n in names if n in wanted), None)
        if policy is not None:
            if entry["kind"] != "wearable":
                raise ConfigError(f"{entry.get('name')} is a {entry['kind']}: only wearables hold health policies")
            entry["policyId"] = str(policy[0])
            entry["cover"] = policy[1].as_dict()
        profile = next((chosen[n] for n in names if n in chosen), None)
        if profile is not None:
            entry["activityProfile"] = str(profile)
    _write_private_json(path, document)


def set_policies(
    fleet_path: str | os.PathLike[str],
    policies: Mapping[str, int],
    *,
    styles: Mapping[str, DrivingStyle] | None = None,
    faults: Mapping[str, Sequence[FaultClass]] | None = None,
) -> None:
    """Point vehicles (by name or address) at MotorInsurance policies (replacing a billing ``agreementId``), and
    optionally fix their driving style; ``faults`` (device name or address → classes) adds fault classes to any
    device, e.g. a hostile weather station."""
    path = Path(fleet_path)
    document = json.loads(path.read_text(encoding="utf-8"))
    wanted = {key.lower(): value for key, value in policies.items()}
    chosen = {key.lower(): value for key, value in (styles or {}).items()}
    extra = {key.lower(): list(values) for key, values in (faults or {}).items()}
    for entry in document["devices"]:
        names = (str(entry.get("name", "")).lower(), str(entry.get("address", "")).lower())
        policy = next((wanted[n] for n in names if n in wanted), None)
        if policy is not None:
            if entry["kind"] != "vehicle":
                raise ConfigError(f"{entry.get('name')} is a {entry['kind']}: only vehicles hold motor policies")
            entry["policyId"] = str(policy)
            entry.pop("agreementId", None)
        style = next((chosen[n] for n in names if n in chosen), None)
        if style is not None:
            entry["drivingStyle"] = str(style)
        added = next((extra[n] for n in names if n in extra), None)
        if added:
            entry["faults"] = list(dict.fromkeys([*entry.get("faults", []), *(str(f) for f in added)]))
    _write_private_json(path, document)
