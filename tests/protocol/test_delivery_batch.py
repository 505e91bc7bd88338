"""The packed delivery batch: record widths, the same-party shortening and the refusals of fields that do not fit."""

from __future__ import annotations

import pytest
from iotsettle.oracle.protocol import delivery_batch

SELLER_TOKEN = bytes(range(1, 41))


def _terms(device: int) -> bytes:
    return SELLER_TOKEN + device.to_bytes(20, "big") + bytes(38)


def _record(escrow_id: int, terms: bytes) -> bytes:
    return delivery_batch.record(escrow_id, 1, 1_764_340_000, b"u".ljust(32, b"\0"), -150, b"r" * 32, b"v" * 32, terms)


def test_record_is_222_bytes_big_endian_with_twos_complement_temperature() -> None:
    rec = _record(7, _terms(1))
    assert len(rec) == delivery_batch.RECORD_SIZE == 222
    assert int.from_bytes(rec[:8], "big") == 7
    assert int.from_bytes(rec[56:60], "big", signed=True) == -150
    assert rec[124:] == _terms(1)


def test_batch_leaves_out_a_repeated_seller_and_token() -> None:
    first, second = _record(1, _terms(1)), _record(2, _terms(2))
    packed = delivery_batch.batch([first, second])
    assert len(packed) == 222 + 182
    head = int.from_bytes(packed[222:230], "big")
    assert head == 2 | delivery_batch.SAME_PARTY
    assert packed[222 + 124 :] == _terms(2)[40:]


def test_unknown_terms_are_never_shortened() -> None:
    unknown = [_record(i, delivery_batch.UNKNOWN_TERMS) for i in (1, 2)]
    assert len(delivery_batch.batch(unknown)) == 2 * 222


@pytest.mark.parametrize(
    ("escrow_id", "temperature", "terms"),
    [(1 << 63, 0, _terms(1)), (1, 1 << 31, _terms(1)), (1, 0, bytes(97))],
)
def test_fields_that_do_not_fit_are_refused(escrow_id: int, temperature: int, terms: bytes) -> None:
    with pytest.raises(ValueError):
        delivery_batch.record(escrow_id, 1, 1, bytes(32), temperature, bytes(32), bytes(32), terms)
