"""The daemon as an optimistic relayer (docs/OPTIMISTIC.md): readings of agreements opened on OptimisticBilling, and
telematics reports of policies opened on OptimisticMotor, are committed in bonded batches, and after each challenge
window the newest event per agreement or policy is claimed. One relayer per optimistic contract (``kind`` "reading"
or "telematics"); the text below says readings and agreements for both.

Intake stores a reading signed for OptimisticBilling as ``optimistic`` (``Store.commit_batch``), acknowledged and
answered like any other: the planner never takes it. One thread then makes passes, each:

1. **follows** the transactions it sent: a commit mined becomes a ``committed`` batch (its on-chain id and time
   from ``BatchCommitted`` and the block); a commit that reverted or whose nonce went to another transaction frees
   its readings; a claim mined settles every optimistic reading of its agreement up to its seq (``settled``), and
   once ``[chain] confirmations`` blocks sit on its block they are ``final`` (a claim whose block left the chain is
   sent again and its readings wait for it); a transaction the node took but did not mine for
   ``[oracle] rebroadcast_after`` seconds is re-signed at its nonce with higher fees (``_replace``);
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
collisions. A replacement is stored (``optimistic_attempt``, the row's ``raw`` and ``tx_hash`` the newest) before it
is broadcast, and receipts are looked up for every attempt, so whichever version was mined is found. A daemon killed
after a commit finds it at restart (re-broadcast if it was not mined, never signed twice at a new nonce) and claims
it after the window; one killed after a claim was sent settles it from its receipt.

Fees: the settlement submitter's policy (``Submitter.fees`` and ``Submitter.bumped``: ``2 × base fee + tip`` under
``[oracle] max_fee_gwei``, each replacement +12.5 %), so both halves price and replace their transactions alike.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from eth_account.typed_transactions import TypedTransaction
from eth_typing import HexStr
from hexbytes import HexBytes
from iotsettle.oracle.chain.artifacts import load_artifact
from iotsettle.oracle.chain.connection import Chain
from iotsettle.oracle.chain.logs import topic0
from iotsettle.oracle.chain.revert import ErrorDecoder, RejectReason
from iotsettle.oracle.chain.rpc import RpcClient
from iotsettle.oracle.chain.send import call_revert_data
from iotsettle.oracle.chain.signer import Signer
from iotsettle.oracle.config import Config
from iotsettle.oracle.daemon.store import Store, StoredEvent
from iotsettle.oracle.daemon.submitter import RPC_ERRORS, Fees, Priced, SendError, classify_send_error
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
    status     TEXT    NOT NULL,                    -- sending | mined | final | failed
    block      INTEGER,
    created_at REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS optimistic_attempt (
    tx_hash TEXT    PRIMARY KEY,                    -- every signed version of a commit, claim or bond release
    batch   INTEGER REFERENCES optimistic_batch (id),  -- of a commit, else NULL
    claim   INTEGER REFERENCES optimistic_claim (id),  -- of a claim or a bond release, else NULL
    sent_at REAL                                    -- first taken by the node (NULL: not yet, 0: replace it now)
);
CREATE INDEX IF NOT EXISTS optimistic_attempt_batch ON optimistic_attempt (batch);
CREATE INDEX IF NOT EXISTS optimistic_attempt_claim ON optimistic_attempt (claim);
-- rows stored before attempts were kept: their one version, as taken by the node when it was signed
INSERT OR IGNORE INTO optimistic_attempt (tx_hash, batch, sent_at)
    SELECT tx_hash, id, created_at FROM optimistic_batch WHERE status = 'sending';
INSERT OR IGNORE INTO optimistic_attempt (tx_hash, claim, sent_at)
    SELECT tx_hash, id, created_at FROM optimistic_claim WHERE status = 'sending'
"""
#: the readings in a commitment of one contract (the parameter: its address in lower case) being sent or standing,
#: or in a batch with a claim not mined yet (a claim whose block left the chain is sent again: its readings wait for
#: it, even when the batch's bond was released meanwhile)
_LIVE_LEAVES = (
    "SELECT l.event_id FROM optimistic_leaf l JOIN optimistic_batch b ON b.id = l.batch "
    "WHERE lower(b.contract) = ? AND (b.status IN ('sending', 'committed') OR b.id IN "
    "(SELECT batch FROM optimistic_claim WHERE status IN ('sending', 'mined') AND agreement != ''))"
)
#: the tables whose rows are transactions, by the ``optimistic_attempt`` column that points at them
_TABLES = {"batch": "optimistic_batch", "claim": "optimistic_claim"}


