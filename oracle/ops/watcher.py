"""The watcher of optimistic settlement: every batch committed to an optimistic contract of the deployment
(OptimisticBilling's readings, OptimisticMotor's telematics reports: ``batch_tree.CONTRACTS``) is rebuilt from its
calldata, every leaf re-verified, and a bad batch challenged at once with the watcher's own key.

One :meth:`Watcher.run_pass`, for each optimistic contract the deployment has:

1. reads the ``BatchCommitted`` logs from the contract's durable cursor (SQLite, ``watcher_cursor``) to the latest
   block;
2. for each batch not judged yet and still inside its window (the deployment's ``CHALLENGE_WINDOW``, read from the
   contract): fetches the commit transaction, decodes ``commit(root, items)``, expands the target table and
   rebuilds the tree (``iotsettle.oracle.protocol.batch_tree``). A root that the data does not build, or data that
   names no event (an index past the table), is challenged with ``challengeData``; otherwise each leaf is
   checked with the oracle's own rules — the signature recovers to a key of the target's device in the registry,
   not retired before the event or more than the grace before the commit, the timestamp within the clock skew of
   the commit, the agreement or policy exists — and a leaf behind its target's claimed state (seq, registers or
   time) is a fault only if that claim came before the commit, which the contract alone knows. Every challenge is
   estimated before it is sent, so one the contract would refuse is never sent and never stops the watcher; the
   first bad leaf is challenged;
3. stores the verdict of each batch, then moves the contract's cursor past the scanned blocks.

The cursor moves only after every batch up to it is judged, so a crash or restart re-reads from the last cursor:
a batch committed while the watcher was down is judged at start-up as long as its window is open (a batch found
after its window is recorded as ``missed``).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_hash.auto import keccak
from iotsettle.oracle.config import Config
from iotsettle.oracle.ops.context import OpsContext, open_context
from iotsettle.oracle.ops.events import LogEntry, fetch_logs
from iotsettle.oracle.ops.tx import RevertedError, transact
from iotsettle.oracle.protocol import batch_tree, eip712
from iotsettle.oracle.protocol.errors import DeploymentError, IotSettleError, KeyFileError, SignatureError, StoreError
from web3.exceptions import Web3Exception

log = logging.getLogger(__name__)

CONTRACT = batch_tree.CONTRACTS["reading"]
REGISTRY = "DeviceRegistry"

#: reasons judged against the agreement's last claim, which counts only if it came before the commit
_STATEFUL = frozenset({"Replayed", "CounterRollback", "TimestampTooOld"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS watcher_cursor (
    chain_id INTEGER NOT NULL, contract TEXT NOT NULL, next_block INTEGER NOT NULL,
    PRIMARY KEY (chain_id, contract));
CREATE TABLE IF NOT EXISTS watcher_batches (
    chain_id INTEGER NOT NULL, contract TEXT NOT NULL, batch_id INTEGER NOT NULL,
    verdict TEXT NOT NULL, reason TEXT, leaf_index INTEGER, tx TEXT,
    PRIMARY KEY (chain_id, contract, batch_id));
"""


@dataclass(frozen=True)
class Verdict:
    """What the watcher concluded about one batch of ``contract``: ``valid``, ``challenged``, ``missed`` (found
    after its window), ``settled`` (voided or released by someone else before it was judged) or ``unreadable`` (not
    a direct commit call: the data cannot be rebuilt from the transaction's input)."""

    batch_id: int
    verdict: str
    reason: str | None = None
    leaf_index: int | None = None
    tx: str | None = None
    contract: str = CONTRACT

    def as_dict(self) -> dict[str, Any]:
        return {
            "contract": self.contract,
            "batchId": self.batch_id,
            "verdict": self.verdict,
            "reason": self.reason,
            "leafIndex": self.leaf_index,
            "tx": self.tx,
        }


