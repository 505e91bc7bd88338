"""The packed telematics item: the layout ``MotorInsurance.settle`` decodes (IMotorInsurance.settle)."""

from __future__ import annotations

import pytest
from iotsettle.oracle.protocol.packed import item_size, pack_item


def test_telematics_item_is_the_signed_fields_at_their_signed_widths_then_r_vs() -> None:
    policy_id = (0xAB << 96) | 7
    r, vs = b"\x11" * 32, b"\x22" * 32
    item = pack_item("telematics", [policy_id, 3, 1_700_000_000, 12_345_678, 4, 5], r, vs)
    assert item_size("telematics") == len(item) == 128
    assert int.from_bytes(item[:32], "big") == policy_id
    # the second word: seq 8 | timestamp 8 | odometer 8 | harshBraking 4 | speeding 4
    assert [int.from_bytes(item[a:b], "big") for a, b in ((32, 40), (40, 48), (48, 56), (56, 60), (60, 64))] == [
        3,
        1_700_000_000,
        12_345_678,
        4,
        5,
    ]
    assert item[64:] == r + vs


def test_a_telematics_field_beyond_its_signed_type_does_not_pack() -> None:
    with pytest.raises(ValueError, match="does not fit 4 bytes"):
        pack_item("telematics", [1, 1, 1, 1, 1 << 32, 0], b"\x00" * 32, b"\x00" * 32)
    with pytest.raises(ValueError, match="does not fit 8 bytes"):
        pack_item("telematics", [1, 1 << 64, 1, 1, 0, 0], b"\x00" * 32, b"\x00" * 32)
