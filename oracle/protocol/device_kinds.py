"""What a registered device is: the kind's number on chain, its name in files and on the command line, its label.

- number: ``DeviceRegistry`` stores the kind as a uint8 (the ``kind`` field of the signed Registration); 0 is no
  device (an address never registered);
- name: ``weather_station`` — fleet files, keystores, ``--kind`` of ``device keygen`` / ``device register`` and the
  simulator's counts (a fleet file may also write ``weather-station``, in any case);
- label: ``weather station`` — sentences for people and ``--kind`` of ``device list``.
"""

from __future__ import annotations

from enum import IntEnum

from iotsettle.oracle.protocol.errors import ConfigError


class DeviceKind(IntEnum):
    """What a registered device is. Stored on-chain as uint8; 0 is invalid."""

    METER = 1
    TRACKER = 2
    VEHICLE = 3
    WEATHER_STATION = 4
    WEARABLE = 5


def kind_name(kind: DeviceKind) -> str:
    """``weather_station``: the kind in fleet files, keystores and options."""
    return kind.name.lower()


def kind_label(kind: DeviceKind) -> str:
    """``weather station``: the kind in a sentence."""
    return kind.name.lower().replace("_", " ")


def kind_from_name(name: str) -> DeviceKind:
    """The kind called ``name`` (``weather_station``, ``weather-station``, any case); ConfigError naming the choices."""
    try:
        return DeviceKind[name.strip().upper().replace("-", "_")]
    except KeyError:
        choices = ", ".join(kind_name(kind) for kind in DeviceKind)
        raise ConfigError(f"unknown device kind {name!r} (one of {choices})") from None


def label_of(number: int) -> str:
    """The label of the kind stored as ``number`` on chain; ``kind 7`` for a number this version does not know."""
    try:
        return kind_label(DeviceKind(number))
    except ValueError:
        return f"kind {number}"
