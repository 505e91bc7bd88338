"""The packed batch of ``DeliveryEscrow.confirmDeliveriesPacked``: one wire format, built here for every relayer.

A record is, big-endian and unpadded: escrowId (uint64) ‖ seq (uint64) ‖ timestamp (uint64) ‖ location (bytes32) ‖
maxTemperature (int32, two's complement) ‖ r ‖ vs ‖ the escrow's terms as ``deliveryTerms(escrowId)`` returns them
(98 bytes: seller ‖ token ‖ device ‖ amount ‖ createdAt ‖ deadline ‖ temperatureLimit ‖ penaltyBps). ``batch`` leaves
out seller and token (40 bytes) of a record that repeats the previous record's, and marks it with the top bit of
its escrowId field. Terms that are wrong or unknown (zeros) only make the contract read the escrow from storage:
the outcome is the same, the gas is higher.
"""

from __future__ import annotations

from collections.abc import Sequence

TERMS_SIZE = 98
RECORD_SIZE = 124 + TERMS_SIZE
SAME_PARTY = 1 << 63
UNKNOWN_TERMS = bytes(TERMS_SIZE)
_PARTY = slice(124, 164)  # seller ‖ token inside a full record


def record(
    escrow_id: int, seq: int, timestamp: int, location: bytes, max_temperature: int, r: bytes, vs: bytes, terms: bytes
) -> bytes:
    """One full record; ValueError when a field does not fit its width (escrow ids stay below 2^63)."""
    if not 0 <= escrow_id < SAME_PARTY:
        raise ValueError(f"escrow id {escrow_id} does not fit the packed batch")
    for name, value in (("seq", seq), ("timestamp", timestamp)):
        if not 0 <= value < 1 << 64:
            raise ValueError(f"{name} {value} does not fit uint64")
    if not -(1 << 31) <= max_temperature < 1 << 31:
        raise ValueError(f"maxTemperature {max_temperature} does not fit int32")
    for name, raw in (("location", location), ("r", r), ("vs", vs)):
        if len(raw) != 32:
            raise ValueError(f"{name} needs 32 bytes, got {len(raw)}")
    if len(terms) != TERMS_SIZE:
        raise ValueError(f"escrow terms need {TERMS_SIZE} bytes, got {len(terms)}")
    return b"".join(
        (
            escrow_id.to_bytes(8, "big"),
            seq.to_bytes(8, "big"),
            timestamp.to_bytes(8, "big"),
            bytes(location),
            (max_temperature % (1 << 32)).to_bytes(4, "big"),
            bytes(r),
            bytes(vs),
            bytes(terms),
        )
    )


def batch(records: Sequence[bytes]) -> bytes:
    """The ``bytes`` argument: the records in order, each repeating the previous one's seller and token shortened."""
    out: list[bytes] = []
    previous = b""
    for rec in records:
        if len(rec) != RECORD_SIZE:
            raise ValueError(f"a delivery record is {RECORD_SIZE} bytes, got {len(rec)}")
        party = rec[_PARTY]
        if party == previous and party != UNKNOWN_TERMS[:40]:
            head = int.from_bytes(rec[:8], "big") | SAME_PARTY
            out.append(head.to_bytes(8, "big") + rec[8:124] + rec[164:])
        else:
            out.append(rec)
        previous = party
    return b"".join(out)


def calldata(selector: bytes, records: Sequence[bytes]) -> bytes:
    """``selector ‖ abi.encode(bytes batch)`` for ``confirmDeliveriesPacked``."""
    data = batch(records)
    padding = bytes(-len(data) % 32)
    return selector + (32).to_bytes(32, "big") + len(data).to_bytes(32, "big") + data + padding
