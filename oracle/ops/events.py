"""Events of a deployed contract, decoded: what every operation reads back from the chain's logs.

Read with the chain's log scanner (``iotsettle.oracle.chain.logs``) from the contract's deployment block, and
decoded with the contract's ABI (a packed ``PremiumCharged`` record is expanded into its named fields,
``iotsettle.oracle.protocol.premium``). A ``ReadingsSettled`` batch log is read as one entry per record
(``iotsettle.oracle.protocol.settled``), its ``record`` the index in the log; a filter on the agreement id applies
to the records after decoding, since a batch log carries no indexed id.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from iotsettle.oracle.chain import logs as chain_logs
from iotsettle.oracle.chain.logs import id_topic, topic0
from iotsettle.oracle.ops.context import OpsContext
from iotsettle.oracle.protocol import premium, settled
from iotsettle.oracle.protocol.errors import ChainError
from web3.exceptions import LogTopicError, MismatchedABI


@dataclass(frozen=True)
class LogEntry:
    contract: str
    event: str
    args: dict[str, Any]
    block: int
    tx_hash: str
    log_index: int
    record: int | None = None  # index of the record in a batch log (ReadingsSettled); None for other logs


def fetch_logs(
    ctx: OpsContext,
    contract: str,
    events: Sequence[str],
    topic1: int | str | None = None,
    from_block: int | None = None,
    topic2: int | str | None = None,
) -> list[LogEntry]:
    """Decoded ``events`` of a deployed contract since its deployment, optionally with the first indexed argument
    equal to ``topic1`` (an escrow/agreement id or a device address) and the second equal to ``topic2``."""
    if not ctx.has(contract):
        return []
    handle = ctx.contract(contract)
    entries: Sequence[Mapping[str, Any]] = handle.abi  # web3's ABI TypedDicts, read as plain JSON objects
    abi = {e["name"]: e for e in entries if e.get("type") == "event"}
    start = ctx.deployed_block(contract) if from_block is None else from_block
    latest = ctx.rpc.block_number()
    indexed = [name for name in events if name != settled.EVENT]
    out: list[LogEntry] = []
    if indexed:
        by_topic = {topic0(abi[name]): name for name in indexed}
        topics: list[Any] = [list(by_topic)]
        if topic1 is not None or topic2 is not None:
            topics.append(None if topic1 is None else id_topic(topic1))
        if topic2 is not None:
            topics.append(id_topic(topic2))
        for entry in _scan(ctx, contract, handle.address, start, latest, topics):
            name = by_topic.get(str(entry["topics"][0]).lower())
            if name is None:
                continue
            try:
                decoded = getattr(handle.events, name)().process_log(entry)
            except (MismatchedABI, LogTopicError):
                continue
            block, index = chain_logs.log_key(entry)
            args = premium.expand(name, decoded["args"])
            out.append(LogEntry(contract, name, args, block, str(entry["transactionHash"]), index))
    if settled.EVENT in events and topic2 is None:
        out += settled_records(ctx, contract, None if topic1 is None else {int(id_topic(topic1), 16)}, start)
    out.sort(key=lambda e: (e.block, e.log_index, e.record or 0))
    return out


def settled_records(
    ctx: OpsContext, contract: str, agreement_ids: Collection[int] | None, from_block: int | None = None
) -> list[LogEntry]:
    """The records of the contract's ``ReadingsSettled`` batch logs since ``from_block`` (default: its deployment),
    one entry each, kept when their agreement is in ``agreement_ids`` (all when None): one scan for any number of
    agreements, so callers pass the earliest block any of them can have settled in."""
    if not ctx.has(contract):
        return []
    handle = ctx.contract(contract)
    entries: Sequence[Mapping[str, Any]] = handle.abi
    abi = {e["name"]: e for e in entries if e.get("type") == "event"}
    if settled.EVENT not in abi:
        return []
    start = ctx.deployed_block(contract) if from_block is None else from_block
    out: list[LogEntry] = []
    for entry in _scan(ctx, contract, handle.address, start, ctx.rpc.block_number(), [[topic0(abi[settled.EVENT])]]):
        block, index = chain_logs.log_key(entry)
        for record in settled.decode_log_data(_data(entry["data"])):
            if agreement_ids is None or record.agreement_id in agreement_ids:
                tx = str(entry["transactionHash"])
                out.append(LogEntry(contract, settled.EVENT, record.args(), block, tx, index, record.index))
    return out


def _scan(ctx: OpsContext, contract: str, address: str, start: int, latest: int, topics: list[Any]) -> list[Any]:
    try:
        return list(chain_logs.scan(ctx.rpc, address, start, latest, topics))
    except ChainError as exc:
        raise ChainError(f"cannot read {contract} logs from block {start}: {exc}") from None


def _data(value: str | bytes) -> bytes:
    """Raw JSON-RPC log data is 0x-hex; web3-formatted data is bytes."""
    return bytes.fromhex(value[2:]) if isinstance(value, str) else bytes(value)


def escrow_final_block(ctx: OpsContext, escrow_id: int) -> int | None:
    """The block of the event that released, refunded or cancelled ``escrow_id``, if any."""
    ends = fetch_logs(ctx, "DeliveryEscrow", ("DeliveryConfirmed", "EscrowRefunded", "EscrowCancelled"), escrow_id)
    return ends[-1].block if ends else None
