"""docs/PROTOCOL.md cannot drift: its vectors, type strings and reason codes are recomputed from the code, and the
vectors it quotes equal the shared vector files the contract tests check (tests/vectors/eip712*.json)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from iotsettle.oracle.device.fleet import FLEET_FORMAT
from iotsettle.oracle.device.keys import DeviceKey
from iotsettle.oracle.protocol import eip712, wire
from iotsettle.oracle.protocol.eip712 import Domain
from iotsettle.oracle.protocol.reasons import Reason

REPO = Path(__file__).resolve().parents[2]
PROTOCOL = (REPO / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
VECTOR_FILES = [
    REPO / "tests" / "vectors" / name for name in ("eip712.json", "eip712-products.json", "eip712-guard.json")
]

DOC_VECTORS: dict[str, dict[str, Any]] = {
    match.group(1): json.loads(match.group(2))
    for match in re.finditer(r"<!-- vector: ([\w/-]+) -->\n```json\n(.*?)\n```", PROTOCOL, re.S)
}
PAYLOAD_TYPE = {primary: event_type for event_type, primary in wire.EVENT_TYPES.items()}


def _message(primary: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Typed values from the JSON form of a message (uint256 as decimal strings, bytes32 as hex)."""
    fields: dict[str, Any] = {}
    for typ, name in eip712.TYPES[primary]:
        value = raw[name]
        if typ == "bytes32":
            fields[name] = bytes.fromhex(value[2:])
        elif typ == "bytes32[]":
            fields[name] = [bytes.fromhex(item[2:]) for item in value]
        elif typ == "address":
            fields[name] = value
        else:
            fields[name] = int(value)
    return fields


def _domain(raw: dict[str, Any]) -> Domain:
    return Domain(int(raw["chainId"]), raw["verifyingContract"], raw["name"], raw["version"])


def test_the_document_quotes_vectors_of_every_kind() -> None:
    assert {vector["primaryType"] for vector in DOC_VECTORS.values()} == set(eip712.TYPES)
    assert sum("payload" in vector for vector in DOC_VECTORS.values()) >= 4


@pytest.mark.parametrize("name", sorted(DOC_VECTORS))
def test_each_documented_vector_is_reproduced_by_the_python_signer(name: str) -> None:
    vector = DOC_VECTORS[name]
    primary = vector["primaryType"]
    key = DeviceKey.from_private_key(vector["privateKey"])
    domain = _domain(vector["domain"])
    message = _message(primary, vector["message"])
    digest = eip712.digest(primary, message, domain)
    signature = eip712.sign_digest(key.private_key, digest)
    assert key.address == vector["signer"]
    assert "0x" + eip712.type_hash(primary).hex() == vector["typeHash"]
    assert "0x" + eip712.domain_separator(domain).hex() == vector["domainSeparator"]
    assert "0x" + eip712.struct_hash(primary, message).hex() == vector["structHash"]
    assert "0x" + digest.hex() == vector["digest"]
    assert "0x" + signature.hex() == vector["signature"]
    assert eip712.recover(digest, signature) == key.address
    if "payload" in vector:
        payload = wire.encode(
            PAYLOAD_TYPE[primary], domain.chain_id, domain.verifying_contract, key.address, message, signature
        )
        assert payload.decode() == vector["payload"]
        assert wire.events_topic(domain.chain_id, key.address) == vector["topic"]
        event = wire.decode(vector["payload"].encode())
        assert event.signer() == key.address
        assert event.digest == digest


def test_documented_type_strings_and_hashes_are_the_code_s() -> None:
    for primary in eip712.TYPES:
        assert f"`{eip712.encode_type(primary)}`" in PROTOCOL
        assert "0x" + eip712.type_hash(primary).hex() in PROTOCOL
    assert f"`{eip712.DOMAIN_TYPE}`" in PROTOCOL or eip712.DOMAIN_TYPE in PROTOCOL
    assert f"at most **{wire.MAX_PAYLOAD_BYTES} bytes**" in PROTOCOL
    assert f"`{wire.TOPIC_ROOT}/{{chainId}}/{{device}}/events`" in PROTOCOL
    assert f'"format": "{FLEET_FORMAT}"' in PROTOCOL


def test_documented_reason_codes_are_exactly_the_code_s_in_order() -> None:
    table = PROTOCOL.split("<!-- reasons:start -->")[1].split("<!-- reasons:end -->")[0]
    codes = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert codes == [reason.value for reason in Reason]


def _file_vectors() -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = []
    for path in VECTOR_FILES:
        document = json.loads(path.read_text(encoding="utf-8"))
        assert document["vectors"], f"{path.name} is empty"
        vectors += document["vectors"]
    return vectors


def test_the_python_signer_reproduces_every_shared_vector() -> None:
    for vector in _file_vectors():
        primary = vector["primaryType"]
        domain = _domain(vector["domain"])
        message = _message(primary, vector["message"])
        digest = eip712.digest(primary, message, domain)
        assert "0x" + digest.hex() == vector["digest"].lower(), vector.get("name")
        if "privateKey" in vector and "signature" in vector:
            key = DeviceKey.from_private_key(vector["privateKey"])
            assert "0x" + eip712.sign_digest(key.private_key, digest).hex() == vector["signature"].lower()


def test_the_documented_vectors_are_in_the_shared_vector_file() -> None:
    shared = {vector.get("name"): vector for vector in _file_vectors()}
    for name, quoted in DOC_VECTORS.items():
        assert name in shared, f"PROTOCOL.md quotes {name}, which no shared vector file has"
        for member in ("privateKey", "primaryType", "domain", "message", "digest", "signature"):
            if member in shared[name]:
                assert _normal(shared[name][member]) == _normal(quoted[member]), f"{name}.{member} differs"


def _normal(value: Any) -> Any:
    """Compare hex case-insensitively and numbers whatever their JSON spelling."""
    if isinstance(value, dict):
        return {key: _normal(item) for key, item in value.items()}
    if isinstance(value, str):
        return str(int(value)) if value.isdigit() else value.lower()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value
