"""Packed batch encodings: batch functions that take one ``bytes`` argument of items packed back to back.

A packed item is the kind's signed fields in signing order, each big-endian in the width the contract stores
(``PACKED_WIDTHS``, bytes per field; an address as its 20 bytes, a signed field of ``PACKED_SIGNED`` in two's
complement), then the ERC-2098 compact signature r ‖ vs (32 bytes each), then for the kinds in ``TERMS_SIZE`` the
agreement's terms as the contract's view returns them (telematics: the policy's ``telematicsTerms``; the contract
checks them against a seal and reads its own copy when they do not match, so ``UNKNOWN_TERMS`` of the kind only
costs gas). The signed
EIP-712 message is unchanged: only its transport to the contract is narrower, so a field beyond its width cannot
be packed (``ValueError``) — the contract would refuse it anyway (``ValueOutOfRange`` / ``TimestampInFuture``).
The contracts document the same layouts (``IMeteredBilling.settle``, ``IMotorInsurance.settle``,
``ICropInsurance.record``, ``IHealthInsurance.settle``).
"""

from __future__ import annotations

from collections.abc import Sequence

#: kind → bytes per signed field in signing order (reading: agreementId, seq, timestamp, value; telematics:
#: policyId, seq, timestamp, odometer, harshBraking, speeding — the signed widths, so every signed report packs;
#: weather: station, seq, timestamp, rainfall, maxTemperature; activity: policyId, seq, timestamp, period, tier)
PACKED_WIDTHS: dict[str, tuple[int, ...]] = {
    "reading": (32, 5, 5, 8),
    "telematics": (32, 8, 8, 8, 4, 4),
    "weather": (20, 8, 8, 8, 4),
    "activity": (32, 8, 8, 4, 1),
}

#: kind → the indexes of its signed (two's complement) fields
PACKED_SIGNED: dict[str, frozenset[int]] = {"weather": frozenset({4})}

#: kind → bytes of the terms sent after the signature (telematics: ``MotorInsurance.telematicsTerms``, ratePerKm 16 ‖
#: closeAt 8 ‖ startSpeeding 4 ‖ startHarsh 4 ‖ startOdometer 8 ‖ stepBps 2 ‖ maxFactorBps 2 ‖ minFactorBps 2)
TERMS_SIZE: dict[str, int] = {"telematics": 46}

#: kind → the terms a relayer sends when it does not know them: they match no seal, so the contract reads its own
UNKNOWN_TERMS: dict[str, bytes] = {kind: bytes(size) for kind, size in TERMS_SIZE.items()}


def item_size(kind: str) -> int:
    """Bytes per packed item of ``kind``, signature and terms included."""
    return sum(PACKED_WIDTHS[kind]) + 64 + TERMS_SIZE.get(kind, 0)


def pack_item(kind: str, fields: Sequence[int | str | bytes], r: bytes, vs: bytes, terms: bytes | None = None) -> bytes:
    """One packed item; ValueError if a field does not fit its width, the signature is not 32 + 32 bytes or the
    terms are not the kind's size. A kind with terms gets ``UNKNOWN_TERMS`` when ``terms`` is None.

    An integer field is big-endian (two's complement for the kind's ``PACKED_SIGNED`` fields); an address is its
    bytes or its ``0x`` hex text, exactly as wide as the field."""
    widths = PACKED_WIDTHS[kind]
    signed = PACKED_SIGNED.get(kind, frozenset())
    if len(fields) != len(widths):
        raise ValueError(f"a packed {kind} has {len(widths)} fields, got {len(fields)}")
    if len(r) != 32 or len(vs) != 32:
        raise ValueError("r and vs must be 32 bytes each")
    tail = UNKNOWN_TERMS.get(kind, b"") if terms is None else bytes(terms)
    if len(tail) != TERMS_SIZE.get(kind, 0):
        raise ValueError(f"the terms of a packed {kind} are {TERMS_SIZE.get(kind, 0)} bytes, got {len(tail)}")
    out = bytearray()
    for index, (width, value) in enumerate(zip(widths, fields, strict=True)):
        out += _field(value, width, index in signed)
    return bytes(out + r + vs + tail)


def _field(value: int | str | bytes, width: int, signed: bool) -> bytes:
    if isinstance(value, str):
        text = value.removeprefix("0x").removeprefix("0X")
        try:
            value = bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"{value!r} is not hex") from None
    if isinstance(value, bytes | bytearray):
        if len(value) != width:
            raise ValueError(f"0x{bytes(value).hex()} is not {width} bytes")
        return bytes(value)
    bits = 8 * width
    low, high = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
        raise ValueError(f"{value!r} does not fit {width} bytes")
    return value.to_bytes(width, "big", signed=signed)


def bytes_argument(items: Sequence[bytes]) -> bytes:
    """The ABI encoding of one ``bytes`` argument holding ``items`` back to back (offset, length, padded data)."""
    data = b"".join(items)
    return (32).to_bytes(32, "big") + len(data).to_bytes(32, "big") + data + bytes(-len(data) % 32)
