"""Events of a deployed contract, decoded: what every operation reads back from the chain's logs.

Read with the chain's log scanner (``iotsettle.oracle.chain.logs``) from the contract's deployment block, and
decoded with the contract's ABI (a packed ``PremiumCharged`` record is expanded into its named fields,
``iotsettle.oracle.protocol.premium``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from iotsettle.oracle.chain import logs as chain_logs
from iotsettle.oracle.chain.logs import id_topic, topic0
from iotsettle.oracle.ops.context import OpsContext
from iotsettle.oracle.protocol import premium
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
    by_topic = {topic0(abi[name]): name for name in events}
    topics: list[Any] = [list(by_topic)]
    if topic1 is not None or topic2 is not None:
        topics.append(None if topic1 is None else id_topic(topic1))
    if topic2 is not None:
        topics.append(id_topic(topic2))
    start = ctx.deployed_block(contract) if from_block is None else from_block
    try:
        raw = chain_logs.scan(ctx.rpc, handle.address, start, ctx.rpc.block_number(), topics)
    except ChainError as exc:
        raise ChainError(f"cannot read {contract} logs from block {start}: {exc}") from None
    out: list[LogEntry] = []
    for entry in raw:
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
    out.sort(key=lambda e: (e.block, e.log_index))
    return out


def escrow_final_block(ctx: OpsContext, escrow_id: int) -> int | None:
    """The block of the event that released, refunded or cancelled ``escrow_id``, if any."""
    ends = fetch_logs(ctx, "DeliveryEscrow", ("DeliveryConfirmed", "EscrowRefunded", "EscrowCancelled"), escrow_id)
    return ends[-1].block if ends else None
