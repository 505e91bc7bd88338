"""The packed batch items: weather observations in the widths CropInsurance.record decodes, and refusals."""

from __future__ import annotations

import pytest
from eth_abi.packed import encode_packed
from iotsettle.oracle.protocol.packed import item_size, pack_item

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
