"""Faults a simulated fleet injects, and the reply (and early alert) the oracle must give to each.

Faults (``FaultClass``) are extra events of a chosen device, each built to be refused with the reason of the same
name (``behaviour_rollback``: ``counter_rollback``); the run's result lists every one with its (device, seq) so a
test can check the oracle's replies. ``hostile`` is no extra event but a station whose every observation lies
plausibly: the oracle accepts them (expected reply "accepted", listed once at its first observation) and the crop
season's k-of-n vote outweighs it. The alert classes (``ALERT_OF_FAULT``) are accepted too, and each raises the early
alert of its name (docs/ALERTS.md): ``meter_spike`` is one reading (the next one whose timestamp moves on after its
planned time), ``tracker_stalled`` extra deliveries from one place, ``lapsed_driving`` and ``station_outlier`` ways the
device behaves throughout (listed once, at its first event).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from iotsettle.oracle.device.fleet import FaultClass, Fleet, FleetDevice
from iotsettle.oracle.device.sim.models import TrackerModel
from iotsettle.oracle.protocol.alerts import AlertKind
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.kinds import KINDS
from iotsettle.oracle.protocol.location import geohash_encode, location_bytes32
from iotsettle.oracle.protocol.wire import SignedEvent

if TYPE_CHECKING:
    from iotsettle.oracle.device.sim.plan import DeviceRun

log = logging.getLogger(__name__)

#: the oracle's reply each fault class must produce (a hostile station's lies are plausible: accepted)
EXPECTED_REASON: dict[FaultClass, str] = {
    **{fault: fault.value for fault in FaultClass},
    FaultClass.BEHAVIOUR_ROLLBACK: "counter_rollback",
    FaultClass.HOSTILE: "accepted",
    FaultClass.METER_SPIKE: "accepted",
    FaultClass.TRACKER_STALLED: "accepted",
    FaultClass.LAPSED_DRIVING: "accepted",
    FaultClass.STATION_OUTLIER: "accepted",
}
#: the early alert each alert class raises (``iotsettle.oracle.protocol.alerts``)
ALERT_OF_FAULT: dict[FaultClass, AlertKind] = {
    fault: AlertKind(fault.value) for fault in FaultClass if fault.value in set(AlertKind)
}
SPIKE_RATE = 500  # meter_spike: register units per second added for one reading (the impossible rate is 1000/s)
STALL_OFFSET_DEG = 0.0015  # tracker_stalled: ~170 m north of the destination, the neighbouring geohash cell
CLOCK_SKEW_SECONDS = 3_600  # far beyond the oracle's default tolerance of 300 s
IMPOSSIBLE_JUMP = 10_000_000_000  # register units in ~1 s: above every kind's plausible rate, still a uint64


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

    # The refused classes pick before the accepted ones (a device with several refused classes could be quarantined
    # and its other faults answered "quarantined"), and within each group the classes few devices can emit
    # (teleport, behaviour_rollback, hostile) pick first, so a generic class does not take the only device that could.
    def order_key(fault: FaultClass) -> tuple[bool, int]:
        return EXPECTED_REASON[fault] == "accepted", len(eligible_for(fault))

    for fault in sorted(dict.fromkeys(faults), key=order_key):
        eligible = eligible_for(fault)
        if fault.behaviour:  # one way of behaving per device (a hostile station is not also in a cloudburst)
            eligible = [device for device in eligible if not any(c.behaviour for c in chosen[device.address])]
        if not eligible:
            log.warning("no device in the fleet can emit %s; skipped", fault)
            continue
        free = [device for device in eligible if device.address not in busy]
        target = (free or eligible)[0]
        if fault not in chosen[target.address]:
            chosen[target.address].append(fault)
        busy.add(target.address)
    return {address: tuple(classes) for address, classes in chosen.items() if classes}


def fault_event(run: DeviceRun, fault: FaultClass, timestamp: int, elapsed: float) -> SignedEvent | None:
    """A bad event of class ``fault``, or None when the device has nothing to build it from yet."""
    tracker = isinstance(run.model, TrackerModel)
    if fault is FaultClass.REPLAYED_SEQ:
        if run.last_event is None:
            return None
        msg = dict(run.last_event.msg)
        # a different signed value under the same seq: a register, or a delivery's temperature
        changed = (KINDS[run.last_event.type].registers or ("maxTemperature",))[0]
        msg[changed] = int(msg[changed]) + 1
        return run.sign(run.last_event.type, msg)
    if fault is FaultClass.TELEPORT:
        lat, lon = run.tracker.route[-1]
        far = (-lat, lon + 180.0 if lon <= 0 else lon - 180.0)
        return run.sign("delivery", _delivery_from(run, far, timestamp, elapsed))
    if fault is FaultClass.TRACKER_STALLED:
        lat, lon = run.tracker.route[-1]
        # not the destination itself: the escrow must still be confirmed by the real arrival
        return run.sign("delivery", _delivery_from(run, (lat + STALL_OFFSET_DEG, lon), timestamp, elapsed))
    if tracker:
        msg = _delivery_from(run, run.tracker.position(elapsed), timestamp, elapsed)
        event_type = "delivery"
    else:
        event_type = "telematics" if fault is FaultClass.BEHAVIOUR_ROLLBACK else run.streams[0]
        msg = run.message(event_type, timestamp, observe=False)
        register = KINDS[event_type].registers[0]  # the rate-limited register
        last = run.last.get(event_type)
        if fault is FaultClass.COUNTER_ROLLBACK:
            below = min(int(msg[register]), int(last.msg[register]) if last is not None else int(msg[register]))
            msg[register] = max(0, below - run.rng.randint(1, 500))
        elif fault is FaultClass.BEHAVIOUR_ROLLBACK:
            before = last.msg if last is not None else msg
            if int(before["harshBraking"]) + int(before["speeding"]) == 0:
                # Nothing counted yet: a unit that claims less distance is the same tampering, same reason.
                msg["odometer"] = max(0, min(int(msg["odometer"]), int(before["odometer"])) - run.rng.randint(1, 500))
            else:
                msg["harshBraking"] = max(0, int(before["harshBraking"]) - 1)
                msg["speeding"] = max(0, int(before["speeding"]) - 1)
        elif fault is FaultClass.IMPOSSIBLE_RATE:
            msg[register] = int(msg[register]) + IMPOSSIBLE_JUMP
    if fault is FaultClass.CLOCK_SKEW:
        msg["timestamp"] = timestamp + CLOCK_SKEW_SECONDS
    if fault is FaultClass.WRONG_CHAIN:
        return run.sign(event_type, msg, chain_id=run.chain_id + 1)
    event = run.sign(event_type, msg)
    if fault is FaultClass.BAD_SIGNATURE:
        # A flipped bit in r: the signature still parses but recovers to another address (or to none).
        corrupted = bytearray(event.sig)
        corrupted[31] ^= 0x01
        event = replace(event, sig=bytes(corrupted))
    return event


def _delivery_from(run: DeviceRun, where: tuple[float, float], timestamp: int, elapsed: float) -> dict[str, Any]:
    """A delivery message of the tracker's first escrow, located at ``where`` (lat, lon), with the next seq."""
    location = geohash_encode(*where, len(run.device.destination) or 7)
    return {
        "escrowId": run.device.targets[0],
        "seq": run.counter.next(),
        "timestamp": timestamp,
        "location": location_bytes32(location),
        "maxTemperature": run.tracker.max_temperature_until(elapsed),
    }
