"""The ``ReadingsSettled`` batch log of MeteredBilling: the one decoder of its records.

A settling transaction emits one ``ReadingsSettled(bytes records)`` log for all the readings it settled (instead of
one log per reading, ≈ 1,300 gas a reading): ``records`` are packed back to back, ``RECORD_SIZE`` bytes each —
agreementId (32) ‖ seq (5) ‖ amount (12), integers big-endian, in batch order; ``amount`` was billed from the
agreement's prepaid balance. The contract documents the same layout (``IMeteredBilling.ReadingsSettled``) and
tests/protocol/test_settled.py checks that this decoder reads what the contract writes.

A batch log has no indexed agreement id: readers fetch the contract's ``ReadingsSettled`` logs in their block range
and keep the records they want after decoding. A record is named by its log and its ``index`` in the log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from eth_utils import keccak

#: The batch log's event name and the bytes per field of one record (agreementId, seq, amount).
EVENT = "ReadingsSettled"
RECORD_WIDTHS = (32, 5, 12)
RECORD_SIZE = sum(RECORD_WIDTHS)
#: topic 0 of the batch log
TOPIC = keccak(f"{EVENT}(bytes)".encode())


@dataclass(frozen=True, slots=True)
class SettledRecord:
    """One settled reading of a ``ReadingsSettled`` log; ``index`` is its position among the log's records."""

    agreement_id: int
    seq: int
    amount: int
    index: int

    def args(self) -> dict[str, int]:
        """The record as event arguments, named as the contract names them."""
        return {"agreementId": self.agreement_id, "seq": self.seq, "amount": self.amount}


def decode_records(records: bytes) -> tuple[SettledRecord, ...]:
    """The records of one log's ``records`` argument; ValueError when its length is not a whole number of records."""
    if len(records) % RECORD_SIZE:
        raise ValueError(f"{len(records)} bytes is not a whole number of {RECORD_SIZE}-byte settled records")
    out: list[SettledRecord] = []
    for index, at in enumerate(range(0, len(records), RECORD_SIZE)):
        agreement_id = int.from_bytes(records[at : at + 32], "big")
        seq = int.from_bytes(records[at + 32 : at + 37], "big")
        amount = int.from_bytes(records[at + 37 : at + RECORD_SIZE], "big")
        out.append(SettledRecord(agreement_id, seq, amount, index))
    return tuple(out)


def decode_log_data(data: bytes) -> tuple[SettledRecord, ...]:
    """The records of a raw ``ReadingsSettled`` log's data (the ABI encoding of one ``bytes``: offset, length,
    padded bytes); ValueError when it is not one."""
    if len(data) < 64 or int.from_bytes(data[:32], "big") != 32:
        raise ValueError("not the ABI encoding of one bytes argument")
    length = int.from_bytes(data[32:64], "big")
    if len(data) < 64 + length:
        raise ValueError(f"the log data is shorter than its {length}-byte records")
    return decode_records(data[64 : 64 + length])


def encode_records(records: Iterable[tuple[int, int, int]]) -> bytes:
    """``records`` (agreementId, seq, amount) packed as the contract packs them; ValueError if a field does not fit."""
    out = bytearray()
    for fields in records:
        for width, value in zip(RECORD_WIDTHS, fields, strict=True):
            if not 0 <= value < 1 << (8 * width):
                raise ValueError(f"{value!r} does not fit {width} bytes")
            out += value.to_bytes(width, "big")
    return bytes(out)
