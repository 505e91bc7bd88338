"""The PremiumCharged record word: one layout, packed and unpacked here (IMotorInsurance.PremiumCharged); the CLI
tests settle real reports and read them back through it (tests/cli/test_cli_products.py)."""

from __future__ import annotations

import pytest
from iotsettle.oracle.protocol import premium


def test_record_fields_sit_at_the_documented_bits() -> None:
    word = premium.pack(seq=3, metres=12_400, harsh_braking=2, speeding=1, factor_bps=11_669)
    assert word == (3 << 192) | (12_400 << 128) | (2 << 96) | (1 << 64) | (11_669 << 48)
    assert premium.unpack(word) == premium.PremiumRecord(3, 12_400, 2, 1, 11_669)
    assert premium.unpack(word.to_bytes(32, "big")) == premium.unpack(word)


def test_widest_values_round_trip_without_touching_their_neighbours() -> None:
    widest = ((1 << 64) - 1, (1 << 64) - 1, (1 << 32) - 1, (1 << 32) - 1, (1 << 16) - 1)
    assert premium.unpack(premium.pack(*widest)) == premium.PremiumRecord(*widest)
    assert premium.pack(*widest) & ((1 << 48) - 1) == 0


def test_a_field_beyond_its_width_does_not_pack() -> None:
    with pytest.raises(ValueError, match="factorBps 65536 does not fit 16 bits"):
        premium.pack(1, 1, 1, 1, 1 << 16)


def test_expand_names_the_fields_of_premium_charged_only() -> None:
    word = premium.pack(7, 1_000, 0, 2, 9_000)
    args = premium.expand("PremiumCharged", {"policyId": 5, "record": word, "amount": 42})
    assert args == {
        "policyId": 5,
        "record": word,
        "amount": 42,
        "seq": 7,
        "metres": 1_000,
        "harshBraking": 0,
        "speeding": 2,
        "factorBps": 9_000,
    }
    assert premium.expand("TelematicsRejected", {"record": word}) == {"record": word}