@dataclass(frozen=True)
class OptimisticSettings:
    batch: int = 100  # most readings in one commitment
    interval_s: float = 60.0  # the oldest waiting reading is committed after this long, even in a partial batch
    poll_s: float = 5.0  # seconds between passes
    rebroadcast_s: float = 15.0  # an unmined transaction of ours is re-signed with higher fees after this long
    confirmations: int = 1  # blocks on top of a claim's block before its readings are final

    @classmethod
    def from_config(cls, config: Config) -> OptimisticSettings:
        """``[optimistic]``, with the settlement half's ``[oracle] rebroadcast_after`` and ``[chain] confirmations``."""
        o = config.optimistic
        if not 1 <= o.batch <= batch_tree.MAX_BATCH_READINGS or o.interval < 0 or o.poll <= 0:
            raise ConfigError(
                f"[optimistic] batch must be 1 to {batch_tree.MAX_BATCH_READINGS}, interval ≥ 0 and poll > 0"
            )
        return cls(
            batch=o.batch,
            interval_s=o.interval,
            poll_s=o.poll,
            rebroadcast_s=config.oracle.rebroadcast_after,
            confirmations=config.chain.confirmations,
        )


class FeePolicy(Protocol):
    """How transactions are priced and replaced: the settlement submitter's (``Submitter``)."""

    def fees(self) -> Fees: ...

    def bumped(self, tx: Priced) -> Fees | None: ...


def addresses_of(config: Config, manifest: dict[str, Any], chain_id: int) -> dict[str, str]:
    """When ``[optimistic] enabled``: each deployed optimistic contract's address (lower case) → the event type
    signed for it; empty otherwise. DeploymentError when OptimisticBilling is not deployed (a deployment from before
    OptimisticMotor relays readings only)."""
    if not config.optimistic.enabled:
        return {}
    if CONTRACT not in manifest["contracts"]:
        raise DeploymentError(f"[optimistic] enabled, but {CONTRACT} is not deployed on chain {chain_id}")
    return {
        str(manifest["contracts"][name]["address"]).lower(): kind
        for kind, name in batch_tree.CONTRACTS.items()
        if name in manifest["contracts"]
    }


@dataclass(frozen=True)
class _Leaf:
    batch: int  # optimistic_batch.id
    batch_id: int  # on chain
    index: int
    event: StoredEvent