@dataclass(frozen=True)
class WatchPass:
    from_block: int
    to_block: int
    verdicts: tuple[Verdict, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {
            "fromBlock": self.from_block,
            "toBlock": self.to_block,
            "verdicts": [v.as_dict() for v in self.verdicts],
        }


@dataclass(frozen=True)
class _Watched:
    """One optimistic contract of the deployment and the kind of event its batches carry."""

    kind: str
    name: str
    contract: Any
    address: str
    domain: eip712.Domain
    window: int


class Watcher:
    """Judges every committed batch of every optimistic contract of the deployment once; the cursors and the
    verdicts live in the SQLite file at ``store``."""

    def __init__(self, ctx: OpsContext, store: Path) -> None:
        ctx.require_sender()
        self.ctx = ctx
        self.watched: list[_Watched] = []
        for kind, name in batch_tree.CONTRACTS.items():
            if ctx.has(name):
                contract = ctx.contract(name)
                address = ctx.address(name)
                window = int(contract.functions.CHALLENGE_WINDOW().call())
                domain = eip712.Domain(ctx.chain.chain_id, address)
                self.watched.append(_Watched(kind, name, contract, address, domain, window))
        if not self.watched:
            raise DeploymentError("this deployment has no optimistic contract to watch; run `iotsettle deploy`")
        first = self.watched[0].contract
        self.registry = ctx.contract(REGISTRY)
        self.grace = int(first.functions.SETTLEMENT_GRACE().call())
        self.skew = int(first.functions.MAX_CLOCK_SKEW().call())
        try:
            store.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(store)
            self.db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the watcher store {store}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------------------------------------ the store

    def next_block(self, w: _Watched) -> int:
        row = self.db.execute(
            "SELECT next_block FROM watcher_cursor WHERE chain_id = ? AND contract = ?",
            (self.ctx.chain.chain_id, w.address),
        ).fetchone()
        return int(row[0]) if row else self.ctx.deployed_block(w.name)

    def _judged(self, w: _Watched, batch_id: int) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM watcher_batches WHERE chain_id = ? AND contract = ? AND batch_id = ?",
            (self.ctx.chain.chain_id, w.address, batch_id),
        ).fetchone()
        return row is not None

    def _record(self, w: _Watched, v: Verdict) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO watcher_batches VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self.ctx.chain.chain_id, w.address, v.batch_id, v.verdict, v.reason, v.leaf_index, v.tx),
            )

    def _advance(self, w: _Watched, block: int) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO watcher_cursor VALUES (?, ?, ?)",
                (self.ctx.chain.chain_id, w.address, block),
            )

    def verdicts(self) -> list[Verdict]:
        """Every stored verdict, contract by contract (readings first), batch by batch."""
        out: list[Verdict] = []
        for w in self.watched:
            rows = self.db.execute(
                "SELECT batch_id, verdict, reason, leaf_index, tx FROM watcher_batches"
                " WHERE chain_id = ? AND contract = ? ORDER BY batch_id",
                (self.ctx.chain.chain_id, w.address),
            ).fetchall()
            out += [Verdict(int(r[0]), str(r[1]), r[2], r[3], r[4], w.name) for r in rows]
        return out

    # ------------------------------------------------------------------------------------------------ the pass

    def run_pass(self) -> WatchPass:
        latest = int(self.ctx.w3.eth.get_block("latest")["number"])
        starts = [self.next_block(w) for w in self.watched]
        verdicts: list[Verdict] = []
        for w, start in zip(self.watched, starts, strict=True):
            if start > latest:
                continue
            for entry in fetch_logs(self.ctx, w.name, ["BatchCommitted"], from_block=start):
                batch_id = int(entry.args["batchId"])
                if self._judged(w, batch_id):
                    continue
                verdict = replace(self._judge(w, entry), contract=w.name)
                self._record(w, verdict)
                verdicts.append(verdict)
                (log.warning if verdict.verdict in ("challenged", "missed") else log.info)(
                    "%s batch %s: %s%s",
                    w.name,
                    batch_id,
                    verdict.verdict,
                    f" ({verdict.reason})" if verdict.reason else "",
                )
            self._advance(w, latest + 1)
        return WatchPass(min(starts), latest, tuple(verdicts))

    def _judge(self, w: _Watched, entry: LogEntry) -> Verdict:
        batch_id = int(entry.args["batchId"])
        root, _data_hash, _relayer, committed_at, status = w.contract.functions.batchOf(batch_id).call()
        if status != 1:
            return Verdict(batch_id, "settled")
        now = int(self.ctx.w3.eth.get_block("latest")["timestamp"])
        if now > committed_at + w.window:
            return Verdict(batch_id, "missed")
        data = self._items(w, entry)
        if data is None or keccak(data) != bytes(entry.args["dataHash"]):
            return Verdict(batch_id, "unreadable")
        try:
            items = batch_tree.split_batch(data, w.kind)
        except ValueError:  # committed data always has the batch's shape: an item names no event
            items = []
        leaves = [batch_tree.leaf(item, w.domain, w.kind) for item in items]
        if not items or batch_tree.root(leaves) != bytes(root):
            call = w.contract.functions.challengeData(batch_id, data)
            verdict = self._challenge(w, batch_id, call, "DataDoesNotBuildRoot", None)
            return verdict if verdict is not None else Verdict(batch_id, "valid")
        for index, item in enumerate(items):
            reason = self._fault(w, item, int(committed_at))
            if reason is None:
                continue
            proof = batch_tree.proof(leaves, index)
            call = w.contract.functions.challenge(batch_id, item, proof)
            verdict = self._challenge(w, batch_id, call, reason, index)
            if verdict is not None:
                return verdict
        return Verdict(batch_id, "valid")

    def _challenge(self, w: _Watched, batch_id: int, call: Any, reason: str, index: int | None) -> Verdict | None:
        """Send a challenge (estimated first: a challenge the contract would refuse is never sent). None when the
        contract finds the leaf valid: an event overtaken by a claim made after the commit is no fault of the
        relayer, and a disagreement between the oracle's checks and the contract must not stop the watcher."""
        try:
            tx = transact(self.ctx, call, w.name)
        except RevertedError as exc:
            if exc.revert.name == "BatchNotLive":
                return Verdict(batch_id, "settled")
            if exc.revert.name == "ChallengeWindowClosed":
                return Verdict(batch_id, "missed", reason, index)
            log.log(
                logging.INFO if reason in _STATEFUL else logging.WARNING,
                "batch %s leaf %s: %s by the oracle's checks, but the contract refuses the challenge: %s",
                batch_id,
                index,
                reason,
                exc,
            )
            return None
        return Verdict(batch_id, "challenged", reason, index, tx.tx_hash)

    def _items(self, w: _Watched, entry: LogEntry) -> bytes | None:
        tx = self.ctx.w3.eth.get_transaction(entry.tx_hash)
        if str(tx["to"]).lower() != w.address.lower():
            return None
        try:
            func, args = w.contract.decode_function_input(tx["input"])
        except ValueError:
            return None
        return bytes(args["items"]) if func.fn_name == "commit" else None

    def _fault(self, w: _Watched, item: bytes, committed_at: int) -> str | None:
        """The rule ``item`` breaks as of the commit, by the oracle's own checks; a reason of the target's claimed
        state (one of ``_STATEFUL``: a fault only if that claim came before the commit)."""
        message, r, vs = batch_tree.decode_item(item, w.kind)
        target = message["agreementId" if w.kind == "reading" else "policyId"]
        if message["timestamp"] > committed_at + self.skew:
            return "TimestampInFuture"
        if w.kind == "reading":
            raw = w.contract.functions.agreementOf(target).call()
            if raw[0] == "0x0000000000000000000000000000000000000000":
                return "UnknownTarget"
            state = {"seq": raw[10], "timestamp": raw[11], "registers": {"value": raw[9]}}
        else:
            policy = w.contract.functions.policyOf(target).call()
            if policy[2] == "0x0000000000000000000000000000000000000000":  # an unknown id reports no vehicle
                return "UnknownTarget"
            registers = {"odometer": policy[12], "harshBraking": policy[13], "speeding": policy[14]}
            state = {"seq": policy[15], "timestamp": policy[16], "registers": registers}
        reason = self._signer_fault(w, message, r, vs, target >> 96, committed_at)
        if reason is not None:
            return reason
        if message["seq"] <= state["seq"]:
            return "Replayed"
        if any(message[name] < last for name, last in state["registers"].items()):
            return "CounterRollback"
        if message["timestamp"] < state["timestamp"]:
            return "TimestampTooOld"
        return None

    def _signer_fault(
        self, w: _Watched, message: dict[str, int], r: bytes, vs: bytes, device: int, committed_at: int
    ) -> str | None:
        """The signature rule as of the commit: a key of ``device`` in the registry, not retired before the event or
        more than the grace before the commit (a key retired after the commit was current when it was relayed)."""
        digest = eip712.digest(batch_tree.PRIMARY[w.kind], message, w.domain)
        v = int.from_bytes(vs, "big")
        signature = r + (v & ((1 << 255) - 1)).to_bytes(32, "big") + bytes([27 + (v >> 255)])
        try:
            signer = eip712.recover(digest, signature)
        except SignatureError:
            return "SignatureInvalid"
        key_device, _kind, status, retired_at = self.registry.functions.keyInfo(signer).call()
        if status == 0:
            return "UnknownKey"
        if int(key_device, 16) != device:
            return "WrongDevice"
        timestamp = message["timestamp"]
        retired_first = retired_at <= committed_at
        if status != 1 and retired_first and (timestamp > retired_at or committed_at > retired_at + self.grace):
            return "KeyRotated" if status == 2 else "DeviceRevoked"
        return None


