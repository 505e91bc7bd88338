"""Credit profile fetching: the logs that concern an owner, read from the chain and nothing else.

Chunked ``eth_getLogs`` over the deployment's contracts, each from its deployment block (proven by its creation
transaction, :func:`contract_refs`) up to one fixed block (:func:`chain_point`), plus the timestamps of the blocks
whose time a figure needs. No contract state, no oracle database. Which ids concern the owner is the derivation's
rule (``iotsettle.oracle.credit.derive.follow_ups``), so the fetching and the figures agree on it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_hash.auto import keccak
from eth_utils import to_checksum_address
from web3.exceptions import Web3Exception

from iotsettle.oracle.credit.derive import TIMED_EVENTS, ChainLog, ChainPoint, checksum, follow_ups
from iotsettle.oracle.protocol.errors import ChainError, IotSettleError

#: The contracts a profile reads, in deployment order; one missing from the manifest is skipped.
CONTRACTS = ("DeviceRegistry", "DeliveryEscrow", "MeteredBilling", "MotorInsurance", "CropInsurance", "LoanBook")
#: Blocks per eth_getLogs call; a node that refuses a range (too many results) gets it in halves.
LOG_CHUNK_BLOCKS = 50_000
#: Ids per topic list in one eth_getLogs call (nodes bound the size of a filter).
IDS_PER_QUERY = 100
#: Block headers per JSON-RPC batch when reading block times.
BLOCKS_PER_BATCH = 200


@dataclass(frozen=True)
class ContractRef:
    """A contract the profile reads: where, since when (its creation block, proven by its creation transaction)."""

    name: str
    address: str
    from_block: int
    deploy_tx: str
    code_hash: str

    def as_dict(self) -> dict[str, Any]:
        return {"address": self.address, "fromBlock": self.from_block, "deployTx": self.deploy_tx,
                "codeHash": self.code_hash}


class ProfileMismatch(IotSettleError):
    """A credit profile file does not match what the chain says."""


class _Refused(ChainError):
    """The node answered with a JSON-RPC error (as opposed to not answering)."""


ProgressFn = Callable[[str], None]


def _abi_type(entry: Mapping[str, Any]) -> str:
    kind = str(entry["type"])
    if kind.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in entry["components"]) + ")" + kind[len("tuple"):]
    return kind


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


_STATIC = {"address", "bool", "bytes32"} | {f"uint{n}" for n in range(8, 257, 8)} | {f"int{n}" for n in range(8, 257, 8)}


@dataclass(frozen=True)
class _EventAbi:
    name: str
    topic0: str
    indexed: tuple[tuple[str, str], ...]
    data: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> _EventAbi:
        types = [_abi_type(i) for i in entry["inputs"]]
        topic0 = "0x" + keccak(f"{entry['name']}({','.join(types)})".encode()).hex()
        indexed = tuple((i["name"], t) for i, t in zip(entry["inputs"], types, strict=True) if i.get("indexed"))
        data = tuple((i["name"], t) for i, t in zip(entry["inputs"], types, strict=True) if not i.get("indexed"))
        return cls(entry["name"], topic0, indexed, data)

    def decode(self, topics: Sequence[str], data: str) -> dict[str, Any]:
        args: dict[str, Any] = {}
        for (name, abi_type), topic in zip(self.indexed, topics[1:], strict=True):
            raw = bytes.fromhex(topic[2:])
            # An indexed dynamic value is only its hash: kept as bytes.
            args[name] = _word(abi_type, raw) if abi_type in _STATIC else raw
        blob = bytes.fromhex(data[2:])
        if all(t in _STATIC for _, t in self.data):
            for i, (name, abi_type) in enumerate(self.data):
                args[name] = _word(abi_type, blob[32 * i : 32 * i + 32])
            return args
        values = abi_decode([t for _, t in self.data], blob)
        for (name, abi_type), value in zip(self.data, values, strict=True):
            args[name] = _normalise(abi_type, value)
        return args


def _topic(value: int | str) -> str:
    if isinstance(value, str):
        return "0x" + bytes.fromhex(value[2:]).rjust(32, b"\0").hex()
    return "0x" + int(value).to_bytes(32, "big").hex()


class _Reader:
    """Raw JSON-RPC reads (eth_getLogs, block headers) without web3's per-field formatting: fast on big scans."""

    def __init__(self, w3: Any, progress: ProgressFn) -> None:
        self._w3 = w3
        self._progress = progress
        self.calls = 0

    def _request(self, method: str, params: list[Any]) -> Any:
        self.calls += 1
        try:
            response = self._w3.provider.make_request(method, params)
        except (OSError, ValueError, Web3Exception) as exc:
            raise ChainError(f"{method} failed: the node did not answer ({type(exc).__name__})") from None
        if "error" in response:
            error = response["error"]
            raise _Refused(f"{method} refused: {error.get('message', error) if isinstance(error, dict) else error}")
        return response["result"]

    def logs(self, address: str, start: int, stop: int, topics: list[Any]) -> list[dict[str, Any]]:
        query = {"address": address, "fromBlock": hex(start), "toBlock": hex(stop), "topics": topics}
        try:
            return list(self._request("eth_getLogs", [query]))
        except _Refused:
            if start >= stop:
                raise
        # Providers cap the results or the span of one call: try each half. A refusal that persists down to one
        # block propagates from the first leaf, so this costs at most log2(span) extra calls.
        middle = (start + stop) // 2
        return self.logs(address, start, middle, topics) + self.logs(address, middle + 1, stop, topics)

    def header(self, block: int | str) -> dict[str, Any]:
        tag = block if isinstance(block, str) else hex(block)
        result = self._request("eth_getBlockByNumber", [tag, False])
        if result is None:
            raise ChainError(f"block {block} does not exist on this node")
        return dict(result)

    def block_times(self, blocks: Iterable[int]) -> dict[int, int]:
        wanted = sorted(set(blocks))
        out: dict[int, int] = {}
        batch = getattr(self._w3.provider, "make_batch_request", None)
        for i in range(0, len(wanted), BLOCKS_PER_BATCH):
            part = wanted[i : i + BLOCKS_PER_BATCH]
            results: Any = None
            if batch is not None and len(part) > 1:
                self.calls += 1
                try:
                    results = batch([("eth_getBlockByNumber", [hex(n), False]) for n in part])
                except (OSError, ValueError):
                    results = None
            if isinstance(results, list) and len(results) == len(part) and all("result" in r for r in results):
                for n, r in zip(part, results, strict=True):
                    out[n] = int(r["result"]["timestamp"], 16)
            else:
                for n in part:
                    out[n] = int(self.header(n)["timestamp"], 16)
            if len(wanted) > BLOCKS_PER_BATCH:
                self._progress(f"block times: {min(i + BLOCKS_PER_BATCH, len(wanted))}/{len(wanted)}")
        return out

    def receipt(self, tx_hash: str) -> dict[str, Any] | None:
        try:
            result = self._request("eth_getTransactionReceipt", [tx_hash])
        except _Refused:
            return None
        return dict(result) if result else None

    def code_hash(self, address: str) -> str:
        code = self._request("eth_getCode", [address, "latest"])
        return "0x" + keccak(bytes.fromhex(str(code)[2:])).hex()


