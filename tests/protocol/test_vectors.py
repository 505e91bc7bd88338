"""The shared EIP-712 vectors, from the Python side.

``tests/vectors/eip712.json``, ``eip712-bulk.json`` and ``eip712-products.json`` are written by
``scripts/gen-vectors``; the forge tests (``tests/contracts/Vectors.t.sol`` and the product contracts' tests) check
that the contracts compute the same digests and that OpenZeppelin ECDSA recovers the same signers. Here every digest
and signature is recomputed with ``iotsettle.oracle.protocol.eip712`` (and the curated ones also with eth-account's
generic encoder), so a change on either side that breaks agreement fails a test.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from iotsettle.oracle.protocol import eip712

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


@cache
def _load(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text())


CURATED_FILES = {
    "eip712.json": eip712.CORE_TYPES,
    "eip712-products.json": eip712.PRODUCT_TYPES,
    "eip712-guard.json": eip712.GUARD_TYPES,
}


def _curated() -> list[dict[str, Any]]:
    return [v for name in CURATED_FILES for v in _load(name)["vectors"]]


def _domain(raw: dict[str, str]) -> eip712.Domain:
    return eip712.Domain(int(raw["chainId"]), raw["verifyingContract"], raw["name"], raw["version"])


def _message(primary_type: str, raw: dict[str, str]) -> dict[str, Any]:
    """JSON strings → the Python values iotsettle.oracle.protocol.eip712 takes (ints for numbers, hex strings kept)."""
    out: dict[str, Any] = {}
    for typ, name in eip712.TYPES[primary_type]:
        out[name] = raw[name] if typ in ("address", "bytes32", "bytes32[]") else int(raw[name])
    return out


@pytest.mark.parametrize("name", CURATED_FILES)
def test_file_describes_the_python_types(name: str) -> None:
    doc = _load(name)
    types = CURATED_FILES[name]
    assert doc["domainType"] == eip712.DOMAIN_TYPE
    assert doc["types"] == {t: eip712.encode_type(t) for t in types}
    assert int(doc["count"]) == len(doc["vectors"])
    covered = {v["primaryType"] for v in doc["vectors"]}
    assert covered == set(types), "every primary type has vectors"
    assert len({v["domain"]["chainId"] for v in doc["vectors"]}) >= 3, "several domains"


def test_every_type_is_in_one_vector_file() -> None:
    assert sorted(t for types in CURATED_FILES.values() for t in types) == sorted(eip712.TYPES)


@pytest.mark.parametrize("vector", _curated(), ids=lambda v: v["name"])
def test_curated_vector(vector: dict[str, Any]) -> None:
    primary_type = vector["primaryType"]
    domain = _domain(vector["domain"])
    message = _message(primary_type, vector["message"])
    private_key = bytes.fromhex(vector["privateKey"][2:])

    assert "0x" + eip712.type_hash(primary_type).hex() == vector["typeHash"]
    assert "0x" + eip712.domain_separator(domain).hex() == vector["domainSeparator"]
    assert "0x" + eip712.struct_hash(primary_type, message).hex() == vector["structHash"]
    digest = eip712.digest(primary_type, message, domain)
    assert "0x" + digest.hex() == vector["digest"]
    assert eip712.address_of(private_key) == vector["signer"]
    signature = eip712.sign_digest(private_key, digest)
    assert "0x" + signature.hex() == vector["signature"], "deterministic (RFC 6979) signature"
    assert eip712.recover(digest, signature) == vector["signer"]

    # an independent encoder agrees on the digest
    typed = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            primary_type: [{"name": n, "type": t} for t, n in eip712.TYPES[primary_type]],
        },
        "primaryType": primary_type,
        "domain": domain.as_dict(),
        "message": {k: _typed_value(v) for k, v in message.items()},
    }
    signed = Account.sign_message(encode_typed_data(full_message=typed), private_key)
    assert "0x" + bytes(signed.signature).hex() == vector["signature"]


def _typed_value(value: Any) -> Any:
    """A message value as eth_account's encoder takes it: bytes32 as bytes (in arrays too), the rest unchanged."""
    if isinstance(value, list):
        return [_typed_value(item) for item in value]
    return bytes.fromhex(value[2:]) if isinstance(value, str) and len(value) == 66 else value


@pytest.mark.parametrize("primary_type", ["Reading", "Delivery"])
def test_bulk_vectors(primary_type: str) -> None:
    columns = _load("eip712-bulk.json")[primary_type]
    domain = _domain(columns["domain"])
    count = int(columns["count"])
    assert count >= 500
    for i in range(count):
        message = _message(primary_type, {name: columns[name][i] for _, name in eip712.TYPES[primary_type]})
        digest = eip712.digest(primary_type, message, domain)
        assert "0x" + digest.hex() == columns["digest"][i], f"{primary_type} #{i}"
        r = bytes.fromhex(columns["r"][i][2:])
        vs = int(columns["vs"][i], 16)
        # ERC-2098 compact form → the 65-byte r ‖ s ‖ v the oracle receives from devices
        signature = r + (vs & ((1 << 255) - 1)).to_bytes(32, "big") + bytes([27 + (vs >> 255)])
        assert eip712.recover(digest, signature) == columns["signer"][i], f"{primary_type} #{i}"


def test_a_changed_field_changes_the_digest() -> None:
    vector = next(v for v in _curated() if v["primaryType"] == "Delivery")
    message = _message("Delivery", vector["message"])
    message["maxTemperature"] += 1
    assert "0x" + eip712.digest("Delivery", message, _domain(vector["domain"])).hex() != vector["digest"]
