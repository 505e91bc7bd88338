"""The daemon as an optimistic relayer (docs/OPTIMISTIC.md): readings of agreements opened on OptimisticBilling are
committed in bonded batches, and after each challenge window the newest reading per agreement is claimed.

Intake stores a reading signed for OptimisticBilling as ``optimistic`` (``Store.commit_batch``), acknowledged and
answered like any other: the planner never takes it. One thread then makes passes, each:

1. **follows** the transactions it sent: a commit mined becomes a ``committed`` batch (its on-chain id and time
   from ``BatchCommitted`` and the block); a commit that reverted or whose nonce went to another transaction frees
   its readings; a claim mined settles every optimistic reading of its agreement up to its seq (``final``);
2. **judges** the committed batches: one voided by a challenge frees its readings (the challenged leaf is
   dead-lettered with the contract's reason) so the honest ones are committed again; one whose window ended is
   **claimed**: across all such batches, the newest leaf per agreement, once, and only when it is ahead of the
   agreement's claimed state (a claim that the contract would refuse is estimated first and never sent); then its
   bond is released;
3. **commits** the readings waiting (not in a live batch): every ``[optimistic] batch`` readings, or sooner when the
   oldest has waited ``[optimistic] interval``. A reading the contract would find at fault as of now (behind the
   agreement's claimed state, unknown agreement, retired key) is never committed: it would cost the bond.

Restart safety: each transaction is signed and stored (nonce, raw bytes, the readings of a batch) in one SQLite
transaction before it is broadcast, with its nonce taken from the settlement half's own counter
(``TxStore.take_nonce``), so commits, claims and settlement batches share the relayer's nonces without gaps or
collisions. A daemon killed after a commit finds it at restart (re-broadcast if it was not mined, never signed
twice) and claims it after the window; one killed after a claim was sent settles it from its receipt.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from iotsettle.oracle.chain.artifacts import load_artifact
from iotsettle.oracle.chain.connection import Chain
from iotsettle.oracle.chain.logs import topic0
from iotsettle.oracle.chain.revert import ErrorDecoder, RejectReason
from iotsettle.oracle.chain.rpc import RpcClient
from iotsettle.oracle.chain.send import call_revert_data, fees
from iotsettle.oracle.chain.signer import Signer
from iotsettle.oracle.config import Config
from iotsettle.oracle.daemon.store import Store, StoredEvent
from iotsettle.oracle.daemon.submitter import RPC_ERRORS
from iotsettle.oracle.daemon.txstore import TxStore
from iotsettle.oracle.protocol import batch_tree, eip712
from iotsettle.oracle.protocol.errors import ChainError, ConfigError, DeploymentError, IotSettleError
from web3.contract import Contract
from web3.exceptions import ContractLogicError, Web3Exception

log = logging.getLogger(__name__)

CONTRACT = "OptimisticBilling"
REGISTRY = "DeviceRegistry"

#: IOptimisticBilling.BatchStatus.Voided
_VOIDED = 2
#: IDeviceRegistry key status: Active
_KEY_ACTIVE = 1
_ZERO = "0x0000000000000000000000000000000000000000"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS optimistic_batch (
    id           INTEGER PRIMARY KEY,
    chain_id     INTEGER NOT NULL,
    contract     TEXT    NOT NULL,
    root         BLOB    NOT NULL,
    nonce        INTEGER NOT NULL,
    raw          BLOB    NOT NULL,                  -- the signed commit, stored before it is broadcast
    tx_hash      TEXT    NOT NULL,
    status       TEXT    NOT NULL,                  -- sending | committed | voided | claimed | failed
    batch_id     INTEGER,                           -- on chain (BatchCommitted)
    committed_at INTEGER,                           -- block time of the commit
    created_at   REAL    NOT NULL,
    reason       TEXT
);
CREATE INDEX IF NOT EXISTS optimistic_batch_status ON optimistic_batch (status);
CREATE TABLE IF NOT EXISTS optimistic_leaf (
    batch    INTEGER NOT NULL REFERENCES optimistic_batch (id),
    leaf     INTEGER NOT NULL,
    event_id INTEGER NOT NULL,                      -- events.id
    PRIMARY KEY (batch, leaf)
);
CREATE TABLE IF NOT EXISTS optimistic_claim (
    id         INTEGER PRIMARY KEY,
    batch      INTEGER NOT NULL REFERENCES optimistic_batch (id),
    agreement  TEXT    NOT NULL,                    -- decimal, or '' for the bond's release
    seq        INTEGER NOT NULL,
    nonce      INTEGER NOT NULL,
    raw        BLOB    NOT NULL,
    tx_hash    TEXT    NOT NULL,
    status     TEXT    NOT NULL,                    -- sending | mined | failed
    block      INTEGER,
    created_at REAL    NOT NULL
)
"""


