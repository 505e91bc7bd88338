"""Packed batch encodings: batch functions that take one ``bytes`` argument of items packed back to back.

A packed item is the kind's signed fields in signing order, each big-endian in the width the contract stores
(``PACKED_WIDTHS``, bytes per field), then the ERC-2098 compact signature r ‖ vs (32 bytes each), then for the
kinds in ``TERMS_SIZE`` the agreement's terms as the contract's view returns them (telematics: the policy's
``telematicsTerms``; the contract checks them against a seal and reads its own copy when they do not match, so
``UNKNOWN_TERMS`` of the kind only costs gas). The signed
EIP-712 message is unchanged: only its transport to the contract is narrower, so a field beyond its width cannot
be packed (``ValueError``) — the contract would refuse it anyway (``ValueOutOfRange`` / ``TimestampInFuture``).
The contracts document the same layouts (``IMeteredBilling.settle``, ``IMotorInsurance.settle``).
"""

from __future__ import annotations

from collections.abc import Sequence

#: kind → bytes per signed field in signing order (reading: agreementId, seq, timestamp, value; telematics:
#: policyId, seq, timestamp, odometer, harshBraking, speeding — the signed widths, so every signed report packs)
PACKED_WIDTHS: dict[str, tuple[int, ...]] = {"reading": (32, 5, 5, 8), "telematics": (32, 8, 8, 8, 4, 4)}

#: kind → bytes of the terms sent after the signature (telematics: ``MotorInsurance.telematicsTerms``, ratePerKm 16 ‖
#: closeAt 8 ‖ startSpeeding 4 ‖ startHarsh 4 ‖ startOdometer 8 ‖ stepBps 2 ‖ maxFactorBps 2 ‖ minFactorBps 2)
TERMS_SIZE: dict[str, int] = {"telematics": 46}

#: kind → the terms a relayer sends when it does not know them: they match no seal, so the contract reads its own
UNKNOWN_TERMS: dict[str, bytes] = {kind: bytes(size) for kind, size in TERMS_SIZE.items()}


def item_size(kind: str) -> int:
    """Bytes per packed item of ``kind``, signature and terms included."""
    return sum(PACKED_WIDTHS[kind]) + 64 + TERMS_SIZE.get(kind, 0)


def pack_item(kind: str, fields: Sequence[int], r: bytes, vs: bytes, terms: bytes | None = None) -> bytes:
    """One packed item; ValueError if a field does not fit its width, the signature is not 32 + 32 bytes or the
    terms are not the kind's size. A kind with terms gets ``UNKNOWN_TERMS`` when ``terms`` is None."""
    widths = PACKED_WIDTHS[kind]
    if len(fields) != len(widths):
        raise ValueError(f"a packed {kind} has {len(widths)} fields, got {len(fields)}")
    if len(r) != 32 or len(vs) != 32:
        raise ValueError("r and vs must be 32 bytes each")
    tail = UNKNOWN_TERMS.get(kind, b"") if terms is None else bytes(terms)
    if len(tail) != TERMS_SIZE.get(kind, 0):
        raise ValueError(f"the terms of a packed {kind} are {TERMS_SIZE.get(kind, 0)} bytes, got {len(tail)}")
    out = bytearray()
    for width, value in zip(widths, fields, strict=True):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << (8 * width):
            raise ValueError(f"{value!r} does not fit {width} bytes")
        out += value.to_bytes(width, "big")
    return bytes(out + r + vs + tail)


def bytes_argument(items: Sequence[bytes]) -> bytes:
    """The ABI encoding of one ``bytes`` argument holding ``items`` back to back (offset, length, padded data)."""
    data = b"".join(items)
    return (32).to_bytes(32, "big") + len(data).to_bytes(32, "big") + data + bytes(-len(data) % 32)
