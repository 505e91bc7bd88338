"""The ABI of view calls without web3: canonical types, selectors, and eth-abi's codec with results shaped as
web3's contract calls return them (structs as tuples, addresses checksummed, EIP-55).

The read-only commands (`iotsettle agreement status`) call a contract through the raw RPC client
(``iotsettle.oracle.chain.calls``) instead of a web3 contract object: web3 costs most of a second to import,
eth-abi a fraction of that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import eth_abi
from eth_abi.exceptions import DecodingError, EncodingError
from eth_hash.auto import keccak
from eth_utils import to_checksum_address
from iotsettle.oracle.protocol.errors import ChainError

AbiParam = Mapping[str, Any]


def abi_type(param: AbiParam) -> str:
    """The canonical ABI type of a parameter: a struct is ``(t1,t2,…)``, with its array suffix if any."""
    typ = str(param["type"])
    if typ.startswith("tuple"):
        return "(" + ",".join(abi_type(c) for c in param.get("components", ())) + ")" + typ[len("tuple") :]
    return typ


def selector(name: str, inputs: Sequence[AbiParam]) -> bytes:
    """The 4-byte function selector of ``name(inputs)``."""
    return keccak(f"{name}({','.join(abi_type(p) for p in inputs)})".encode())[:4]


def encode_arguments(inputs: Sequence[AbiParam], values: Sequence[Any]) -> bytes:
    """A call's arguments, ABI-encoded (without the selector)."""
    try:
        return bytes(eth_abi.encode([abi_type(p) for p in inputs], list(values)))
    except EncodingError as exc:
        raise ChainError(f"cannot encode the call's arguments: {exc}") from None


def _shaped(param: AbiParam, value: Any) -> Any:
    typ = str(param["type"])
    if typ == "address":
        return to_checksum_address(value)
    if typ == "tuple":
        return tuple(_shaped(c, v) for c, v in zip(param["components"], value, strict=True))
    return value


def decode_results(outputs: Sequence[AbiParam], data: bytes) -> list[Any]:
    """The values of a call's results: structs as tuples, ``string`` as text, addresses checksummed."""
    try:
        values = eth_abi.decode([abi_type(p) for p in outputs], data)
    except DecodingError as exc:
        raise ChainError(f"the call's result does not match its ABI: {exc}") from None
    return [_shaped(p, v) for p, v in zip(outputs, values, strict=True)]
