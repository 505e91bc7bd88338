"""The submitter's hand-built calldata and log decoding agree with the ABI (web3 / eth_abi) for both products."""

from __future__ import annotations

import dataclasses
import os
import random

import pytest
from eth_abi import encode as abi_encode
from iotsettle.oracle.daemon.calldata import KindSpec, decode_outcomes
from iotsettle.oracle.daemon.store import EventStatus, StoredEvent
from iotsettle.oracle.protocol import settled as settled_log
from iotsettle.oracle.protocol.eip712 import SECP256K1_HALF_N
from iotsettle.oracle.protocol.packed import bytes_argument
from web3 import Web3

ADDRESS = "0x" + "c3" * 20


def stored(kind: str, rng: random.Random) -> StoredEvent:
    sig = os.urandom(32) + rng.randrange(1, SECP256K1_HALF_N).to_bytes(32, "big") + bytes([rng.choice((27, 28))])
    reading = kind == "reading"
    return StoredEvent(
        kind,
        ADDRESS,
        ADDRESS,
        31337,
        ADDRESS,
        rng.randrange(2**256),
        rng.randrange(2**40 if reading else 2**64),  # a reading's seq and timestamp travel in 40 bits
        rng.randrange(2**40 if reading else 2**64),
        rng.randrange(2**64) if reading else None,
        None if reading else os.urandom(32),
        None if reading else rng.randrange(-(2**31), 2**31),
        os.urandom(32),
        sig,
        0.0,
        1,
        EventStatus.CLAIMED,
        None,
        None,
        None,
        None,
        None,
        None,
    )


def test_reading_batch_is_packed_as_the_contract_documents(abis: dict[str, list]) -> None:  # type: ignore[type-arg]
    """IMeteredBilling.settle: agreementId 32 ‖ seq 5 ‖ timestamp 5 ‖ value 8 ‖ r 32 ‖ vs 32 bytes, in one bytes."""
    spec = KindSpec.from_abi("reading", ADDRESS, abis["reading"])
    rng = random.Random(7)
    events = [stored("reading", rng) for _ in range(17)]
    contract = Web3().eth.contract(address=Web3.to_checksum_address(ADDRESS), abi=abis["reading"])
    packed = b"".join(
        e.target_id.to_bytes(32, "big")
        + e.seq.to_bytes(5, "big")
        + e.timestamp.to_bytes(5, "big")
        + e.value.to_bytes(8, "big")
        + spec.values(e)[-2]
        + spec.values(e)[-1]
        for e in events
    )
    assert len(packed) == 17 * 114
    expected = contract.encode_abi("settle", args=[packed])
    assert "0x" + spec.calldata([spec.item(e) for e in events]).hex() == expected
    assert spec.calldata([]) == bytes.fromhex(contract.encode_abi("settle", args=[b""])[2:])


def test_a_reading_beyond_the_packed_widths_is_refused(abis: dict[str, list]) -> None:  # type: ignore[type-arg]
    spec = KindSpec.from_abi("reading", ADDRESS, abis["reading"])
    event = stored("reading", random.Random(3))
    spec.item(dataclasses.replace(event, seq=2**40 - 1, timestamp=2**40 - 1, value=2**64 - 1))
    for wide in ({"seq": 2**40}, {"timestamp": 2**40}, {"value": 2**64}):
        with pytest.raises(ValueError, match="does not fit"):
            spec.item(dataclasses.replace(event, **wide))


@pytest.mark.parametrize(("kind", "function"), [("delivery", "confirmDeliveries")])
def test_batch_calldata_equals_the_abi_encoding(abis: dict[str, list], kind: str, function: str) -> None:  # type: ignore[type-arg]
    spec = KindSpec.from_abi(kind, ADDRESS, abis[kind])
    rng = random.Random(7)
    events = [stored(kind, rng) for _ in range(17)]
    contract = Web3().eth.contract(address=Web3.to_checksum_address(ADDRESS), abi=abis[kind])
    values = [spec.values(e) for e in events]
    expected = contract.encode_abi(function, args=[values])
    assert "0x" + spec.calldata([spec.item(e) for e in events]).hex() == expected
    assert spec.calldata([]) == bytes.fromhex(contract.encode_abi(function, args=[[]])[2:])


def test_an_item_that_does_not_fit_its_type_is_refused(abis: dict[str, list]) -> None:  # type: ignore[type-arg]
    spec = KindSpec.from_abi("delivery", ADDRESS, abis["delivery"])
    event = stored("delivery", random.Random(1))
    with pytest.raises(ValueError, match="int32"):
        spec.item(dataclasses.replace(event, max_temperature=2**31))
    with pytest.raises(ValueError, match="v 27/28"):
        spec.item(dataclasses.replace(event, sig=b"\x01" * 64 + b"\x00"))


def test_outcome_logs_decode_in_item_order(abis: dict[str, list]) -> None:  # type: ignore[type-arg]
    spec = KindSpec.from_abi("reading", ADDRESS, abis["reading"])
    records = "0x" + bytes_argument([settled_log.encode_records([(5, 3, 1234)])]).hex()
    logs = [
        {
            "address": ADDRESS.upper().replace("0X", "0x"),
            "topics": ["0x" + spec.rejected_topic.hex(), "0x" + (7).to_bytes(32, "big").hex()],
            "data": "0x" + abi_encode(["uint64", "uint8"], [9, 10]).hex(),
        },
        {"address": "0x" + "d4" * 20, "topics": ["0x" + spec.settled_topic.hex()], "data": records},  # another contract
        {"address": ADDRESS, "topics": ["0x" + spec.settled_topic.hex()], "data": records},
    ]
    outcomes = decode_outcomes(spec, logs)
    assert [(o.target_id, o.seq, o.settled, o.reason) for o in outcomes] == [(7, 9, False, 10), (5, 3, True, 0)]
