"""The optimistic batch tree, from the Python side, and its shared vectors.

``tests/vectors/optimistic-batch.json`` is what ``iotsettle.oracle.protocol.batch_tree`` computes for fixed keys and
readings (rewrite it with ``.venv/bin/python tests/protocol/test_batch_tree.py``); the forge test
``tests/contracts/OptimisticVectors.t.sol`` checks that OptimisticBilling computes the same leaves, accepts the same
proofs and rebuilds the same roots from the same data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from iotsettle.oracle.protocol import batch_tree, eip712

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "optimistic-batch.json"
DOMAIN = eip712.Domain(31337, "0x00000000000000000000000000000000000B17C4")
SIZES = (1, 2, 3, 5, 8, 13)


def _key(index: int) -> bytes:
    return (0x1000 + index).to_bytes(32, "big")


def _signed_item(key: bytes, agreement_id: int, seq: int, timestamp: int, value: int) -> bytes:
    return batch_tree.sign_reading(key, DOMAIN, agreement_id, seq, timestamp, value)


def build_vectors() -> dict[str, Any]:
    batches = []
    for n, size in enumerate(SIZES):
        items = []
        for i in range(size):
            key = _key(i % 3)
            device = int(eip712.address_of(key), 16)
            agreement_id = (device << 96) | (1 << 64) | batch_tree.AGREEMENT_ID_FLAG | (n + 1)
            items.append(_signed_item(key, agreement_id, i + 1, 1_764_340_000 + i, 10**6 + 37 * i))
        leaves = [batch_tree.leaf(item, DOMAIN) for item in items]
        batches.append(
            {
                "data": "0x" + batch_tree.pack_batch(items).hex(),
                "readings": ["0x" + item.hex() for item in items],
                "leaves": ["0x" + x.hex() for x in leaves],
                "root": "0x" + batch_tree.root(leaves).hex(),
                "proofs": [["0x" + p.hex() for p in batch_tree.proof(leaves, i)] for i in range(size)],
            }
        )
    return {
        "comment": "Written by tests/protocol/test_batch_tree.py from iotsettle.oracle.protocol.batch_tree.",
        "domain": {"chainId": str(DOMAIN.chain_id), "verifyingContract": DOMAIN.verifying_contract},
        "agreementIdFlag": str(batch_tree.AGREEMENT_ID_FLAG),
        "count": str(len(batches)),
        "batches": batches,
        "telematics": _telematics_batches(),
    }


def _telematics_batches() -> list[dict[str, Any]]:
    """OptimisticMotor's batches: reports of vehicles' policies (ids with the flag), packed as settle takes them."""
    batches = []
    for n, size in enumerate(SIZES):
        items = []
        for i in range(size):
            key = _key(i % 3)
            policy_id = (int(eip712.address_of(key), 16) << 96) | batch_tree.AGREEMENT_ID_FLAG | (n + 1)
            message = {
                "policyId": policy_id,
                "seq": i + 1,
                "timestamp": 1_764_340_000 + 7 * i,
                "odometer": 5_000_000 + 913 * i,
                "harshBraking": i // 2,
                "speeding": 2**32 - 1 if i == 4 else i,
            }
            items.append(batch_tree.sign_telematics(key, DOMAIN, message))
        leaves = [batch_tree.leaf(item, DOMAIN, "telematics") for item in items]
        batches.append(
            {
                "data": "0x" + batch_tree.pack_batch(items, "telematics").hex(),
                "reports": ["0x" + item.hex() for item in items],
                "leaves": ["0x" + x.hex() for x in leaves],
                "root": "0x" + batch_tree.root(leaves).hex(),
            }
        )
    return batches


def test_vector_file_is_what_the_code_computes() -> None:
    assert json.loads(VECTORS.read_text()) == build_vectors()


@pytest.mark.parametrize("size", SIZES)
def test_every_leaf_proves_and_no_other(size: int) -> None:
    batch = build_vectors()["batches"][SIZES.index(size)]
    items = batch_tree.split_batch(bytes.fromhex(batch["data"][2:]))
    leaves = [batch_tree.leaf(item, DOMAIN) for item in items]
    root = batch_tree.root(leaves)
    for i, leaf in enumerate(leaves):
        assert batch_tree.verify(batch_tree.proof(leaves, i), root, leaf)
        wrong = batch_tree.proof(leaves, (i + 1) % size)
        assert size == 1 or not batch_tree.verify(wrong, root, leaf), "a proof proves only its own leaf"
    assert not batch_tree.verify([], root, batch_tree.leaf(items[0], eip712.Domain(1, DOMAIN.verifying_contract)))


def test_a_decoded_item_recovers_to_its_device() -> None:
    item = _signed_item(_key(2), 7, 3, 1_764_340_000, 42)
    reading = batch_tree.decode_reading(item)
    assert (reading.agreement_id, reading.seq, reading.timestamp, reading.value) == (7, 3, 1_764_340_000, 42)
    digest = eip712.digest("Reading", reading.message(), DOMAIN)
    assert eip712.recover(digest, reading.signature()) == eip712.address_of(_key(2))


def test_a_batch_shares_one_agreement_id_and_splits_back() -> None:
    items = [_signed_item(_key(i % 2), 7 + i % 2, i + 1, 1_764_340_000 + 60 * i, 42 + i) for i in range(10)]
    data = batch_tree.pack_batch(items)
    assert len(data) == batch_tree.HEADER_SIZE + 2 * 32 + 10 * batch_tree.ITEM_SIZE
    assert batch_tree.split_batch(data) == items


def test_a_telematics_batch_splits_back_to_its_reports_and_leaves() -> None:
    batch = _telematics_batches()[-1]
    reports = [bytes.fromhex(r[2:]) for r in batch["reports"]]
    data = bytes.fromhex(batch["data"][2:])
    assert len(data) == batch_tree.HEADER_SIZE + 32 * 3 + 90 * len(reports), "three policies, 90 bytes a report"
    assert batch_tree.split_batch(data, "telematics") == reports, "the terms travel as unknown (zeros)"
    leaves = [batch_tree.leaf(r, DOMAIN, "telematics") for r in reports]
    assert batch_tree.root(leaves).hex() == batch["root"][2:]
    message, r, vs = batch_tree.decode_item(reports[4], "telematics")
    assert message["speeding"] == 2**32 - 1 and len(r) == len(vs) == 32
    with pytest.raises(ValueError, match="seq in 5 bytes"):
        batch_tree.pack_batch([reports[0][:32] + (2**40).to_bytes(8, "big") + reports[0][40:]], "telematics")
    with pytest.raises(ValueError, match="not settled in optimistic batches"):
        batch_tree.pack_batch(reports, "weather")


@pytest.mark.parametrize("length", [0, 6, 7 + 32, 7 + 32 + 81, 7 + 32 + 83])
def test_a_ragged_batch_is_refused(length: int) -> None:
    data = (1).to_bytes(2, "big") + bytes(max(0, length - 2))
    with pytest.raises(ValueError, match="header"):
        batch_tree.split_batch(data[:length])


def test_an_item_past_the_table_names_no_reading() -> None:
    data = bytearray(batch_tree.pack_batch([_signed_item(_key(0), 7, 1, 1_764_340_000, 42)]))
    data[batch_tree.HEADER_SIZE + 32 + 1] = 1  # index 1 of a table of one
    with pytest.raises(ValueError, match="names no reading"):
        batch_tree.split_batch(bytes(data))


def test_readings_too_far_apart_are_refused() -> None:
    items = [_signed_item(_key(0), 7, seq, when, 42) for seq, when in ((1, 1_000), (2, 1_000 + (1 << 24)))]
    with pytest.raises(ValueError, match="2\\^24 seconds"):
        batch_tree.pack_batch(items)


if __name__ == "__main__":
    VECTORS.write_text(json.dumps(build_vectors(), indent=1) + "\n")