@dataclass(frozen=True)
class ScanStats:
    logs: int
    rpc_calls: int
    blocks_timed: int


class _Scanner:
    def __init__(self, reader: _Reader, contracts: Mapping[str, ContractRef], abis: Mapping[str, Sequence[Mapping[str, Any]]],
                 to_block: int, progress: ProgressFn) -> None:
        self._reader = reader
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
        start = ref.from_block
        total = self._to_block - ref.from_block + 1
        while start <= self._to_block:
            stop = min(start + LOG_CHUNK_BLOCKS - 1, self._to_block)
            for raw in self._reader.logs(ref.address, start, stop, topics):
                if raw.get("removed"):
                    continue
                event = by_topic.get(str(raw["topics"][0]).lower())
                if event is None:
                    continue
                out.append(ChainLog(int(raw["blockNumber"], 16), int(raw["logIndex"], 16), str(raw["transactionHash"]),
                                    contract, event.name, event.decode(raw["topics"], raw["data"])))
            if total > LOG_CHUNK_BLOCKS:
                self._progress(f"{contract} {', '.join(events)}: blocks {ref.from_block}..{stop} "
                               f"({(stop - ref.from_block + 1) * 100 // total}%)")
            start = stop + 1
        return out

    def fetch_ids(self, contract: str, events: Sequence[str], ids: Sequence[Any]) -> list[ChainLog]:
        out: list[ChainLog] = []
        for i in range(0, len(ids), IDS_PER_QUERY):
            out += self.fetch(contract, events, [[_topic(v) for v in ids[i : i + IDS_PER_QUERY]]])
        return out


