"""The settlement half's own tables in the oracle database: transactions, their broadcast attempts, nonces.

Write-ahead rule: a transaction is signed and stored (with its nonce and the events it carries, in ONE SQLite
transaction together with ``Store.attach_tx``) before it is broadcast. After a crash anywhere the database knows
every nonce handed out and the exact signed bytes, so a restart re-broadcasts instead of guessing, and no nonce
is ever left as a gap.

Every transaction and every nonce counter is keyed by its relayer account (``sender``): each account is a nonce lane
of its own (``[oracle] relayer_keys``), so several lanes share these tables without a schema change.

Transaction life cycle (``TxStatus``)::

    signed ─broadcast→ sent ─receipt→ mined ─N confirmations→ final
      │                 │  ↑___ reorg (receipt gone / other block) ___|
      │                 └─ receipt with status 0 → failed
      └──── nonce taken by a transaction we never signed → lost (its events go back to pending)
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from iotsettle.oracle.daemon.store import Store
from iotsettle.oracle.protocol.errors import StoreError

log = logging.getLogger(__name__)


class TxStatus(StrEnum):
    SIGNED = "signed"  # stored, not yet accepted by the node (crash or node error before/while broadcasting)
    SENT = "sent"  # accepted by the node at least once, no receipt yet
    MINED = "mined"  # receipt seen in ``block`` / ``block_hash``; not yet deep enough
    FINAL = "final"  # ``[chain] confirmations`` blocks on top; never touched again
    FAILED = "failed"  # mined but reverted as a whole; its events were re-planned
    LOST = "lost"  # its nonce was used by a transaction this oracle did not sign


OPEN_STATUSES = (TxStatus.SIGNED, TxStatus.SENT)
LIVE_STATUSES = (TxStatus.SIGNED, TxStatus.SENT, TxStatus.MINED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settlement_tx (
    tx_key     TEXT    PRIMARY KEY,                 -- this oracle's id of the transaction (events.tx_key)
    chain_id   INTEGER NOT NULL,
    sender     TEXT    NOT NULL,
    nonce      INTEGER NOT NULL,
    kind       TEXT    NOT NULL,                    -- 'reading' | 'delivery'
    contract   TEXT    NOT NULL,
    data       BLOB    NOT NULL,                    -- calldata
    gas        INTEGER NOT NULL,
    max_fee    INTEGER NOT NULL,                    -- of the newest attempt (wei)
    tip        INTEGER NOT NULL,
    raw        BLOB    NOT NULL,                    -- newest signed attempt
    tx_hash    TEXT    NOT NULL,                    -- newest attempt
    status     TEXT    NOT NULL,
    created_at REAL    NOT NULL,
    sent_at    REAL,                                -- newest (re)broadcast
    attempts   INTEGER NOT NULL DEFAULT 1,
    block      INTEGER,
    block_hash TEXT,
    mined_hash TEXT,                                -- the attempt that was mined
    gas_used   INTEGER,
    mined_at   REAL,
    reason     TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS settlement_tx_nonce ON settlement_tx (chain_id, sender, nonce)
    WHERE status != 'lost';
CREATE INDEX IF NOT EXISTS settlement_tx_status ON settlement_tx (status, nonce);

CREATE TABLE IF NOT EXISTS settlement_attempt (
    tx_hash TEXT    PRIMARY KEY,
    tx_key  TEXT    NOT NULL REFERENCES settlement_tx (tx_key),
    max_fee INTEGER NOT NULL,
    tip     INTEGER NOT NULL,
    signed_at REAL  NOT NULL
);
CREATE INDEX IF NOT EXISTS settlement_attempt_by_tx ON settlement_attempt (tx_key);

CREATE TABLE IF NOT EXISTS settlement_nonce (
    chain_id   INTEGER NOT NULL,
    sender     TEXT    NOT NULL,
    next_nonce INTEGER NOT NULL,
    PRIMARY KEY (chain_id, sender)
)
"""


@dataclass(frozen=True, slots=True)
class TxRecord:
    tx_key: str
    chain_id: int
    sender: str
    nonce: int
    kind: str
    contract: str
    data: bytes
    gas: int
    max_fee: int
    tip: int
    raw: bytes
    tx_hash: str
    status: TxStatus
    created_at: float
    sent_at: float | None
    attempts: int
    block: int | None
    block_hash: str | None
    mined_hash: str | None
    gas_used: int | None
    mined_at: float | None
    reason: str | None