@dataclass(frozen=True)
class OptimisticSettings:
    batch: int = 100  # most readings in one commitment
    interval_s: float = 60.0  # the oldest waiting reading is committed after this long, even in a partial batch
    poll_s: float = 5.0  # seconds between passes
    rebroadcast_s: float = 15.0  # an unmined transaction of ours is broadcast again after this long

    @classmethod
    def from_config(cls, config: Config) -> OptimisticSettings:
        o = config.optimistic
        if not 1 <= o.batch <= batch_tree.MAX_BATCH_READINGS or o.interval < 0 or o.poll <= 0:
            raise ConfigError(
                f"[optimistic] batch must be 1 to {batch_tree.MAX_BATCH_READINGS}, interval ≥ 0 and poll > 0"
            )
        return cls(batch=o.batch, interval_s=o.interval, poll_s=o.poll)


def address_of(config: Config, manifest: dict[str, Any], chain_id: int) -> str:
    """OptimisticBilling's address when ``[optimistic] enabled``, else ""; DeploymentError when it is not deployed."""
    if not config.optimistic.enabled:
        return ""
    entry = manifest["contracts"].get(CONTRACT)
    if entry is None:
        raise DeploymentError(f"[optimistic] enabled, but {CONTRACT} is not deployed on chain {chain_id}")
    return str(entry["address"])


@dataclass(frozen=True)
class _Leaf:
    batch: int  # optimistic_batch.id
    batch_id: int  # on chain
    index: int
    event: StoredEvent


