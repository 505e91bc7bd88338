"""The ``location`` field of a Delivery: a geohash in ASCII, left-aligned in bytes32, zero-padded.

A geohash names a cell; its length is the precision (7 characters ≈ 153 m × 153 m, 9 ≈ 4.8 m × 4.8 m). A tracker
encodes its position at the precision of the escrow's destination, so arriving anywhere in the destination cell
produces exactly the destination's bytes32. The oracle decodes it back to the cell centre for the teleport rule.
"""

from __future__ import annotations

import math

from iotsettle.oracle.protocol.errors import ProtocolError

_ALPHABET = "0123456789bcdefghjkmnpqrstuvwxyz"
_INDEX = {char: value for value, char in enumerate(_ALPHABET)}
MAX_PRECISION = 12
EARTH_RADIUS_M = 6_371_008.8


def geohash_encode(lat: float, lon: float, precision: int = 9) -> str:
    """The geohash of (lat, lon) in degrees with ``precision`` characters (1..12)."""
    if not 1 <= precision <= MAX_PRECISION:
        raise ValueError(f"geohash precision must be 1..{MAX_PRECISION}")
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ValueError(f"({lat}, {lon}) is not a latitude/longitude in degrees")
    lat_range, lon_range = [-90.0, 90.0], [-180.0, 180.0]
    chars: list[str] = []
    bits = 0
    value = 0
    even = True  # geohash interleaves bits starting with longitude
    while len(chars) < precision:
        interval, coordinate = (lon_range, lon) if even else (lat_range, lat)
        middle = (interval[0] + interval[1]) / 2
        if coordinate >= middle:
            value = value << 1 | 1
            interval[0] = middle
        else:
            value <<= 1
            interval[1] = middle
        even = not even
        bits += 1
        if bits == 5:
            chars.append(_ALPHABET[value])
            bits = value = 0
    return "".join(chars)


def geohash_decode(geohash: str) -> tuple[float, float]:
    """The centre (lat, lon) of a geohash cell."""
    lat_range, lon_range = [-90.0, 90.0], [-180.0, 180.0]
    even = True
    for char in geohash:
        if char not in _INDEX:
            raise ValueError(f"{char!r} is not a geohash character")
        value = _INDEX[char]
        for shift in range(4, -1, -1):
            interval = lon_range if even else lat_range
            middle = (interval[0] + interval[1]) / 2
            if value >> shift & 1:
                interval[0] = middle
            else:
                interval[1] = middle
            even = not even
    return (lat_range[0] + lat_range[1]) / 2, (lon_range[0] + lon_range[1]) / 2


def location_bytes32(geohash: str) -> bytes:
    """bytes32 for a geohash: ASCII, left-aligned, right-padded with 0x00."""
    if not 1 <= len(geohash) <= MAX_PRECISION or any(char not in _INDEX for char in geohash):
        raise ValueError(f"{geohash!r} is not a geohash of 1..{MAX_PRECISION} characters")
    return geohash.encode("ascii").ljust(32, b"\x00")


def location_geohash(location: bytes) -> str:
    """The geohash inside a Delivery ``location``; ProtocolError if it is not one."""
    if len(location) != 32:
        raise ProtocolError("location must be 32 bytes")
    text = location.rstrip(b"\x00")
    if not 1 <= len(text) <= MAX_PRECISION or any(chr(byte) not in _INDEX for byte in text):
        raise ProtocolError("location is not a left-aligned ASCII geohash padded with zero bytes")
    return text.decode("ascii")


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in metres (haversine)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))