def watch_errors() -> tuple[type[BaseException], ...]:
    """What one failed pass raises and a long-running watcher logs and retries: the next pass starts again from
    the cursor, so nothing is skipped."""
    return (IotSettleError, Web3Exception, ValueError, OSError)


def run_passes(
    worker: Watcher,
    interval: float,
    stop: threading.Event,
    report: Callable[[WatchPass], None] = lambda _: None,
    failed: Callable[[BaseException], None] = lambda exc: log.warning("watcher pass failed: %s", exc),
) -> None:
    """Pass after pass, ``interval`` seconds apart, until ``stop`` is set (the pass in progress finishes). A failed
    pass is handed to ``failed`` and the next one starts again from the cursor, so nothing is skipped."""
    while not stop.is_set():
        try:
            report(worker.run_pass())
        except watch_errors() as exc:
            failed(exc)
        stop.wait(interval)


def context_of(config: Config) -> OpsContext:
    """The watcher's context from ``[watcher]``: the chain and deployment of ``config``, the watcher's own key."""
    key = config.watcher.private_key
    if not key:
        raise KeyFileError("[watcher] enabled needs the watcher's own key: set IOTSETTLE_WATCHER_PRIVATE_KEY")
    if key.strip().removeprefix("0x") == config.chain.private_key.strip().removeprefix("0x"):
        raise KeyFileError("[watcher] private_key is the relayer's key: give the watcher an account of its own")
    try:
        account = Account.from_key(key.strip())
    except (ValueError, TypeError):
        raise KeyFileError("[watcher] private_key is not a 32-byte hex key") from None
    return replace(open_context(config), sender=account)


def store_of(config: Config) -> Path:
    """``[watcher] store``, by default watcher.db in the node state folder (where `iotsettle watch` keeps it)."""
    return config.path(config.watcher.store or str(Path(config.node.state_dir) / "watcher.db"))


class WatchLoop:
    """The watcher on a thread of its own, beside the oracle daemon (``[watcher] enabled``); idle between passes."""

    def __init__(self, ctx: OpsContext, store: Path, interval: float) -> None:
        ctx.require_sender()
        self.ctx, self.store, self.interval = ctx, store, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            worker = Watcher(self.ctx, self.store)  # its SQLite connection belongs to this thread
        except watch_errors() as exc:
            log.error("the watcher cannot start: %s", exc)
            return
        log.info("watching optimistic batches every %.0f s as %s", self.interval, self.ctx.require_sender().address)
        try:
            run_passes(worker, self.interval, self._stop)
        finally:
            worker.close()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
