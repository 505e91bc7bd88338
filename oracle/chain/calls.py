"""Read-only contract calls (``eth_call``) through the one RPC client, without web3.

A ``ContractReader`` encodes a view function's arguments from the contract's ABI (eth-abi), and several calls go
to the node as one batch request; results come back as web3's contract calls return them (one output as itself,
several or a struct as a tuple, addresses checksummed). web3's contract objects do the same, but importing web3
costs most of a second: the CLI's read-only commands (`iotsettle agreement status`) read through this module and
answer in a fraction of that. Transactions still go through web3 (``send``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eth_abi import decode, encode
from eth_abi.exceptions import DecodingError
from eth_hash.auto import keccak
from eth_utils import to_checksum_address
from iotsettle.oracle.chain.rpc import RpcClient
from iotsettle.oracle.protocol.errors import ChainError

AbiParam = Mapping[str, Any]


def abi_type(param: AbiParam) -> str:
    """The canonical ABI type of a parameter: a struct is ``(t1,t2,…)``, with its array suffix if any."""
    typ = str(param["type"])
    if typ.startswith("tuple"):
        return "(" + ",".join(abi_type(c) for c in param["components"]) + ")" + typ[len("tuple") :]
    return typ


def _as_web3_returns(param: AbiParam, value: Any) -> Any:
    """eth-abi's decoded ``value`` as web3 returns it: addresses checksummed, at any depth."""
    typ = str(param["type"])
    if typ.endswith("]"):
        element = {**param, "type": typ[: typ.rindex("[")]}
        return [_as_web3_returns(element, item) for item in value]
    if typ == "tuple":
        return tuple(_as_web3_returns(c, v) for c, v in zip(param["components"], value, strict=True))
    if typ == "address":
        return to_checksum_address(value)
    return value


class ContractReader:
    """The view functions of one deployed contract, by name (the contracts have no overloads)."""

    def __init__(self, rpc: RpcClient, address: str, abi: Sequence[AbiParam]) -> None:
        self.rpc = rpc
        self.address = address
        self._functions = {str(e["name"]): e for e in abi if e.get("type") == "function"}

    def _function(self, name: str) -> AbiParam:
        try:
            return self._functions[name]
        except KeyError:
            raise ChainError(f"the contract at {self.address} has no function {name}") from None

    def request(self, name: str, *args: Any) -> tuple[str, list[Any]]:
        """The JSON-RPC request (method, params) of ``name(*args)`` at the latest block."""
        entry = self._function(name)
        inputs = [abi_type(p) for p in entry["inputs"]]
        selector = keccak(f"{name}({','.join(inputs)})".encode())[:4]
        data = "0x" + (selector + encode(inputs, list(args))).hex()
        return "eth_call", [{"to": self.address, "data": data}, "latest"]

    def decode(self, name: str, result: str) -> Any:
        """The result of ``name`` (the node's hex string) as web3 returns it."""
        outputs = self._function(name)["outputs"]
        raw = bytes.fromhex(result[2:] if result.startswith("0x") else result)
        if outputs and not raw:
            raise ChainError(f"{name} at {self.address} returned nothing: no contract there?")
        try:
            decoded = decode([abi_type(p) for p in outputs], raw)
        except DecodingError:
            raise ChainError(f"{name} at {self.address} returned what its ABI cannot decode") from None
        values = [_as_web3_returns(p, v) for p, v in zip(outputs, decoded, strict=True)]
        return values[0] if len(values) == 1 else tuple(values)

    def call(self, name: str, *args: Any) -> Any:
        """``name(*args)`` at the latest block."""
        return read(self.rpc, [(self, name, args)])[0]


def read(rpc: RpcClient, calls: Sequence[tuple[ContractReader, str, Sequence[Any]]]) -> list[Any]:
    """Several view calls as one batch request, their results in order."""
    results = rpc.batch([reader.request(name, *args) for reader, name, args in calls])
    return [reader.decode(name, result) for (reader, name, _), result in zip(calls, results, strict=True)]