_COLUMNS = (
    "tx_key, chain_id, sender, nonce, kind, contract, data, gas, max_fee, tip, raw, tx_hash, status, created_at, "
    "sent_at, attempts, block, block_hash, mined_hash, gas_used, mined_at, reason"
)


def _record(row: Sequence[Any]) -> TxRecord:
    values = list(row)
    values[6] = bytes(values[6])
    values[10] = bytes(values[10])
    values[12] = TxStatus(values[12])
    return TxRecord(*values)


def new_tx_key(chain_id: int, nonce: int) -> str:
    return f"{chain_id}-{nonce}-{uuid.uuid4().hex[:8]}"


class TxStore:
    """Typed access to the settlement tables; shares the ``Store``'s connection, lock and transactions."""

    def __init__(self, store: Store) -> None:
        self.store = store
        with store.transaction() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.store._read(sql, params)

    # ---------------------------------------------------------------------------------------------- nonces

    def next_nonce(self, chain_id: int, sender: str) -> int | None:
        rows = self._read(
            "SELECT next_nonce FROM settlement_nonce WHERE chain_id = ? AND sender = ?", (chain_id, sender)
        )
        return int(rows[0][0]) if rows else None

    def set_next_nonce(self, chain_id: int, sender: str, value: int) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO settlement_nonce (chain_id, sender, next_nonce) VALUES (?, ?, ?) "
                "ON CONFLICT (chain_id, sender) DO UPDATE SET next_nonce = excluded.next_nonce",
                (chain_id, sender, value),
            )

    def take_nonce(self, chain_id: int, sender: str) -> int:
        """Hand out the next nonce; call inside ``store.transaction()`` together with ``insert`` (write-ahead)."""
        with self.store.transaction() as conn:
            rows = conn.execute(
                "SELECT next_nonce FROM settlement_nonce WHERE chain_id = ? AND sender = ?", (chain_id, sender)
            ).fetchall()
            if not rows:
                raise StoreError(f"no nonce recorded for {sender} on chain {chain_id}: reconcile with the chain first")
            nonce = int(rows[0][0])
            conn.execute(
                "UPDATE settlement_nonce SET next_nonce = ? WHERE chain_id = ? AND sender = ?",
                (nonce + 1, chain_id, sender),
            )
        return nonce

    # -------------------------------------------------------------------------------------- transactions

    def insert(self, tx: TxRecord) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                f"INSERT INTO settlement_tx ({_COLUMNS}) VALUES ({', '.join('?' for _ in range(22))})",
                (
                    tx.tx_key,
                    tx.chain_id,
                    tx.sender,
                    tx.nonce,
                    tx.kind,
                    tx.contract,
                    tx.data,
                    tx.gas,
                    tx.max_fee,
                    tx.tip,
                    tx.raw,
                    tx.tx_hash,
                    str(tx.status),
                    tx.created_at,
                    tx.sent_at,
                    tx.attempts,
                    tx.block,
                    tx.block_hash,
                    tx.mined_hash,
                    tx.gas_used,
                    tx.mined_at,
                    tx.reason,
                ),
            )
            conn.execute(
                "INSERT INTO settlement_attempt (tx_hash, tx_key, max_fee, tip, signed_at) VALUES (?, ?, ?, ?, ?)",
                (tx.tx_hash, tx.tx_key, tx.max_fee, tx.tip, tx.created_at),
            )

    def add_attempt(self, tx_key: str, raw: bytes, tx_hash: str, max_fee: int, tip: int) -> None:
        """A re-signed copy (same nonce, higher fees) becomes the newest attempt; stored before it is sent."""
        now = time.time()
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO settlement_attempt (tx_hash, tx_key, max_fee, tip, signed_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (tx_hash, tx_key, max_fee, tip, now),
            )
            conn.execute(
                "UPDATE settlement_tx SET raw = ?, tx_hash = ?, max_fee = ?, tip = ?, attempts = attempts + 1 "
                "WHERE tx_key = ?",
                (raw, tx_hash, max_fee, tip, tx_key),
            )

    def mark_sent(self, tx_key: str, at: float | None = None) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE settlement_tx SET status = 'sent', sent_at = ? "
                "WHERE tx_key = ? AND status IN ('signed', 'sent')",
                (time.time() if at is None else at, tx_key),
            )

    def mark_mined(
        self,
        tx_key: str,
        block: int,
        block_hash: str,
        mined_hash: str,
        gas_used: int,
        *,
        reverted: bool = False,
        reason: str | None = None,
    ) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE settlement_tx SET status = ?, block = ?, block_hash = ?, mined_hash = ?, gas_used = ?, "
                "mined_at = ?, reason = ? WHERE tx_key = ?",
                (
                    "failed" if reverted else "mined",
                    block,
                    block_hash,
                    mined_hash,
                    gas_used,
                    time.time(),
                    reason,
                    tx_key,
                ),
            )

    def fees_since(self, sender: str, since: float) -> list[tuple[float, int]]:
        """(mined at, gas used × max fee) of ``sender``'s transactions mined since ``since``: an upper bound of what
        they paid, since the effective gas price is not stored."""
        rows = self._read(
            "SELECT mined_at, gas_used * max_fee FROM settlement_tx WHERE sender = ? AND mined_at >= ? "
            "AND gas_used IS NOT NULL",
            (sender, since),
        )
        return [(float(at), int(wei)) for at, wei in rows]

    def mark_final(self, tx_key: str) -> None:
        with self.store.transaction() as conn:
            conn.execute("UPDATE settlement_tx SET status = 'final' WHERE tx_key = ? AND status = 'mined'", (tx_key,))

    def reopen(self, tx_key: str) -> None:
        """A mined transaction vanished from the canonical chain (reorg): it is open again, at the same nonce."""
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE settlement_tx SET status = 'sent', block = NULL, block_hash = NULL, mined_hash = NULL, "
                "gas_used = NULL, mined_at = NULL, sent_at = 0 WHERE tx_key = ?",
                (tx_key,),
            )

    def mark_lost(self, tx_key: str, reason: str) -> None:
        with self.store.transaction() as conn:
            conn.execute("UPDATE settlement_tx SET status = 'lost', reason = ? WHERE tx_key = ?", (reason, tx_key))

    def get(self, tx_key: str) -> TxRecord | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM settlement_tx WHERE tx_key = ?", (tx_key,))
        return _record(rows[0]) if rows else None

    def by_status(self, *statuses: TxStatus) -> list[TxRecord]:
        marks = ", ".join("?" for _ in statuses)
        rows = self._read(
            f"SELECT {_COLUMNS} FROM settlement_tx WHERE status IN ({marks}) ORDER BY nonce", [str(s) for s in statuses]
        )
        return [_record(row) for row in rows]

    def attempts(self, tx_key: str) -> list[str]:
        """Every hash this transaction was signed under, newest first."""
        rows = self._read(
            "SELECT tx_hash FROM settlement_attempt WHERE tx_key = ? ORDER BY signed_at DESC, rowid DESC", (tx_key,)
        )
        return [row[0] for row in rows]

    def all(self, chain_id: int | None = None) -> list[TxRecord]:
        if chain_id is None:
            rows = self._read(f"SELECT {_COLUMNS} FROM settlement_tx ORDER BY nonce, created_at")
        else:
            rows = self._read(
                f"SELECT {_COLUMNS} FROM settlement_tx WHERE chain_id = ? ORDER BY nonce, created_at", (chain_id,)
            )
        return [_record(row) for row in rows]

    def count_open(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM settlement_tx WHERE status IN ('signed', 'sent')")[0][0])

    def count_open_by_sender(self) -> dict[str, int]:
        """Transactions signed or sent and not yet mined, per relayer account (nonce lane)."""
        rows = self._read(
            "SELECT sender, COUNT(*) FROM settlement_tx WHERE status IN ('signed', 'sent') GROUP BY sender"
        )
        return {row[0]: int(row[1]) for row in rows}

    def open_senders(self) -> dict[str, str]:
        """tx_key → relayer account of every transaction signed or sent and not yet mined."""
        return dict(self._read("SELECT tx_key, sender FROM settlement_tx WHERE status IN ('signed', 'sent')"))

    def count_live(self) -> tuple[int, int]:
        """(signed or sent, mined and not yet final): what the tracker still has to follow."""
        rows = self._read(
            "SELECT status, COUNT(*) FROM settlement_tx WHERE status IN ('signed', 'sent', 'mined') GROUP BY status"
        )
        counts = {row[0]: int(row[1]) for row in rows}
        return counts.get("signed", 0) + counts.get("sent", 0), counts.get("mined", 0)

    def open_kinds(self) -> set[str]:
        """Event kinds with a transaction signed or sent and not yet mined."""
        rows = self._read("SELECT DISTINCT kind FROM settlement_tx WHERE status IN ('signed', 'sent')")
        return {row[0] for row in rows}
