"""The ReadingsSettled record layout: the one decoder every reader uses (IMeteredBilling.ReadingsSettled)."""

from __future__ import annotations

import pytest
from iotsettle.oracle.protocol import settled
from iotsettle.oracle.protocol.packed import bytes_argument


def test_a_record_is_agreement_id_seq_amount_at_32_5_12_bytes() -> None:
    agreement_id = (0xAB << 96) | (3 << 64) | 7
    # as Solidity writes it: abi.encodePacked(agreementId, uint40(seq), uint96(amount))
    raw = agreement_id.to_bytes(32, "big") + (1 << 39).to_bytes(5, "big") + (10**18 + 5).to_bytes(12, "big")
    assert settled.RECORD_SIZE == len(raw) == 49
    assert settled.decode_records(raw) == (settled.SettledRecord(agreement_id, 1 << 39, 10**18 + 5, 0),)
    assert settled.encode_records([(agreement_id, 1 << 39, 10**18 + 5)]) == raw


def test_records_keep_batch_order_and_their_index() -> None:
    records = [(5, 1, 30), (9, 4, 0), (5, 2, (1 << 96) - 1)]
    data = bytes_argument([settled.encode_records(records)])  # the log data: one ABI `bytes`
    decoded = settled.decode_log_data(data)
    assert [(r.agreement_id, r.seq, r.amount, r.index) for r in decoded] == [(*r, i) for i, r in enumerate(records)]
    assert decoded[2].args() == {"agreementId": 5, "seq": 2, "amount": (1 << 96) - 1}


def test_a_torn_record_or_a_field_too_wide_is_refused() -> None:
    with pytest.raises(ValueError, match="whole number of 49-byte"):
        settled.decode_records(b"\x00" * 50)
    with pytest.raises(ValueError, match="one bytes argument"):
        settled.decode_log_data(b"\x00" * 32)
    with pytest.raises(ValueError, match="does not fit 12 bytes"):
        settled.encode_records([(1, 1, 1 << 96)])
