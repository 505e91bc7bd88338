"""Event logs over a block range: the one log scanner.

``eth_getLogs`` is asked for at most ``chunk`` blocks at a time (nodes cap the span or the size of one answer);
a range the node still refuses is read in halves by ``RpcClient.get_logs``. Logs come back as the node sent
them (hex strings), in chain order within each chunk.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from eth_hash.auto import keccak
from iotsettle.oracle.chain.abi import abi_type
from iotsettle.oracle.chain.rpc import RpcClient

#: blocks per eth_getLogs call
LOG_CHUNK_BLOCKS = 50_000


def topic0(event_abi: Mapping[str, Any]) -> str:
    """The 0x-hex first topic of an event; a struct argument hashes as ``(t1,t2,…)``."""
    types = ",".join(abi_type(i) for i in event_abi["inputs"])
    return "0x" + keccak(f"{event_abi['name']}({types})".encode()).hex()


def id_topic(value: int | str) -> str:
    """An indexed argument as a topic: an integer id, or a 0x-hex address or bytes value left-padded to 32 bytes."""
    if isinstance(value, str):
        return "0x" + bytes.fromhex(value[2:]).rjust(32, b"\0").hex()
    return "0x" + int(value).to_bytes(32, "big").hex()


def log_key(entry: Mapping[str, Any]) -> tuple[int, int]:
    """(block, log index) of a raw log: its place in the chain."""
    return int(entry["blockNumber"], 16), int(entry["logIndex"], 16)


def scan_chunks(
    rpc: RpcClient,
    address: str | Sequence[str],
    start: int,
    stop: int,
    topics: Sequence[Any] = (),
    chunk: int | None = None,
) -> Iterator[tuple[int, int, list[dict[str, Any]]]]:
    """``(first, last, logs)`` for each span of at most ``chunk`` blocks (default ``LOG_CHUNK_BLOCKS``) of
    ``start``..``stop``, in order; removed (reorganised) logs are left out."""
    chunk = chunk or LOG_CHUNK_BLOCKS
    first = start
    while first <= stop:
        last = min(first + chunk - 1, stop)
        logs = [entry for entry in rpc.get_logs(address, first, last, topics) if not entry.get("removed")]
        yield first, last, sorted(logs, key=log_key)
        first = last + 1


def scan(
    rpc: RpcClient,
    address: str | Sequence[str],
    start: int,
    stop: int,
    topics: Sequence[Any] = (),
    chunk: int | None = None,
) -> list[dict[str, Any]]:
    """Every log of ``address`` in ``start``..``stop`` matching ``topics``, in chain order."""
    return [entry for _, _, logs in scan_chunks(rpc, address, start, stop, topics, chunk) for entry in logs]
