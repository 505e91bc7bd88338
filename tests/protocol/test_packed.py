"""The packed batch items: the layouts MotorInsurance.settle and CropInsurance.record decode, and refusals."""

from __future__ import annotations

import pytest
from eth_abi.packed import encode_packed
from iotsettle.oracle.protocol.packed import UNKNOWN_TERMS, item_size, pack_item

STATION = "0x" + "ab" * 20
R, VS = b"\x01" * 32, b"\x02" * 32


def test_a_weather_item_is_the_signed_fields_in_their_own_widths_then_r_vs() -> None:
    fields = (STATION, 7, 1_764_340_000, 12_345, -250)
    item = pack_item("weather", fields, R, VS)
    assert len(item) == item_size("weather") == 112
    expected = encode_packed(["address", "uint64", "uint64", "uint64", "int32", "bytes32", "bytes32"], [*fields, R, VS])
    assert item == expected
    assert item[44:48] == (-250).to_bytes(4, "big", signed=True)


def test_the_station_may_be_given_as_its_integer_or_bytes() -> None:
    as_text = pack_item("weather", (STATION, 1, 2, 3, 4), R, VS)
    assert pack_item("weather", (int(STATION, 16), 1, 2, 3, 4), R, VS) == as_text
    assert pack_item("weather", (bytes.fromhex(STATION[2:]), 1, 2, 3, 4), R, VS) == as_text


@pytest.mark.parametrize(
    "fields",
    [
        (STATION, 2**64, 1, 1, 0),
        (STATION, 1, 1, -1, 0),
        (STATION, 1, 1, 1, 2**31),
        (STATION, 1, 1, 1, -(2**31) - 1),
        ("0x" + "ab" * 19, 1, 1, 1, 0),
        ("0xzz", 1, 1, 1, 0),
    ],
)
def test_a_field_beyond_its_width_is_refused(fields: tuple[object, ...]) -> None:
    with pytest.raises(ValueError):
        pack_item("weather", fields, R, VS)  # type: ignore[arg-type]


def test_readings_keep_their_unsigned_widths() -> None:
    with pytest.raises(ValueError):
        pack_item("reading", (1, 1, 1, -1), R, VS)
    assert len(pack_item("reading", (1, 2, 3, 4), R, VS)) == item_size("reading") == 114


def test_telematics_item_is_the_signed_fields_at_their_signed_widths_then_r_vs_then_the_terms() -> None:
    policy_id = (0xAB << 96) | 7
    r, vs, terms = b"\x11" * 32, b"\x22" * 32, bytes(range(46))
    item = pack_item("telematics", [policy_id, 3, 1_700_000_000, 12_345_678, 4, 5], r, vs, terms)
    assert item_size("telematics") == len(item) == 174
    assert int.from_bytes(item[:32], "big") == policy_id
    # the second word: seq 8 | timestamp 8 | odometer 8 | harshBraking 4 | speeding 4
    assert [int.from_bytes(item[a:b], "big") for a, b in ((32, 40), (40, 48), (48, 56), (56, 60), (60, 64))] == [
        3,
        1_700_000_000,
        12_345_678,
        4,
        5,
    ]
    assert item[64:128] == r + vs
    assert item[128:] == terms


def test_a_report_without_its_terms_carries_the_unknown_terms_and_wrong_sized_terms_do_not_pack() -> None:
    item = pack_item("telematics", [1, 1, 1, 1, 0, 0], b"\x00" * 32, b"\x00" * 32)
    assert item[128:] == UNKNOWN_TERMS["telematics"] == bytes(46)
    with pytest.raises(ValueError, match="terms of a packed telematics are 46 bytes, got 45"):
        pack_item("telematics", [1, 1, 1, 1, 0, 0], b"\x00" * 32, b"\x00" * 32, bytes(45))
    assert len(pack_item("reading", [1, 1, 1, 1], b"\x00" * 32, b"\x00" * 32)) == item_size("reading") == 114


def test_a_telematics_field_beyond_its_signed_type_does_not_pack() -> None:
    with pytest.raises(ValueError, match="does not fit 4 bytes"):
        pack_item("telematics", [1, 1, 1, 1, 1 << 32, 0], b"\x00" * 32, b"\x00" * 32)
    with pytest.raises(ValueError, match="does not fit 8 bytes"):
        pack_item("telematics", [1, 1 << 64, 1, 1, 0, 0], b"\x00" * 32, b"\x00" * 32)
