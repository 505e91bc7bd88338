"""The arithmetic floor of gas per settled event, per kind, from the EVM's own prices (Cancun/Prague schedule).

A floor is what any contract must pay to settle one device-signed event of the kind in a batch, whatever its code:

- its share of the 21,000 transaction base;
- calldata: the smallest encoding that still carries what the device signed, every byte counted at 16 gas (a
  non-zero byte; real values have some zero bytes at 4, so this errs high by a few hundred at most): ids the
  contract assigns from a counter fit 8 bytes, a station is its 20-byte address (the digest needs it before
  ``ecrecover`` can run), timestamps 5 bytes (the contracts refuse anything past now + 5 minutes), the other
  signed fields at their signed width, the signature as ERC-2098 ``r, vs`` (64 bytes);
- ``ecrecover``: 3,000 for the precompile, 100 for the (warm) call to it;
- the key check: a device's own key, never rotated, needs no read of its own: a key stamp in the target's word
  (read and written anyway) says the key was current at the registry's key epoch it names, and every retirement
  bumps that epoch, so the check is one cold call and cold read of the epoch per batch (2,600 + 2,100, ÷ batch);
  a rotated device's key is a cold read (2,100) of its key record more;
- storage: a cold read and a write (2,100 + 2,900) of every slot the kind must touch, one per target when
  registers, seq, time and balance are packed into one word;
- the log the audit and credit readers need per item: 375 + 375 per topic (signature and target) + 8 per data
  byte of a packed record;
- hashing: the EIP-712 struct hash and digest (30 + 6 per word) and the mapping slot of each storage access.

Each ``floor_<kind>`` names its terms; ``FLOORS`` maps a kind to its function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

TX_BASE = 21_000
CALLDATA_BYTE = 16
ECRECOVER = 3_000
WARM_CALL = 100
COLD_CALL = 2_600  # the first call to a contract in the transaction
COLD_SLOAD = 2_100
WRITE_WARM = 2_900  # non-zero → non-zero, the slot already read in this transaction
LOG = 375
LOG_TOPIC = 375
LOG_BYTE = 8
KECCAK = 30
KECCAK_WORD = 6
SIGNATURE_BYTES = 64  # r, vs


def keccak(words: int) -> int:
    return KECCAK + KECCAK_WORD * words


@dataclass(frozen=True)
class Floor:
    kind: str
    batch: int
    terms: dict[str, int]  # label → gas per event
    assumptions: str

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    def as_dict(self) -> dict[str, object]:
        return {"batch": self.batch, "terms": self.terms, "total": self.total, "assumptions": self.assumptions}


def _common(batch: int, signed_bytes: int, struct_fields: int) -> dict[str, int]:
    """The terms every kind pays: base share, calldata, signature check, key check, EIP-712 hashing."""
    return {
        "transaction base share (21,000 ÷ batch)": round(TX_BASE / batch),
        f"calldata ({signed_bytes} signed bytes + {SIGNATURE_BYTES} signature bytes × 16)": CALLDATA_BYTE
        * (signed_bytes + SIGNATURE_BYTES),
        "ecrecover precompile": ECRECOVER,
        "call to the precompile (warm)": WARM_CALL,
        "key check (the registry's key epoch, one cold call + read per batch; a key stamp in the target's word)": round(
            (COLD_CALL + COLD_SLOAD) / batch
        ),
        # typehash + fields; then 0x1901 ‖ domain separator ‖ struct hash (66 bytes, 3 words)
        "EIP-712 struct hash + digest (keccak)": keccak(1 + struct_fields) + keccak(3),
    }


def _storage(slots: dict[str, bool]) -> dict[str, int]:
    """Cold read + write of each named slot (True), or a cold read only (False), and its mapping slot's hash."""
    out = {}
    for name, written in slots.items():
        out[f"{name}: cold read{' + write' if written else ''}"] = COLD_SLOAD + (WRITE_WARM if written else 0)
    out["mapping slot hashes (keccak of key ‖ slot, 2 words each)"] = keccak(2) * len(slots)
    return out


def _log(topics: int, data_bytes: int) -> dict[str, int]:
    return {f"log ({topics} topics, {data_bytes}-byte packed record)": LOG + LOG_TOPIC * topics + LOG_BYTE * data_bytes}


def floor_reading(batch: int = 100) -> Floor:
    """A meter reading of its own agreement (every reading of a batch settles a different agreement)."""
    # agreement id 8, seq 8, timestamp 5, value 16 (a register of 2^128 units)
    terms = _common(batch, 8 + 8 + 5 + 16, 4)
    terms |= _storage({"agreement word (register, seq, time, balance)": True})
    terms |= _log(2, 8 + 16)  # topics: signature, agreement; data: seq, amount
    return Floor("reading", batch, terms, "one packed agreement word; log: seq + amount")


def floor_delivery(batch: int = 100) -> Floor:
    """A delivery confirmation releasing its escrow to the seller (the seller's claim derived from the released
    escrow, not credited to a second slot)."""
    # escrow id 8, seq 8, timestamp 5, location 32, maxTemperature 4
    terms = _common(batch, 8 + 8 + 5 + 32 + 4, 5)
    terms |= _storage({"escrow word (state, deadline, amount, packed destination)": True})
    terms |= _log(2, 8)  # topics: signature, escrow; data: seq
    return Floor("delivery", batch, terms, "one packed escrow word, the seller's claim derived from it; log: seq")


def floor_telematics(batch: int = 100) -> Floor:
    """A telematics report charging its policy's prepaid balance."""
    # policy id 8, seq 8, timestamp 5, odometer 8, harshBraking 4, speeding 4
    terms = _common(batch, 8 + 8 + 5 + 8 + 4 + 4, 6)
    terms |= _storage({"policy word (registers, seq, time, prepaid balance)": True})
    terms |= _log(2, 8 + 8 + 4 + 4 + 2 + 16)  # seq, metres, harsh, speeding, factor, amount
    return Floor("telematics", batch, terms, "one packed policy word; log: seq, deltas, factor, amount")


def floor_weather(batch: int = 100) -> Floor:
    """A weather observation of a station already seen in its one open season."""
    # station 20, seq 8, timestamp 5, rainfall 8, maxTemperature 4
    terms = _common(batch, 20 + 8 + 5 + 8 + 4, 5)
    # The season's first in-window figures are already written (station already seen); its last in-window rainfall is
    # the station's own while the window is open, written to the season once when the first later observation comes.
    terms |= _storage({"station word (seq, time, rainfall, open season's window end)": True})
    terms |= _log(2, 8 + 5 + 8 + 4)  # topics: signature, station; data: seq, timestamp, rainfall, maxTemperature
    return Floor(
        "weather",
        batch,
        terms,
        "one station word caching its open season's window; rainfall index (a hot day adds a write); "
        "log: seq, time, rainfall, max temperature",
    )


FLOORS: dict[str, Callable[[int], Floor]] = {
    "reading": floor_reading,
    "delivery": floor_delivery,
    "telematics": floor_telematics,
    "weather": floor_weather,
}


def floors(batch: int = 100) -> dict[str, Floor]:
    return {kind: floor(batch) for kind, floor in FLOORS.items()}