def scan(w3: Any, subject: str, contracts: Mapping[str, ContractRef], abis: Mapping[str, Sequence[Mapping[str, Any]]],
         to_block: int, progress: ProgressFn = lambda _m: None) -> tuple[list[ChainLog], dict[int, int], ScanStats]:
    """Every log that concerns ``subject`` up to ``to_block``, and the block times the figures need."""
    subject = to_checksum_address(subject)
    reader = _Reader(w3, progress)
    scanner = _Scanner(reader, contracts, abis, to_block, progress)
    owner_topic = _topic(subject)
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
    times = reader.block_times(timed)
    return logs, times, ScanStats(len(logs), reader.calls, len(times))


def check_unchanged(w3: Any, point: ChainPoint) -> None:
    """The end block must still be the one the scan started from: a reorganisation during the scan could mix
    logs of two histories."""
    now = _Reader(w3, lambda _m: None).header(point.to_block)
    if str(now["hash"]) != point.to_block_hash:
        raise ChainError(f"block {point.to_block} was reorganised during the scan ({point.to_block_hash} → "
                         f"{now['hash']}); profile again, with --to-block a few blocks behind the head")


def chain_point(w3: Any, to_block: int | None) -> ChainPoint:
    """Chain id, genesis hash, and the number, hash and time of ``to_block`` (default: the latest block)."""
    reader = _Reader(w3, lambda _m: None)
    latest = reader.header("latest")
    latest_number = int(latest["number"], 16)
    if to_block is not None and to_block > latest_number:
        raise ChainError(f"block {to_block} is not mined yet (latest is {latest_number})")
    end = latest if to_block is None else reader.header(to_block)
    chain_id = int(reader._request("eth_chainId", []), 16)
    return ChainPoint(chain_id, str(reader.header(0)["hash"]), int(end["number"], 16), str(end["hash"]),
                      int(end["timestamp"], 16))


def contract_refs(w3: Any, deployments: Mapping[str, tuple[str, int, str]], to_block: int) -> dict[str, ContractRef]:
    """The profile's contracts (name → (address, deployment block, creation tx)) that exist at ``to_block``, with
    code hashes. Each creation transaction must have created that address in that block: a scan that started
    later than the contract's creation could leave out history, so the start is proven, not claimed."""
    reader = _Reader(w3, lambda _m: None)
    refs: dict[str, ContractRef] = {}
    for name in CONTRACTS:
        if name not in deployments:
            continue
        address, block, tx = deployments[name]
        if block > to_block:
            continue
        address = to_checksum_address(address)
        receipt = reader.receipt(tx)
        created = receipt.get("contractAddress") if receipt else None
        if not created or to_checksum_address(created) != address or int(receipt["blockNumber"], 16) != block:
            raise ProfileMismatch(f"contracts: {name} at {address} was not created by transaction {tx} in block "
                                  f"{block}, so its history may start elsewhere")
        refs[name] = ContractRef(name, address, int(block), tx, reader.code_hash(address))
    return refs

