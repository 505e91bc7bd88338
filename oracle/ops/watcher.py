"""The watcher of optimistic settlement: every batch committed to OptimisticBilling is rebuilt from its calldata,
every leaf re-verified, and a bad batch challenged at once with the watcher's own key.

One :meth:`Watcher.run_pass`:

1. reads the ``BatchCommitted`` logs from the durable cursor (SQLite, ``watcher_cursor``) to the latest block;
2. for each batch not judged yet and still inside its window (the deployment's ``CHALLENGE_WINDOW``, read from the
   contract): fetches the commit transaction, decodes ``commit(root, readings)``, expands the agreement table and
   rebuilds the tree (``iotsettle.oracle.protocol.batch_tree``). A root that the data does not build, or data that
   names no reading (an index past the table), is challenged with ``challengeData``; otherwise each leaf is
   checked with the oracle's own rules — the signature recovers to a key of the agreement's device in the
   registry, not retired before the reading or more than the grace before the commit, the timestamp within the
   clock skew of the commit, the agreement exists — and a leaf behind the agreement's claimed state (seq, register
   or time) is a fault only if that claim came before the commit, which the contract alone knows. Every challenge
   is estimated before it is sent, so one the contract would refuse is never sent and never stops the watcher; the
   first bad leaf is challenged;
3. stores the verdict of each batch, then moves the cursor past the scanned blocks.

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
from iotsettle.oracle.protocol.errors import IotSettleError, KeyFileError, SignatureError, StoreError
from web3.exceptions import Web3Exception

log = logging.getLogger(__name__)

CONTRACT = "OptimisticBilling"
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
    """What the watcher concluded about one batch: ``valid``, ``challenged``, ``missed`` (found after its window),
    ``settled`` (voided or released by someone else before it was judged) or ``unreadable`` (not a direct commit
    call: the data cannot be rebuilt from the transaction's input)."""

    batch_id: int
    verdict: str
    reason: str | None = None
    leaf_index: int | None = None
    tx: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
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


class Watcher:
    """Judges every committed batch once; the cursor and the verdicts live in the SQLite file at ``store``."""

    def __init__(self, ctx: OpsContext, store: Path) -> None:
        ctx.require_sender()
        self.ctx = ctx
        self.opt = ctx.contract(CONTRACT)
        self.registry = ctx.contract(REGISTRY)
        self.address = ctx.address(CONTRACT)
        self.domain = eip712.Domain(ctx.chain.chain_id, self.address)
        self.window = int(self.opt.functions.CHALLENGE_WINDOW().call())
        self.grace = int(self.opt.functions.SETTLEMENT_GRACE().call())
        self.skew = int(self.opt.functions.MAX_CLOCK_SKEW().call())
        try:
            store.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(store)
            self.db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the watcher store {store}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------------------------------------ the store

    @property
    def next_block(self) -> int:
        row = self.db.execute(
            "SELECT next_block FROM watcher_cursor WHERE chain_id = ? AND contract = ?",
            (self.ctx.chain.chain_id, self.address),
        ).fetchone()
        return int(row[0]) if row else self.ctx.deployed_block(CONTRACT)

    def _judged(self, batch_id: int) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM watcher_batches WHERE chain_id = ? AND contract = ? AND batch_id = ?",
            (self.ctx.chain.chain_id, self.address, batch_id),
        ).fetchone()
        return row is not None

    def _record(self, v: Verdict) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO watcher_batches VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self.ctx.chain.chain_id, self.address, v.batch_id, v.verdict, v.reason, v.leaf_index, v.tx),
            )

    def _advance(self, block: int) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO watcher_cursor VALUES (?, ?, ?)",
                (self.ctx.chain.chain_id, self.address, block),
            )

    def verdicts(self) -> list[Verdict]:
        rows = self.db.execute(
            "SELECT batch_id, verdict, reason, leaf_index, tx FROM watcher_batches"
            " WHERE chain_id = ? AND contract = ? ORDER BY batch_id",
            (self.ctx.chain.chain_id, self.address),
        ).fetchall()
        return [Verdict(int(r[0]), str(r[1]), r[2], r[3], r[4]) for r in rows]

    # ------------------------------------------------------------------------------------------------ the pass

    def run_pass(self) -> WatchPass:
        latest = int(self.ctx.w3.eth.get_block("latest")["number"])
        start = self.next_block
        if start > latest:
            return WatchPass(start, latest)
        verdicts: list[Verdict] = []
        for entry in fetch_logs(self.ctx, CONTRACT, ["BatchCommitted"], from_block=start):
            batch_id = int(entry.args["batchId"])
            if self._judged(batch_id):
                continue
            verdict = self._judge(entry)
            self._record(verdict)
            verdicts.append(verdict)
            (log.warning if verdict.verdict in ("challenged", "missed") else log.info)(
                "batch %s: %s%s", batch_id, verdict.verdict, f" ({verdict.reason})" if verdict.reason else ""
            )
        self._advance(latest + 1)
        return WatchPass(start, latest, tuple(verdicts))

    def _judge(self, entry: LogEntry) -> Verdict:
        batch_id = int(entry.args["batchId"])
        root, _data_hash, _relayer, committed_at, status = self.opt.functions.batchOf(batch_id).call()
        if status != 1:
            return Verdict(batch_id, "settled")
        now = int(self.ctx.w3.eth.get_block("latest")["timestamp"])
        if now > committed_at + self.window:
            return Verdict(batch_id, "missed")
        readings = self._readings(entry)
        if readings is None or keccak(readings) != bytes(entry.args["dataHash"]):
            return Verdict(batch_id, "unreadable")
        try:
            items = batch_tree.split_batch(readings)
        except ValueError:  # committed data always has the batch's shape: an item names no reading
            items = []
        leaves = [batch_tree.leaf(item, self.domain) for item in items]
        if not items or batch_tree.root(leaves) != bytes(root):
            call = self.opt.functions.challengeData(batch_id, readings)
            verdict = self._challenge(batch_id, call, "DataDoesNotBuildRoot", None)
            return verdict if verdict is not None else Verdict(batch_id, "valid")
        for index, item in enumerate(items):
            reason = self._fault(item, int(committed_at))
            if reason is None:
                continue
            proof = batch_tree.proof(leaves, index)
            verdict = self._challenge(batch_id, self.opt.functions.challenge(batch_id, item, proof), reason, index)
            if verdict is not None:
                return verdict
        return Verdict(batch_id, "valid")

    def _challenge(self, batch_id: int, call: Any, reason: str, index: int | None) -> Verdict | None:
        """Send a challenge (estimated first: a challenge the contract would refuse is never sent). None when the
        contract finds the leaf valid: a reading overtaken by a claim made after the commit is no fault of the
        relayer, and a disagreement between the oracle's checks and the contract must not stop the watcher."""
        try:
            tx = transact(self.ctx, call, CONTRACT)
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

    def _readings(self, entry: LogEntry) -> bytes | None:
        tx = self.ctx.w3.eth.get_transaction(entry.tx_hash)
        if str(tx["to"]).lower() != self.address.lower():
            return None
        try:
            func, args = self.opt.decode_function_input(tx["input"])
        except ValueError:
            return None
        return bytes(args["items"]) if func.fn_name == "commit" else None

    def _fault(self, item: bytes, committed_at: int) -> str | None:
        """The rule ``item`` breaks as of the commit, by the oracle's own checks; a reason of
        the agreement's claimed state (one of ``_STATEFUL``: a fault only if that claim came before the commit)."""
        reading = batch_tree.decode_reading(item)
        if reading.timestamp > committed_at + self.skew:
            return "TimestampInFuture"
        agreement = self.opt.functions.agreementOf(reading.agreement_id).call()
        if agreement[0] == "0x0000000000000000000000000000000000000000":
            return "UnknownTarget"
        digest = eip712.digest("Reading", reading.message(), self.domain)
        try:
            signer = eip712.recover(digest, reading.signature())
        except SignatureError:
            return "SignatureInvalid"
        device, _kind, status, retired_at = self.registry.functions.keyInfo(signer).call()
        if status == 0:
            return "UnknownKey"
        if int(device, 16) != reading.agreement_id >> 96:
            return "WrongDevice"
        # A key retired after the commit was current when the leaf was relayed.
        retired_first = retired_at <= committed_at
        if status != 1 and retired_first and (reading.timestamp > retired_at or committed_at > retired_at + self.grace):
            return "KeyRotated" if status == 2 else "DeviceRevoked"
        last_value, last_seq, last_timestamp = agreement[9], agreement[10], agreement[11]
        if reading.seq <= last_seq:
            return "Replayed"
        if reading.value < last_value:
            return "CounterRollback"
        if reading.timestamp < last_timestamp:
            return "TimestampTooOld"
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
