"""The record of ``MotorInsurance.PremiumCharged(policyId indexed, record, amount)``: one settled report packed
into one word, the layout every reader of the event decodes here (IMotorInsurance.PremiumCharged).

From the high bits: ``seq`` 192..255 ‖ ``metres`` 128..191 ‖ ``harshBraking`` 96..127 ‖ ``speeding`` 64..95 ‖
``factorBps`` 48..63; the low 48 bits are zero. ``metres``, ``harshBraking`` and ``speeding`` are the deltas since
the previous settled report of the policy, ``factorBps`` the factor of the totals since the offer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: the event whose ``record`` argument this module decodes
EVENT = "PremiumCharged"

#: field → (lowest bit, width in bits) in the record word
LAYOUT: dict[str, tuple[int, int]] = {
    "seq": (192, 64),
    "metres": (128, 64),
    "harshBraking": (96, 32),
    "speeding": (64, 32),
    "factorBps": (48, 16),
}


@dataclass(frozen=True, slots=True)
class PremiumRecord:
    """The fields of one ``PremiumCharged`` record."""

    seq: int
    metres: int
    harsh_braking: int
    speeding: int
    factor_bps: int

    def as_args(self) -> dict[str, int]:
        """The fields under the event's argument names (``seq``, ``metres``, ``harshBraking``, ...)."""
        return {
            "seq": self.seq,
            "metres": self.metres,
            "harshBraking": self.harsh_braking,
            "speeding": self.speeding,
            "factorBps": self.factor_bps,
        }


def unpack(record: int | bytes) -> PremiumRecord:
    """The fields of a record word (an integer, or its 32 bytes as a log carries them)."""
    word = int.from_bytes(record, "big") if isinstance(record, bytes | bytearray) else int(record)
    if not 0 <= word < 1 << 256:
        raise ValueError(f"a PremiumCharged record is one word, got {word}")
    values = {name: (word >> low) & ((1 << width) - 1) for name, (low, width) in LAYOUT.items()}
    return PremiumRecord(
        values["seq"], values["metres"], values["harshBraking"], values["speeding"], values["factorBps"]
    )


def pack(seq: int, metres: int, harsh_braking: int, speeding: int, factor_bps: int) -> int:
    """The record word of these fields; ValueError if one does not fit its width."""
    word = 0
    for name, value in zip(LAYOUT, (seq, metres, harsh_braking, speeding, factor_bps), strict=True):
        low, width = LAYOUT[name]
        if not 0 <= value < 1 << width:
            raise ValueError(f"{name} {value} does not fit {width} bits")
        word |= value << low
    return word


def expand(event: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """The decoded arguments of a log, with a ``PremiumCharged`` record's fields added under their names beside
    ``record`` and ``amount``; the arguments of any other event unchanged."""
    out = dict(args)
    if event == EVENT and "record" in out:
        out.update(unpack(out["record"]).as_args())
    return out