class OptimisticRelayer:
    """Commits the ``optimistic`` readings of ``store`` to OptimisticBilling and claims them after the window."""

    def __init__(
        self,
        config: Config,
        chain: Chain,
        manifest: dict[str, Any],
        relayer: Signer,
        store: Store,
        settings: OptimisticSettings,
        *,
        recover: Callable[[], None] = lambda: None,
    ) -> None:
        self.chain = chain
        self.w3 = chain.w3
        self.relayer = relayer
        self.store = store
        self.settings = settings
        self.txstore = TxStore(store)
        self._recover = recover  # the settlement half's recovery: the shared nonce counter must be reconciled first
        self._rpc = RpcClient(chain.w3)
        opt_abi = load_artifact(config, CONTRACT)["abi"]
        registry_abi = load_artifact(config, REGISTRY)["abi"]
        self.address = manifest["contracts"][CONTRACT]["address"]
        self.opt: Contract = chain.w3.eth.contract(address=self.address, abi=opt_abi)
        self.registry: Contract = chain.w3.eth.contract(
            address=manifest["contracts"][REGISTRY]["address"], abi=registry_abi
        )
        self.errors = ErrorDecoder([opt_abi])
        self.domain = eip712.Domain(chain.chain_id, self.address)
        self.window = int(self.opt.functions.CHALLENGE_WINDOW().call())
        self.grace = int(self.opt.functions.SETTLEMENT_GRACE().call())
        self.skew = int(self.opt.functions.MAX_CLOCK_SKEW().call())
        self.bond = int(self.opt.functions.BOND().call())
        events = {item["name"]: item for item in opt_abi if item.get("type") == "event"}
        self._committed_topic = topic0(events["BatchCommitted"])
        self._voided_topic = topic0(events["BatchVoided"])
        with store.transaction() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
        self.last_error = ""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._recovered = False

    # ------------------------------------------------------------------------------------------------ the thread

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="optimistic-relayer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the pass in progress; whatever is stored is picked up by the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
                self.last_error = ""
            except (IotSettleError, Web3Exception, *RPC_ERRORS) as exc:
                # the next pass starts again from the store: nothing is skipped
                self.last_error = str(exc)
                log.warning("optimistic relayer pass failed: %s", exc)
            self._wake.wait(self.settings.poll_s)
            self._wake.clear()

    def run_once(self, *, flush: bool = False) -> None:
        """One pass: follow sent transactions, claim batches whose window ended, commit what waits. ``flush``
        commits a partial batch at once."""
        if not self._recovered:
            self._recover()
            self._recovered = True
        if not self._rows(
            "SELECT 1 WHERE EXISTS (SELECT 1 FROM optimistic_batch WHERE status IN ('sending', 'committed')) "
            "OR EXISTS (SELECT 1 FROM optimistic_claim WHERE status = 'sending') "
            "OR EXISTS (SELECT 1 FROM events WHERE status = 'optimistic')"
        ):
            return  # idle: no round trip to the node
        self._follow()
        now = int(self.w3.eth.get_block("latest")["timestamp"])
        self._judge(now)
        self._commit(now, flush)

    # ------------------------------------------------------------------------------------------- the store

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.store._read(sql, params)

    def batches(self, *statuses: str) -> list[dict[str, Any]]:
        """The stored commitments (every one without ``statuses``), oldest first: for status views and tests."""
        where = f" WHERE status IN ({', '.join('?' for _ in statuses)})" if statuses else ""
        rows = self._rows(
            "SELECT id, status, batch_id, committed_at, tx_hash, nonce, created_at, reason FROM optimistic_batch"
            + where
            + " ORDER BY id",
            statuses,
        )
        keys = ("id", "status", "batchId", "committedAt", "tx", "nonce", "createdAt", "reason")
        out = [dict(zip(keys, row, strict=True)) for row in rows]
        for batch in out:
            batch["events"] = [leaf.event.id for leaf in self._leaves(batch["id"], batch["batchId"] or 0)]
        return out

    def waiting(self) -> int:
        """Readings stored for optimistic settlement and not in a commitment that is being sent or stands."""
        rows = self._rows(
            "SELECT COUNT(*) FROM events WHERE status = 'optimistic' AND id NOT IN (SELECT l.event_id FROM "
            "optimistic_leaf l JOIN optimistic_batch b ON b.id = l.batch WHERE b.status IN ('sending', 'committed'))"
        )
        return int(rows[0][0])

    def _live_event_ids(self) -> set[int]:
        rows = self._rows(
            "SELECT l.event_id FROM optimistic_leaf l JOIN optimistic_batch b ON b.id = l.batch "
            "WHERE b.status IN ('sending', 'committed')"
        )
        return {int(r[0]) for r in rows}

    def _leaves(self, batch: int, batch_id: int) -> list[_Leaf]:
        rows = self._rows("SELECT event_id FROM optimistic_leaf WHERE batch = ? ORDER BY leaf", (batch,))
        ids = [int(r[0]) for r in rows]
        by_id = {e.id: e for e in self.store.events(ids)}
        return [_Leaf(batch, batch_id, index, by_id[event_id]) for index, event_id in enumerate(ids)]

    def _set_batch(self, batch: int, status: str, **columns: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in ("status", *columns))
        with self.store.transaction() as conn:
            conn.execute(f"UPDATE optimistic_batch SET {assignments} WHERE id = ?", (status, *columns.values(), batch))

    # ------------------------------------------------------------------------------------------- sending

    def _sign_and_store(self, call: Any, value: int, store_row: Callable[[Any, int, bytes, str], None]) -> str:
        """Estimate ``call`` (ChainError naming the revert when it would revert), then take the relayer's next nonce,
        sign and hand (connection, nonce, raw, hash) to ``store_row`` in ONE SQLite transaction; then broadcast."""
        params = {"from": self.relayer.address, "value": value}
        try:
            gas = int(call.estimate_gas(params) * 1.2) + 10_000
        except ContractLogicError as exc:
            decoded = self.errors.decode(call_revert_data(exc))
            reason = decoded.reject_reason.solidity_name if decoded.reject_reason is not None else decoded.name
            raise _Refused(reason, decoded.sentence) from None
        data = call._encode_transaction_data()
        fee = fees(self.chain)
        with self.store.transaction() as conn:
            nonce = self.txstore.take_nonce(self.chain.chain_id, self.relayer.address)
            signed = self.relayer.sign_transaction(
                {
                    "type": 2,
                    "chainId": self.chain.chain_id,
                    "nonce": nonce,
                    "to": self.address,
                    "value": value,
                    "data": data,
                    "gas": gas,
                    **fee,
                }
            )
            raw, tx_hash = bytes(signed.raw_transaction), "0x" + bytes(signed.hash).hex()
            store_row(conn, nonce, raw, tx_hash)
        self._broadcast(raw, tx_hash)
        return tx_hash

    def _broadcast(self, raw: bytes, tx_hash: str) -> None:
        try:
            self._rpc.call("eth_sendRawTransaction", ["0x" + raw.hex()])
        except (ChainError, *RPC_ERRORS) as exc:
            # already known, nonce taken, node down: the next pass looks for the receipt and decides
            log.info("broadcast of %s: %s", tx_hash, exc)

    def _receipt(self, tx_hash: str, nonce: int, raw: bytes, created_at: float) -> tuple[bool, dict[str, Any]]:
        """(done, receipt): not done while it may still be mined (broadcast again when it is old); done with an
        empty receipt when its nonce went to another transaction."""
        receipt = self._rpc.call("eth_getTransactionReceipt", [tx_hash])
        if receipt:
            return True, dict(receipt)
        if int(self.w3.eth.get_transaction_count(self.relayer.address, "latest")) > nonce:
            # mined meanwhile, or replaced: look once more before giving the nonce up
            receipt = self._rpc.call("eth_getTransactionReceipt", [tx_hash])
            return True, dict(receipt) if receipt else {}
        if time.time() - created_at >= self.settings.rebroadcast_s:
            self._broadcast(raw, tx_hash)
        return False, {}

    # ------------------------------------------------------------------------------------------- 1. follow

    def _follow(self) -> None:
        for batch, tx_hash, nonce, raw, created in self._rows(
            "SELECT id, tx_hash, nonce, raw, created_at FROM optimistic_batch WHERE status = 'sending' ORDER BY id"
        ):
            done, receipt = self._receipt(tx_hash, nonce, bytes(raw), created)
            if not done:
                continue
            if not receipt or int(receipt["status"], 16) != 1:
                log.warning(
                    "commit %s did not make it (%s): its readings wait for the next batch",
                    tx_hash,
                    "reverted" if receipt else "nonce taken",
                )
                self._set_batch(batch, "failed", reason="reverted" if receipt else "nonce taken")
                continue
            committed = [
                entry
                for entry in receipt["logs"]
                if entry["topics"]
                and entry["topics"][0] == self._committed_topic
                and entry["address"].lower() == self.address.lower()
            ]
            batch_id = int(committed[0]["topics"][1], 16)
            block = self._rpc.call("eth_getBlockByNumber", [receipt["blockNumber"], False])
            self._set_batch(batch, "committed", batch_id=batch_id, committed_at=int(block["timestamp"], 16))
            log.info(
                "committed batch %d (%s): window ends at %d",
                batch_id,
                tx_hash,
                int(block["timestamp"], 16) + self.window,
            )
        for claim, batch, agreement, seq, tx_hash, nonce, raw, created in self._rows(
            "SELECT id, batch, agreement, seq, tx_hash, nonce, raw, created_at FROM optimistic_claim "
            "WHERE status = 'sending' ORDER BY id"
        ):
            done, receipt = self._receipt(tx_hash, nonce, bytes(raw), created)
            if not done:
                continue
            ok = bool(receipt) and int(receipt["status"], 16) == 1
            block = int(receipt["blockNumber"], 16) if receipt else None
            with self.store.transaction() as conn:
                conn.execute(
                    "UPDATE optimistic_claim SET status = ?, block = ? WHERE id = ?",
                    ("mined" if ok else "failed", block, claim),
                )
                if ok and not agreement:
                    conn.execute("UPDATE optimistic_batch SET status = 'claimed' WHERE id = ?", (batch,))
            if ok and agreement and block is not None:
                self._settle(int(agreement), int(seq), block, tx_hash)
                log.info("claimed agreement %s up to seq %d: %s", agreement, seq, tx_hash)

    def _settle(self, agreement: int, seq: int, block: int, tx_hash: str) -> None:
        """Every optimistic reading of ``agreement`` up to ``seq`` is billed by the claim ``tx_hash``."""
        rows = self._rows(
            "SELECT id FROM events WHERE status = 'optimistic' AND lower(contract) = ? AND target_id = ? AND seq <= ?",
            (self.address.lower(), str(agreement), seq),
        )
        self.store.settle_optimistic([int(r[0]) for r in rows], block, tx_hash)

    # -------------------------------------------------------------------------------------------- 2. judge

    def _judge(self, now: int) -> None:
        due: list[tuple[int, int]] = []
        for batch, batch_id, committed_at in self._rows(
            "SELECT id, batch_id, committed_at FROM optimistic_batch WHERE status = 'committed' ORDER BY id"
        ):
            # a batch whose bond anyone released after the window stays claimable: only a voided one is not
            if int(self.opt.functions.batchOf(batch_id).call()[4]) == _VOIDED:
                self._voided(batch, batch_id)
            elif now > committed_at + self.window:
                due.append((batch, batch_id))
        if due:
            self._claim(due)

    def _voided(self, batch: int, batch_id: int) -> None:
        """A challenge voided the batch: the challenged leaf is dead, the other readings are committed again."""
        leaves = self._leaves(batch, batch_id)
        logs = self.w3.eth.get_logs(
            {
                "address": self.address,
                "topics": [self._voided_topic, "0x" + batch_id.to_bytes(32, "big").hex()],
                "fromBlock": 0,
            }
        )
        reason = "DataDoesNotBuildRoot"
        for entry in logs:
            data = bytes(entry["data"])
            leaf_hash, code = data[:32], int.from_bytes(data[32:64], "big")  # (bytes32 leaf, RejectReason reason)
            for leaf in leaves:
                item = batch_tree.pack_reading(leaf.event.msg, leaf.event.sig)
                if batch_tree.leaf(item, self.domain) == leaf_hash:
                    reason = RejectReason(code).solidity_name
                    self.store.dead_letter(leaf.event.id, f"{reason}: challenged in optimistic batch {batch_id}")
        self._set_batch(batch, "voided", reason=reason)
        log.warning(
            "batch %d was voided by a challenge (%s): its other readings will be committed again", batch_id, reason
        )

    def _claim(self, due: list[tuple[int, int]]) -> None:
        """Claim the newest leaf per agreement across the batches whose window ended, once; then release bonds."""
        sending = {
            (str(r[0]), int(r[1]))
            for r in self._rows("SELECT agreement, batch FROM optimistic_claim WHERE status = 'sending'")
        }
        newest: dict[int, _Leaf] = {}
        leaves_of: dict[int, list[_Leaf]] = {}
        for batch, batch_id in due:
            leaves = self._leaves(batch, batch_id)
            leaves_of[batch] = leaves
            for leaf in leaves:
                held = newest.get(leaf.event.target_id)
                if leaf.event.status == "optimistic" and (held is None or leaf.event.seq > held.event.seq):
                    newest[leaf.event.target_id] = leaf
        busy = {batch for _, batch in sending}
        for agreement, leaf in newest.items():
            if any(a == str(agreement) for a, _ in sending):
                continue
            last_seq = int(self.opt.functions.agreementOf(agreement).call()[10])
            if leaf.event.seq <= last_seq:
                self._supersede_up_to(agreement, last_seq)  # billed by a claim that is not ours
                continue
            items = [batch_tree.pack_reading(x.event.msg, x.event.sig) for x in leaves_of[leaf.batch]]
            hashes = [batch_tree.leaf(item, self.domain) for item in items]
            call = self.opt.functions.claim(leaf.batch_id, items[leaf.index], batch_tree.proof(hashes, leaf.index))

            def row(conn: Any, nonce: int, raw: bytes, tx_hash: str, leaf: _Leaf = leaf) -> None:
                conn.execute(
                    "INSERT INTO optimistic_claim (batch, agreement, seq, nonce, raw, tx_hash, status, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'sending', ?)",
                    (leaf.batch, str(leaf.event.target_id), leaf.event.seq, nonce, raw, tx_hash, time.time()),
                )

            try:
                self._sign_and_store(call, 0, row)
                busy.add(leaf.batch)
            except _Refused as refused:
                log.warning("claim of agreement %d seq %d refused: %s", agreement, leaf.event.seq, refused.sentence)
                self.store.dead_letter(leaf.event.id, f"{refused.reason}: {refused.sentence}")
        for batch, batch_id in due:
            if batch in busy:
                continue  # its claims are not mined yet
            self._release(batch, batch_id)

    def _supersede_up_to(self, agreement: int, seq: int) -> None:
        rows = self._rows(
            "SELECT id FROM events WHERE status = 'optimistic' AND lower(contract) = ? AND target_id = ? AND seq <= ?",
            (self.address.lower(), str(agreement), seq),
        )
        self.store.supersede([int(r[0]) for r in rows])

    def _release(self, batch: int, batch_id: int) -> None:
        sql = "SELECT 1 FROM optimistic_claim WHERE batch = ? AND agreement = '' AND status = 'sending'"
        if self._rows(sql, (batch,)):
            return

        def row(conn: Any, nonce: int, raw: bytes, tx_hash: str) -> None:
            conn.execute(
                "INSERT INTO optimistic_claim (batch, agreement, seq, nonce, raw, tx_hash, status, created_at) "
                "VALUES (?, '', 0, ?, ?, ?, 'sending', ?)",
                (batch, nonce, raw, tx_hash, time.time()),
            )

        try:
            self._sign_and_store(self.opt.functions.releaseBond(batch_id), 0, row)
        except _Refused as refused:
            log.info("bond of batch %d not released: %s", batch_id, refused.sentence)
            self._set_batch(batch, "claimed", reason=refused.reason)

    # ------------------------------------------------------------------------------------------- 3. commit

    def _commit(self, now: int, flush: bool) -> None:
        live = self._live_event_ids()
        waiting = [e for e in self.store.optimistic_events(len(live) + 4 * self.settings.batch) if e.id not in live]
        if not waiting:
            return
        full = len(waiting) >= self.settings.batch
        if not (flush or full or time.time() - waiting[0].received_at >= self.settings.interval_s):
            return
        chosen = self._screen(waiting, now)[: self.settings.batch]
        if not chosen:
            return
        items = [batch_tree.pack_reading(e.msg, e.sig) for e in chosen]
        root = batch_tree.root([batch_tree.leaf(item, self.domain) for item in items])
        call = self.opt.functions.commit(root, batch_tree.pack_batch(items))

        def row(conn: Any, nonce: int, raw: bytes, tx_hash: str) -> None:
            cursor = conn.execute(
                "INSERT INTO optimistic_batch (chain_id, contract, root, nonce, raw, tx_hash, status, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'sending', ?)",
                (self.chain.chain_id, self.address, root, nonce, raw, tx_hash, time.time()),
            )
            conn.executemany(
                "INSERT INTO optimistic_leaf (batch, leaf, event_id) VALUES (?, ?, ?)",
                [(cursor.lastrowid, index, e.id) for index, e in enumerate(chosen)],
            )

        try:
            tx_hash = self._sign_and_store(call, self.bond, row)
        except _Refused as refused:
            raise ChainError(f"committing {len(chosen)} readings would revert: {refused.sentence}") from None
        log.info("committing %d readings in %s", len(chosen), tx_hash)

    def _screen(self, events: list[StoredEvent], now: int) -> list[StoredEvent]:
        """The readings a challenge could not void as of ``now``; the others are superseded (behind the claimed
        state: billed already), dead-lettered with the rule they break, or left for a later batch (stamped beyond
        the contract's clock skew of the chain's time: the chain's clock may run behind the oracle's)."""
        agreements: dict[int, Any] = {}
        keys: dict[str, Any] = {}
        good: list[StoredEvent] = []
        for event in events:
            if event.timestamp > now + self.skew:
                continue
            if event.target_id not in agreements:
                agreements[event.target_id] = self.opt.functions.agreementOf(event.target_id).call()
            a = agreements[event.target_id]
            if a[0] == _ZERO:
                self.store.dead_letter(event.id, "UnknownTarget: no such agreement on OptimisticBilling")
                continue
            last_value, last_seq, last_timestamp = a[9], a[10], a[11]
            if event.seq <= last_seq:
                self.store.supersede([event.id])
                continue
            fault = (
                "CounterRollback"
                if (event.value or 0) < last_value
                else "TimestampTooOld"
                if event.timestamp < last_timestamp
                else None
            )
            if fault is None:
                if event.signer not in keys:
                    keys[event.signer] = self.registry.functions.keyInfo(event.signer).call()
                _device, _kind, status, retired_at = keys[event.signer]
                if status != _KEY_ACTIVE and (event.timestamp > retired_at or now > retired_at + self.grace):
                    fault = "KeyRotated" if status == 2 else "DeviceRevoked"
            if fault is not None:
                self.store.dead_letter(event.id, f"{fault}: not committed (a challenge would void the batch)")
                continue
            good.append(event)
        return good


class _Refused(Exception):
    """The contract would revert the call: ``reason`` its name (a reject reason by name), ``sentence`` the text."""

    def __init__(self, reason: str, sentence: str) -> None:
        super().__init__(sentence)
        self.reason = reason
        self.sentence = sentence