class OptimisticRelayer:
    """Commits the ``optimistic`` events of ``kind`` in ``store`` to their optimistic contract
    (``batch_tree.CONTRACTS``) and claims them after the window."""

    def __init__(
        self,
        config: Config,
        chain: Chain,
        manifest: dict[str, Any],
        relayer: Signer,
        store: Store,
        settings: OptimisticSettings,
        *,
        fees: FeePolicy,
        recover: Callable[[], None] = lambda: None,
        kind: str = "reading",
    ) -> None:
        self.kind = kind
        self.name = batch_tree.CONTRACTS[kind]
        self.chain = chain
        self.fees = fees
        self.w3 = chain.w3
        self.relayer = relayer
        self.store = store
        self.settings = settings
        self.txstore = TxStore(store)
        self._recover = recover  # the settlement half's recovery: the shared nonce counter must be reconciled first
        self._rpc = RpcClient(chain.w3)
        opt_abi = load_artifact(config, self.name)["abi"]
        registry_abi = load_artifact(config, REGISTRY)["abi"]
        self.address = manifest["contracts"][self.name]["address"]
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
        self._thread = threading.Thread(target=self._loop, name=f"optimistic-{self.kind}", daemon=True)
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
                log.warning("optimistic relayer (%s) pass failed: %s", self.name, exc)
            self._wake.wait(self.settings.poll_s)
            self._wake.clear()

    def run_once(self, *, flush: bool = False) -> None:
        """One pass: follow sent transactions, claim batches whose window ended, commit what waits. ``flush``
        commits a partial batch at once."""
        if not self._recovered:
            self._recover()
            self._recovered = True
        mine = self.address.lower()
        if not self._rows(
            "SELECT 1 WHERE EXISTS (SELECT 1 FROM optimistic_batch WHERE status IN ('sending', 'committed') "
            "AND lower(contract) = ?) "
            "OR EXISTS (SELECT 1 FROM optimistic_claim c JOIN optimistic_batch b ON b.id = c.batch "
            "WHERE c.status IN ('sending', 'mined') AND lower(b.contract) = ?) "
            "OR EXISTS (SELECT 1 FROM events WHERE status = 'optimistic' AND lower(contract) = ?)",
            (mine, mine, mine),
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
        where = f" AND status IN ({', '.join('?' for _ in statuses)})" if statuses else ""
        rows = self._rows(
            "SELECT id, status, batch_id, committed_at, tx_hash, nonce, created_at, reason FROM optimistic_batch"
            " WHERE lower(contract) = ?" + where + " ORDER BY id",
            (self.address.lower(), *statuses),
        )
        keys = ("id", "status", "batchId", "committedAt", "tx", "nonce", "createdAt", "reason")
        out = [dict(zip(keys, row, strict=True)) for row in rows]
        for batch in out:
            batch["events"] = [leaf.event.id for leaf in self._leaves(batch["id"], batch["batchId"] or 0)]
        return out

    def waiting(self) -> int:
        """Events stored for this contract's optimistic settlement and not in a commitment being sent or standing."""
        mine = self.address.lower()
        rows = self._rows(
            f"SELECT COUNT(*) FROM events WHERE status = 'optimistic' AND lower(contract) = ? "
            f"AND id NOT IN ({_LIVE_LEAVES})",
            (mine, mine),
        )
        return int(rows[0][0])

    def _live_event_ids(self) -> set[int]:
        return {int(r[0]) for r in self._rows(_LIVE_LEAVES, (self.address.lower(),))}

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

    def _sign_and_store(
        self, call: Any, value: int, store_row: Callable[[Any, int, bytes, str], tuple[str, int]]
    ) -> str:
        """Estimate ``call`` (ChainError naming the revert when it would revert), then take the relayer's next nonce,
        sign and hand (connection, nonce, raw, hash) to ``store_row`` in ONE SQLite transaction, with the attempt;
        then broadcast. ``store_row`` returns the attempt's owner: ("batch" | "claim", its row id)."""
        params = {"from": self.relayer.address, "value": value}
        try:
            gas = int(call.estimate_gas(params) * 1.2) + 10_000
        except ContractLogicError as exc:
            decoded = self.errors.decode(call_revert_data(exc))
            reason = decoded.reject_reason.solidity_name if decoded.reject_reason is not None else decoded.name
            raise _Refused(reason, decoded.sentence) from None
        data = call._encode_transaction_data()
        fee = self.fees.fees()
        with self.store.transaction() as conn:
            nonce = self.txstore.take_nonce(self.chain.chain_id, self.relayer.address)
            raw, tx_hash = self._sign(nonce, value, data, gas, fee)
            column, row = store_row(conn, nonce, raw, tx_hash)
            conn.execute(f"INSERT INTO optimistic_attempt (tx_hash, {column}) VALUES (?, ?)", (tx_hash, row))
        self._broadcast(raw, tx_hash)
        return tx_hash

    def _sign(self, nonce: int, value: int, data: str, gas: int, fee: Fees) -> tuple[bytes, str]:
        signed = self.relayer.sign_transaction(
            {
                "type": 2,
                "chainId": self.chain.chain_id,
                "nonce": nonce,
                "to": self.address,
                "value": value,
                "data": HexStr(data),
                "gas": gas,
                "maxFeePerGas": fee.max_fee,
                "maxPriorityFeePerGas": fee.tip,
            }
        )
        return bytes(signed.raw_transaction), "0x" + bytes(signed.hash).hex()

    def _broadcast(self, raw: bytes, tx_hash: str) -> None:
        """Send a stored attempt; its ``sent_at`` records whether the node took it (the replacement timer runs from
        then) or refused its fees (replaced at the next pass)."""
        try:
            self._rpc.call("eth_sendRawTransaction", ["0x" + raw.hex()])
        except (ChainError, *RPC_ERRORS) as exc:
            error = classify_send_error(exc)
            if error in (SendError.UNDERPRICED, SendError.FEE_TOO_LOW):
                # another version holds the nonce in the pool, or the base fee rose past ours: outbid it now
                log.info("broadcast of %s: %s; re-signing it with higher fees", tx_hash, exc)
                self._set_sent(tx_hash, 0.0)
            elif error is SendError.ALREADY_KNOWN:
                self._set_sent(tx_hash, time.time(), only_first=True)
            else:
                # nonce taken (mined meanwhile?), node down: the next pass looks for the receipts and decides
                log.info("broadcast of %s: %s", tx_hash, exc)
            return
        self._set_sent(tx_hash, time.time(), only_first=True)

    def _set_sent(self, tx_hash: str, at: float | None, *, only_first: bool = False) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE optimistic_attempt SET sent_at = ? WHERE tx_hash = ?" + (" AND sent_at IS NULL" * only_first),
                (at, tx_hash),
            )

    def _receipt(self, column: str, row: int, nonce: int, raw: bytes, tx_hash: str) -> tuple[bool, dict[str, Any]]:
        """(done, receipt) of the transaction stored in row ``row`` of ``column``'s table, whichever of its signed
        versions was mined: not done while it may still be mined (sent again, or replaced with higher fees once it
        has waited ``rebroadcast_s``); done with an empty receipt when its nonce went to a transaction not ours."""
        attempts = self._rows(
            f"SELECT tx_hash, sent_at FROM optimistic_attempt WHERE {column} = ? ORDER BY rowid", (row,)
        )
        hashes = [str(h) for h, _ in attempts] or [tx_hash]
        for attempt in hashes:
            receipt = self._rpc.call("eth_getTransactionReceipt", [attempt])
            if receipt:
                return True, dict(receipt)
        if int(self.w3.eth.get_transaction_count(self.relayer.address, "latest")) > nonce:
            # mined meanwhile, or taken: look once more before giving the nonce up
            for attempt in hashes:
                receipt = self._rpc.call("eth_getTransactionReceipt", [attempt])
                if receipt:
                    return True, dict(receipt)
            return True, {}
        sent_at = next((at for h, at in attempts if h == tx_hash), 0.0)
        if sent_at is None:
            self._broadcast(raw, tx_hash)  # stored, never taken by the node (a crash, the node down): as signed
        elif time.time() - float(sent_at) >= self.settings.rebroadcast_s:
            self._replace(column, row, raw, tx_hash)
        return False, {}

    def _replace(self, column: str, row: int, raw: bytes, tx_hash: str) -> None:
        """Re-sign the newest version at its nonce with the submitter's bumped fees, store it as the row's newest
        (before it is broadcast), then broadcast it; at the fee cap the newest is broadcast again as signed."""
        tx = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
        fee = self.fees.bumped(Fees(int(tx["maxFeePerGas"]), int(tx["maxPriorityFeePerGas"])))
        if fee is None:
            log.warning("%s %s at nonce %d: the fee cap leaves no room to raise its fees", column, tx_hash, tx["nonce"])
            self._set_sent(tx_hash, time.time())
            self._broadcast(raw, tx_hash)
            return
        new_raw, new_hash = self._sign(
            int(tx["nonce"]), int(tx["value"]), "0x" + bytes(tx["data"]).hex(), int(tx["gas"]), fee
        )
        with self.store.transaction() as conn:
            conn.execute(f"INSERT INTO optimistic_attempt (tx_hash, {column}) VALUES (?, ?)", (new_hash, row))
            conn.execute(f"UPDATE {_TABLES[column]} SET raw = ?, tx_hash = ? WHERE id = ?", (new_raw, new_hash, row))
        log.info(
            "%s at nonce %d not mined: re-signed with maxFee %.3f gwei (was %.3f): %s",
            column,
            tx["nonce"],
            fee.max_fee / 1e9,
            int(tx["maxFeePerGas"]) / 1e9,
            new_hash,
        )
        self._broadcast(new_raw, new_hash)

    # ------------------------------------------------------------------------------------------- 1. follow

    def _follow(self) -> None:
        for batch, tx_hash, nonce, raw in self._rows(
            "SELECT id, tx_hash, nonce, raw FROM optimistic_batch WHERE status = 'sending' AND lower(contract) = ? "
            "ORDER BY id",
            (self.address.lower(),),
        ):
            done, receipt = self._receipt("batch", batch, nonce, bytes(raw), tx_hash)
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
            mined = str(receipt["transactionHash"])
            committed_at = int(block["timestamp"], 16)
            self._set_batch(batch, "committed", batch_id=batch_id, committed_at=committed_at, tx_hash=mined)
            log.info("committed batch %d (%s): window ends at %d", batch_id, mined, committed_at + self.window)
        for claim, batch, agreement, seq, tx_hash, nonce, raw in self._rows(
            "SELECT c.id, c.batch, c.agreement, c.seq, c.tx_hash, c.nonce, c.raw FROM optimistic_claim c "
            "JOIN optimistic_batch b ON b.id = c.batch WHERE c.status = 'sending' AND lower(b.contract) = ? "
            "ORDER BY c.id",
            (self.address.lower(),),
        ):
            done, receipt = self._receipt("claim", claim, nonce, bytes(raw), tx_hash)
            if not done:
                continue
            ok = bool(receipt) and int(receipt["status"], 16) == 1
            block = int(receipt["blockNumber"], 16) if receipt else None
            mined = str(receipt["transactionHash"]) if receipt else tx_hash
            with self.store.transaction() as conn:
                conn.execute(
                    "UPDATE optimistic_claim SET status = ?, block = ?, tx_hash = ? WHERE id = ?",
                    ("mined" if ok else "failed", block, mined, claim),
                )
                if ok and not agreement:
                    conn.execute("UPDATE optimistic_batch SET status = 'claimed' WHERE id = ?", (batch,))
                if ok and agreement and block is not None:
                    # in the claim's own write: the readings it billed are found by its hash when it is final
                    self._settle(int(agreement), int(seq), block, mined)
            if ok and agreement:
                log.info("claimed %s %s up to seq %d: %s", self.name, agreement, seq, mined)
        self._confirm()

    def _settle(self, agreement: int, seq: int, block: int, tx_hash: str) -> None:
        """Every optimistic reading of ``agreement`` up to ``seq`` is billed by the claim ``tx_hash`` (settled; final
        once the claim has its confirmations)."""
        rows = self._rows(
            "SELECT id FROM events WHERE status = 'optimistic' AND lower(contract) = ? AND target_id = ? AND seq <= ?",
            (self.address.lower(), str(agreement), seq),
        )
        self.store.settle_optimistic([int(r[0]) for r in rows], block, tx_hash)

    def _billed_by(self, tx_hash: str) -> list[int]:
        rows = self._rows(
            "SELECT id FROM events WHERE status = 'settled' AND kind = ? AND tx_hash = ? AND lower(contract) = ?",
            (self.kind, tx_hash, self.address.lower()),
        )
        return [int(r[0]) for r in rows]

    def _confirm(self) -> None:
        """Claims and bond releases mined: final once ``confirmations`` blocks sit on their block (a claim's readings
        with it); one whose block left the canonical chain is sent again, its readings waiting for it."""
        mined = self._rows(
            "SELECT c.id, c.batch, c.agreement, c.tx_hash, c.block FROM optimistic_claim c "
            "JOIN optimistic_batch b ON b.id = c.batch WHERE c.status = 'mined' AND lower(b.contract) = ? "
            "ORDER BY c.id",
            (self.address.lower(),),
        )
        if not mined:
            return
        head = int(self._rpc.call("eth_blockNumber", []), 16)
        for claim, batch, agreement, tx_hash, block in mined:
            receipt = self._rpc.call("eth_getTransactionReceipt", [tx_hash])
            if not receipt:
                billed = self._billed_by(tx_hash) if agreement else []
                with self.store.transaction() as conn:
                    # the same signed version, sent again at once (the nonce is ours again)
                    conn.execute("UPDATE optimistic_claim SET status = 'sending', block = NULL WHERE id = ?", (claim,))
                    conn.execute("UPDATE optimistic_attempt SET sent_at = NULL WHERE tx_hash = ?", (tx_hash,))
                    if not agreement:
                        conn.execute("UPDATE optimistic_batch SET status = 'committed' WHERE id = ?", (batch,))
                    self.store.unsettle_optimistic(billed)
                what = "claim" if agreement else "bond release"
                log.warning("reorg: the %s %s left the canonical chain; sending it again", what, tx_hash)
                continue
            now_in = int(receipt["blockNumber"], 16)
            if head - now_in < self.settings.confirmations:
                if now_in != block:
                    with self.store.transaction() as conn:
                        conn.execute("UPDATE optimistic_claim SET block = ? WHERE id = ?", (now_in, claim))
                continue
            ids = self._billed_by(tx_hash) if agreement else []
            with self.store.transaction() as conn:
                conn.execute("UPDATE optimistic_claim SET status = 'final', block = ? WHERE id = ?", (now_in, claim))
                self.store.mark_final(ids)

    # -------------------------------------------------------------------------------------------- 2. judge

    def _judge(self, now: int) -> None:
        due: list[tuple[int, int]] = []
        for batch, batch_id, committed_at in self._rows(
            "SELECT id, batch_id, committed_at FROM optimistic_batch WHERE status = 'committed' "
            "AND lower(contract) = ? ORDER BY id",
            (self.address.lower(),),
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
                if batch_tree.leaf(self._item(leaf.event), self.domain, self.kind) == leaf_hash:
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
            for r in self._rows(
                "SELECT c.agreement, c.batch FROM optimistic_claim c JOIN optimistic_batch b ON b.id = c.batch "
                "WHERE c.status = 'sending' AND lower(b.contract) = ?",
                (self.address.lower(),),
            )
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
            state = self._state(agreement)
            last_seq = state.seq if state is not None else 0
            if leaf.event.seq <= last_seq:
                self._supersede_up_to(agreement, last_seq)  # billed by a claim that is not ours
                continue
            items = [self._item(x.event) for x in leaves_of[leaf.batch]]
            hashes = [batch_tree.leaf(item, self.domain, self.kind) for item in items]
            # a report is claimed with its policy's terms (the leaf does not cover them; the seal checks them)
            claimed = self._item(leaf.event, with_terms=True)
            call = self.opt.functions.claim(leaf.batch_id, claimed, batch_tree.proof(hashes, leaf.index))

            def row(conn: Any, nonce: int, raw: bytes, tx_hash: str, leaf: _Leaf = leaf) -> tuple[str, int]:
                cursor = conn.execute(
                    "INSERT INTO optimistic_claim (batch, agreement, seq, nonce, raw, tx_hash, status, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'sending', ?)",
                    (leaf.batch, str(leaf.event.target_id), leaf.event.seq, nonce, raw, tx_hash, time.time()),
                )
                return "claim", int(cursor.lastrowid)

            try:
                self._sign_and_store(call, 0, row)
                busy.add(leaf.batch)
            except _Refused as refused:
                log.warning("claim of %s %d seq %d refused: %s", self.name, agreement, leaf.event.seq, refused.sentence)
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
        sql = "SELECT 1 FROM optimistic_claim WHERE batch = ? AND agreement = '' AND status IN ('sending', 'mined')"
        if self._rows(sql, (batch,)):
            return

        def row(conn: Any, nonce: int, raw: bytes, tx_hash: str) -> tuple[str, int]:
            cursor = conn.execute(
                "INSERT INTO optimistic_claim (batch, agreement, seq, nonce, raw, tx_hash, status, created_at) "
                "VALUES (?, '', 0, ?, ?, ?, 'sending', ?)",
                (batch, nonce, raw, tx_hash, time.time()),
            )
            return "claim", int(cursor.lastrowid)

        try:
            self._sign_and_store(self.opt.functions.releaseBond(batch_id), 0, row)
        except _Refused as refused:
            log.info("bond of batch %d not released: %s", batch_id, refused.sentence)
            self._set_batch(batch, "claimed", reason=refused.reason)

    # ------------------------------------------------------------------------------------------- 3. commit

    def _commit(self, now: int, flush: bool) -> None:
        live = self._live_event_ids()
        waiting = [
            e
            for e in self.store.optimistic_events(len(live) + 4 * self.settings.batch, self.address)
            if e.id not in live
        ]
        if not waiting:
            return
        full = len(waiting) >= self.settings.batch
        if not (flush or full or time.time() - waiting[0].received_at >= self.settings.interval_s):
            return
        chosen = self._screen(waiting, now)[: self.settings.batch]
        if not chosen:
            return
        items = [self._item(e) for e in chosen]
        root = batch_tree.root([batch_tree.leaf(item, self.domain, self.kind) for item in items])
        call = self.opt.functions.commit(root, batch_tree.pack_batch(items, self.kind))

        def row(conn: Any, nonce: int, raw: bytes, tx_hash: str) -> tuple[str, int]:
            cursor = conn.execute(
                "INSERT INTO optimistic_batch (chain_id, contract, root, nonce, raw, tx_hash, status, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'sending', ?)",
                (self.chain.chain_id, self.address, root, nonce, raw, tx_hash, time.time()),
            )
            conn.executemany(
                "INSERT INTO optimistic_leaf (batch, leaf, event_id) VALUES (?, ?, ?)",
                [(cursor.lastrowid, index, e.id) for index, e in enumerate(chosen)],
            )
            return "batch", int(cursor.lastrowid)

        try:
            tx_hash = self._sign_and_store(call, self.bond, row)
        except _Refused as refused:
            raise ChainError(
                f"committing {len(chosen)} events to {self.name} would revert: {refused.sentence}"
            ) from None
        log.info("committing %d events to %s in %s", len(chosen), self.name, tx_hash)

    def _screen(self, events: list[StoredEvent], now: int) -> list[StoredEvent]:
        """The events a challenge could not void as of ``now``; the others are superseded (behind the claimed
        state: billed already), dead-lettered with the rule they break, or left for a later batch (stamped beyond
        the contract's clock skew of the chain's time: the chain's clock may run behind the oracle's)."""
        states: dict[int, _State | None] = {}
        keys: dict[str, Any] = {}
        good: list[StoredEvent] = []
        for event in events:
            if event.timestamp > now + self.skew:
                continue
            if event.target_id not in states:
                states[event.target_id] = self._state(event.target_id)
            state = states[event.target_id]
            if state is None:
                self.store.dead_letter(event.id, f"UnknownTarget: no such agreement or policy on {self.name}")
                continue
            if event.seq <= state.seq:
                self.store.supersede([event.id])
                continue
            fault = (
                "CounterRollback"
                if any(int(event.msg[name]) < last for name, last in state.registers.items())
                else "TimestampTooOld"
                if event.timestamp < state.timestamp
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

    # ------------------------------------------------------------------------------------------- the kinds

    def _state(self, target: int) -> _State | None:
        """The claimed state of an agreement (readings) or a policy (telematics); None when the contract has none."""
        if self.kind == "reading":
            a = self.opt.functions.agreementOf(target).call()
            if a[0] == _ZERO:
                return None
            return _State(int(a[10]), int(a[11]), {"value": int(a[9])})
        p = self.opt.functions.policyOf(target).call()
        if p[2] == _ZERO:  # an unknown policy id reports no vehicle
            return None
        return _State(
            int(p[15]), int(p[16]), {"odometer": int(p[12]), "harshBraking": int(p[13]), "speeding": int(p[14])}
        )

    def _item(self, event: StoredEvent, *, with_terms: bool = False) -> bytes:
        """The event packed as a claim or a challenge carries it; a report with its policy's current terms when
        ``with_terms`` (a claim reads the stored terms when they do not match, at a higher gas cost)."""
        terms = None
        if with_terms and self.kind == "telematics":
            terms = bytes(self.opt.functions.telematicsTerms(event.target_id).call())
        return batch_tree.pack_signed(self.kind, event.msg, event.sig, terms)


@dataclass(frozen=True)
class _State:
    """What a challenge judges an event against: the claimed seq, timestamp and cumulative registers."""

    seq: int
    timestamp: int
    registers: dict[str, int]


class _Refused(Exception):
    """The contract would revert the call: ``reason`` its name (a reject reason by name), ``sentence`` the text."""

    def __init__(self, reason: str, sentence: str) -> None:
        super().__init__(sentence)
        self.reason = reason
        self.sentence = sentence
