"""Credit profile fetching: the logs that concern an owner, read from the chain and nothing else.

Chunked ``eth_getLogs`` over the deployment's contracts, each from its deployment block (proven by its creation
transaction, :func:`contract_refs`) up to one fixed block (:func:`chain_point`), plus the timestamps of the blocks
whose time a figure needs. No contract state, no oracle database. Which ids concern the owner is the derivation's
rule (``iotsettle.oracle.credit.derive.follow_ups``), so the fetching and the figures agree on it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import to_checksum_address
from iotsettle.oracle.chain import logs as chain_logs
from iotsettle.oracle.chain.abi import abi_type
from iotsettle.oracle.chain.rpc import BLOCKS_PER_BATCH, RpcClient
from iotsettle.oracle.credit.derive import TIMED_EVENTS, ChainLog, ChainPoint, checksum, follow_ups
from iotsettle.oracle.protocol import premium, settled
from iotsettle.oracle.protocol.errors import ChainError, IotSettleError

#: The contracts a profile reads, in deployment order; one missing from the manifest is skipped.
CONTRACTS = ("DeviceRegistry", "DeliveryEscrow", "MeteredBilling", "MotorInsurance", "CropInsurance", "LoanBook")
#: Ids per topic list in one eth_getLogs call (nodes bound the size of a filter).
IDS_PER_QUERY = 100


@dataclass(frozen=True)
class ContractRef:
    """A contract the profile reads: where, since when (its creation block, proven by its creation transaction)."""

    name: str
    address: str
    from_block: int
    deploy_tx: str
    code_hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "fromBlock": self.from_block,
            "deployTx": self.deploy_tx,
            "codeHash": self.code_hash,
        }


class ProfileMismatch(IotSettleError):
    """A credit profile file does not match what the chain says."""


ProgressFn = Callable[[str], None]


def _normalise(abi_type: str, value: Any) -> Any:
    if abi_type == "address":
        return checksum(value)
    return value


def _word(abi_type: str, word: bytes) -> Any:
    """One static ABI word; the fast path for the events a profile reads (eth_abi handles the rest)."""
    if abi_type.startswith("uint"):
        return int.from_bytes(word, "big")
    if abi_type.startswith("int"):
        return int.from_bytes(word, "big", signed=True)
    if abi_type == "address":
        return checksum("0x" + word[12:].hex())
    if abi_type == "bool":
        return word != bytes(32)
    return bytes(word)  # bytes32


_STATIC = (
    {"address", "bool", "bytes32"} | {f"uint{n}" for n in range(8, 257, 8)} | {f"int{n}" for n in range(8, 257, 8)}
)


@dataclass(frozen=True)
class _EventAbi:
    name: str
    topic0: str
    indexed: tuple[tuple[str, str], ...]
    data: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> _EventAbi:
        types = [abi_type(i) for i in entry["inputs"]]
        topic0 = chain_logs.topic0(entry)
        indexed = tuple((i["name"], t) for i, t in zip(entry["inputs"], types, strict=True) if i.get("indexed"))
        data = tuple((i["name"], t) for i, t in zip(entry["inputs"], types, strict=True) if not i.get("indexed"))
        return cls(entry["name"], topic0, indexed, data)

    def decode(self, topics: Sequence[str], data: str) -> dict[str, Any]:
        args: dict[str, Any] = {}
        for (name, typ), topic in zip(self.indexed, topics[1:], strict=True):
            raw = bytes.fromhex(topic[2:])
            # An indexed dynamic value is only its hash: kept as bytes.
            args[name] = _word(typ, raw) if typ in _STATIC else raw
        blob = bytes.fromhex(data[2:])
        if all(t in _STATIC for _, t in self.data):
            for i, (name, abi_type) in enumerate(self.data):
                args[name] = _word(abi_type, blob[32 * i : 32 * i + 32])
            return args
        values = abi_decode([t for _, t in self.data], blob)
        for (name, abi_type), value in zip(self.data, values, strict=True):
            args[name] = _normalise(abi_type, value)
        return args


@dataclass(frozen=True)
class ScanStats:
    logs: int
    rpc_calls: int
    blocks_timed: int


class _Scanner:
    def __init__(
        self,
        rpc: RpcClient,
        contracts: Mapping[str, ContractRef],
        abis: Mapping[str, Sequence[Mapping[str, Any]]],
        to_block: int,
        progress: ProgressFn,
    ) -> None:
        self._rpc = rpc
        self._contracts = contracts
        self._to_block = to_block
        self._progress = progress
        self._events: dict[str, dict[str, _EventAbi]] = {
            name: {e["name"]: _EventAbi.of(e) for e in abis[name] if e.get("type") == "event"} for name in contracts
        }

    def fetch(self, contract: str, events: Sequence[str], topics_after: Sequence[Any] = ()) -> list[ChainLog]:
        """``events`` of ``contract`` over its whole range, with further topic filters (None = any)."""
        ref = self._contracts.get(contract)
        if ref is None:
            return []
        abis = self._events[contract]
        known = [abis[n] for n in events if n in abis]
        if not known:
            return []
        by_topic = {e.topic0: e for e in known}
        topics = [list(by_topic), *topics_after]
        out: list[ChainLog] = []
        total = self._to_block - ref.from_block + 1
        for _, stop, raws in chain_logs.scan_chunks(self._rpc, ref.address, ref.from_block, self._to_block, topics):
            for raw in raws:
                event = by_topic.get(str(raw["topics"][0]).lower())
                if event is not None and event.name == settled.EVENT:
                    out += _records(contract, raw)
                elif event is not None:
                    out.append(
                        ChainLog(
                            int(raw["blockNumber"], 16),
                            int(raw["logIndex"], 16),
                            str(raw["transactionHash"]),
                            contract,
                            event.name,
                            premium.expand(event.name, event.decode(raw["topics"], raw["data"])),
                        )
                    )
            if total > chain_logs.LOG_CHUNK_BLOCKS:
                self._progress(
                    f"{contract} {', '.join(events)}: blocks {ref.from_block}..{stop} "
                    f"({(stop - ref.from_block + 1) * 100 // total}%)"
                )
        return out

    def fetch_ids(self, contract: str, events: Sequence[str], ids: Sequence[Any]) -> list[ChainLog]:
        """``events`` whose first indexed argument is one of ``ids``; the records of a ``ReadingsSettled`` batch
        log (no indexed id) are read in one scan and kept when their agreement is one of ``ids``."""
        indexed = [e for e in events if e != settled.EVENT]
        out: list[ChainLog] = []
        for i in range(0, len(ids), IDS_PER_QUERY):
            out += self.fetch(contract, indexed, [[chain_logs.id_topic(v) for v in ids[i : i + IDS_PER_QUERY]]])
        if settled.EVENT in events:
            wanted = {int(v) for v in ids}
            out += [e for e in self.fetch(contract, [settled.EVENT]) if int(e.args["agreementId"]) in wanted]
        return out


def _records(contract: str, raw: Mapping[str, Any]) -> list[ChainLog]:
    """One ChainLog per record of a raw ``ReadingsSettled`` batch log (``iotsettle.oracle.protocol.settled``)."""
    block, index, tx = int(raw["blockNumber"], 16), int(raw["logIndex"], 16), str(raw["transactionHash"])
    return [
        ChainLog(block, index, tx, contract, settled.EVENT, r.args(), r.index)
        for r in settled.decode_log_data(bytes.fromhex(str(raw["data"])[2:]))
    ]


def scan(
    w3: Any,
    subject: str,
    contracts: Mapping[str, ContractRef],
    abis: Mapping[str, Sequence[Mapping[str, Any]]],
    to_block: int,
    progress: ProgressFn = lambda _m: None,
) -> tuple[list[ChainLog], dict[int, int], ScanStats]:
    """Every log that concerns ``subject`` up to ``to_block``, and the block times the figures need."""
    subject = to_checksum_address(subject)
    rpc = RpcClient(w3)
    scanner = _Scanner(rpc, contracts, abis, to_block, progress)
    owner_topic = chain_logs.id_topic(subject)
    progress(f"scanning {len(contracts)} contracts up to block {to_block} for {subject}")
    logs = scanner.fetch("DeviceRegistry", ["DeviceRegistered"], [None, owner_topic])
    logs += scanner.fetch("MeteredBilling", ["AgreementOffered"])
    logs += scanner.fetch("DeliveryEscrow", ["EscrowCreated"])
    logs += scanner.fetch("MotorInsurance", ["PolicyOffered"])
    logs += scanner.fetch("CropInsurance", ["PoolCreated", "SeasonCreated", "CoverBought"])
    logs += scanner.fetch("LoanBook", ["LoanOffered"], [None, None, owner_topic])
    fetched: dict[tuple[str, str], set[Any]] = defaultdict(set)
    while True:  # twice at most: the second round follows the escrows and covers paid to loan accounts
        found = False
        for contract, purposes in follow_ups(subject, logs).items():
            for purpose, (events, ids) in purposes.items():
                new = [i for i in ids if i not in fetched[(contract, purpose)]]
                if new:
                    found = True
                    fetched[(contract, purpose)].update(new)
                    logs += scanner.fetch_ids(contract, events, new)
        if not found:
            break
    logs.sort(key=lambda e: e.key)
    timed = {e.block for e in logs if e.event in TIMED_EVENTS}
    if len(timed) > BLOCKS_PER_BATCH:
        progress(f"{len(logs)} logs; reading the time of {len(timed)} blocks")
    times = rpc.block_times(timed, progress)
    return logs, times, ScanStats(len(logs), rpc.calls, len(times))


def check_unchanged(w3: Any, point: ChainPoint) -> None:
    """The end block must still be the one the scan started from: a reorganisation during the scan could mix
    logs of two histories."""
    now = RpcClient(w3).header(point.to_block)
    if str(now["hash"]) != point.to_block_hash:
        raise ChainError(
            f"block {point.to_block} was reorganised during the scan ({point.to_block_hash} → "
            f"{now['hash']}); profile again, with --to-block a few blocks behind the head"
        )


def chain_point(w3: Any, to_block: int | None) -> ChainPoint:
    """Chain id, genesis hash, and the number, hash and time of ``to_block`` (default: the latest block)."""
    rpc = RpcClient(w3)
    latest = rpc.header("latest")
    latest_number = int(latest["number"], 16)
    if to_block is not None and to_block > latest_number:
        raise ChainError(f"block {to_block} is not mined yet (latest is {latest_number})")
    end = latest if to_block is None else rpc.header(to_block)
    chain_id = rpc.chain_id()
    return ChainPoint(
        chain_id, str(rpc.header(0)["hash"]), int(end["number"], 16), str(end["hash"]), int(end["timestamp"], 16)
    )


def contract_refs(w3: Any, deployments: Mapping[str, tuple[str, int, str]], to_block: int) -> dict[str, ContractRef]:
    """The profile's contracts (name → (address, deployment block, creation tx)) that exist at ``to_block``, with
    code hashes. Each creation transaction must have created that address in that block: a scan that started
    later than the contract's creation could leave out history, so the start is proven, not claimed."""
    rpc = RpcClient(w3)
    refs: dict[str, ContractRef] = {}
    for name in CONTRACTS:
        if name not in deployments:
            continue
        address, block, tx = deployments[name]
        if block > to_block:
            continue
        address = to_checksum_address(address)
        receipt = rpc.receipt(tx)
        created = receipt.get("contractAddress") if receipt else None
        if (
            receipt is None
            or not created
            or to_checksum_address(created) != address
            or int(receipt["blockNumber"], 16) != block
        ):
            raise ProfileMismatch(
                f"contracts: {name} at {address} was not created by transaction {tx} in block "
                f"{block}, so its history may start elsewhere"
            )
        refs[name] = ContractRef(name, address, int(block), tx, rpc.code_hash(address))
    return refs
