"""Read-only contract calls (``eth_call``) through the one RPC client, without web3.

A ``ContractReader`` encodes a view function's arguments from the contract's ABI (``abi``), and several calls go
to the node as one batch request; results come back as web3's contract calls return them (one output as itself,
several or a struct as a tuple, addresses checksummed). web3's contract objects do the same, but importing web3
costs most of a second: the CLI's read-only commands (`iotsettle agreement status`) read through this module and
answer in a fraction of that. Transactions still go through web3 (``send``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from iotsettle.oracle.chain.abi import AbiParam, decode_results, encode_arguments, selector
from iotsettle.oracle.chain.rpc import RpcClient
from iotsettle.oracle.protocol.errors import ChainError


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
        data = selector(name, entry["inputs"]) + encode_arguments(entry["inputs"], args)
        return "eth_call", [{"to": self.address, "data": "0x" + data.hex()}, "latest"]

    def decode(self, name: str, result: str) -> Any:
        """The result of ``name`` (the node's hex string) as web3 returns it."""
        outputs = self._function(name)["outputs"]
        raw = bytes.fromhex(result.removeprefix("0x"))
        if outputs and not raw:
            raise ChainError(f"{name} at {self.address} returned nothing: no contract there?")
        values = decode_results(outputs, raw)
        return values[0] if len(values) == 1 else tuple(values)

    def call(self, name: str, *args: Any) -> Any:
        """``name(*args)`` at the latest block."""
        return read(self.rpc, [(self, name, args)])[0]


def read(rpc: RpcClient, calls: Sequence[tuple[ContractReader, str, Sequence[Any]]]) -> list[Any]:
    """Several view calls as one batch request, their results in order."""
    results = rpc.batch([reader.request(name, *args) for reader, name, args in calls])
    return [reader.decode(name, result) for (reader, name, _), result in zip(calls, results, strict=True)]
