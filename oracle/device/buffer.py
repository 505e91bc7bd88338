"""The device's durable outbox: signed payloads waiting to be delivered, in a SQLite file.

Every event is written here before it is published. What ends its stay depends on its kind
(``iotsettle.oracle.protocol.kinds``):

- a **cumulative** kind (readings, telematics) is deleted once the broker acknowledged it (PUBACK): should the broker
  lose it afterwards, the device's next event carries its registers and pays what it was worth;
- a **non-cumulative** kind (deliveries, weather observations) is kept, with a ``ReplyKey``, until the oracle's reply
  for it arrives (``accepted``, ``duplicate`` or ``rejected``): nothing later makes good a lost one, and a broker
  killed within its autosave interval loses messages it had acknowledged. Until then the publisher publishes it
  again (``due``, ``attempts``).

A device that is offline for hours, or restarts, therefore sends everything it signed, oldest first. The row id
(AUTOINCREMENT, never reused) is the send order.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from iotsettle.oracle.protocol.errors import IotSettleError

log = logging.getLogger(__name__)

MEMORY = ":memory:"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    topic    TEXT    NOT NULL,
    payload  BLOB    NOT NULL,
    created  REAL    NOT NULL DEFAULT (strftime('%s','now'))
)
"""
#: added to the outbox of files written before events waited for the oracle's reply (ALTER TABLE keeps their rows)
_REPLY_COLUMNS = (
    ("device", "TEXT"),  # lowercase address: the replies topic names it; NULL = deleted on PUBACK
    ("seq", "INTEGER"),
    ("digest", "BLOB"),  # the event's EIP-712 digest, which the reply repeats
    ("acked", "INTEGER NOT NULL DEFAULT 0"),  # 1 once the broker acknowledged it (it waits for the reply)
    ("attempts", "INTEGER NOT NULL DEFAULT 0"),  # publications after the first one
    ("due", "REAL"),  # unix time at which it is published again if no reply came
)
_INDEX = "CREATE INDEX IF NOT EXISTS outbox_reply ON outbox (device, seq)"


class OfflineBufferError(IotSettleError):
    """The offline buffer file cannot be opened or written."""


@dataclass(frozen=True, slots=True)
class ReplyKey:
    """What identifies an event in the oracle's reply: its device (topic), ``seq`` and digest."""

    device: str  # lowercase 0x address
    seq: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class BufferedMessage:
    id: int
    topic: str
    payload: bytes
    #: set for events kept until the oracle's reply; None for events that go on the broker's PUBACK
    key: ReplyKey | None = None
    attempts: int = 0


class OfflineBuffer:
    """A FIFO of (topic, payload) on disk. Safe to share between threads; one process per file."""

    def __init__(self, path: str | os.PathLike[str] = MEMORY, *, durable: bool = True) -> None:
        """``durable`` makes every write survive power loss (fsync per commit); without it a crash of the machine,
        not of the process, may lose the last writes."""
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        try:
            if self.path != MEMORY:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            if self.path != MEMORY:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.execute(_SCHEMA)
            present = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
            for name, declaration in _REPLY_COLUMNS:
                if name not in present:
                    self._db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {declaration}")
            self._db.execute(_INDEX)
        except sqlite3.Error as exc:
            raise OfflineBufferError(f"cannot open offline buffer {self.path}: {exc}") from None
        log.debug("offline buffer %s holds %d messages", self.path, len(self))

    def push(self, topic: str, payload: bytes, key: ReplyKey | None = None) -> int:
        """Append one message (``key``: keep it until the oracle's reply); returns its id."""
        with self._lock:
            try:
                cursor = self._db.execute(
                    "INSERT INTO outbox (topic, payload, device, seq, digest) VALUES (?, ?, ?, ?, ?)",
                    (topic, payload, *_key_columns(key)),
                )
            except sqlite3.Error as exc:
                raise OfflineBufferError(f"cannot write to offline buffer {self.path}: {exc}") from None
            return int(cursor.lastrowid or 0)

    def push_many(self, messages: Iterable[tuple[str, bytes, ReplyKey | None]]) -> int:
        """Append messages in one transaction (all or none); returns how many."""
        rows = [(topic, payload, *_key_columns(key)) for topic, payload, key in messages]
        if not rows:
            return 0
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO outbox (topic, payload, device, seq, digest) VALUES (?, ?, ?, ?, ?)", rows
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OfflineBufferError(f"cannot write to offline buffer {self.path}: {exc}") from None
        return len(rows)

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            log.debug("rollback after a failed write found no open transaction")

    def _select(self, where: str, params: tuple[object, ...]) -> list[BufferedMessage]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, topic, payload, device, seq, digest, attempts FROM outbox WHERE {where}", params
            ).fetchall()
        return [
            BufferedMessage(
                row[0],
                row[1],
                bytes(row[2]),
                ReplyKey(row[3], row[4], bytes(row[5])) if row[3] is not None else None,
                row[6],
            )
            for row in rows
        ]

    def peek(self, after_id: int = 0, limit: int = 100) -> list[BufferedMessage]:
        """The oldest ``limit`` messages the broker has not acknowledged yet with an id above ``after_id``."""
        return self._select("acked = 0 AND id > ? ORDER BY id LIMIT ?", (after_id, limit))

    def awaiting(self, limit: int = 1_000_000) -> list[BufferedMessage]:
        """Messages the broker acknowledged that still wait for the oracle's reply, oldest first."""
        return self._select("acked = 1 ORDER BY id LIMIT ?", (limit,))

    def recovering(self) -> set[str]:
        """Devices with a message published again that has no reply yet: the oracle may have missed it, so a newer
        message of theirs must wait (the oracle takes a device's events in rising ``seq`` order only)."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT device FROM outbox WHERE acked = 1 AND attempts > 0").fetchall()
        return {row[0] for row in rows if row[0] is not None}

    def due(self, now: float, max_attempts: int, limit: int = 100) -> list[BufferedMessage]:
        """Messages waiting for a reply whose time to be published again has come, oldest first."""
        return self._select("acked = 1 AND due <= ? AND attempts < ? ORDER BY id LIMIT ?", (now, max_attempts, limit))

    def delete(self, ids: Iterable[int]) -> int:
        """Forget acknowledged messages; returns how many rows went."""
        return self._write("DELETE FROM outbox WHERE id = ?", [(message_id,) for message_id in ids])

    def await_reply(self, ids: Iterable[int], due: float) -> int:
        """The broker acknowledged these messages: keep them until the oracle's reply, or ``due``."""
        return self._write("UPDATE outbox SET acked = 1, due = ? WHERE id = ? AND acked = 0", [(due, i) for i in ids])

    def republished(self, schedule: Iterable[tuple[int, int, float]]) -> int:
        """(id, attempts, due) of messages just published again."""
        return self._write(
            "UPDATE outbox SET acked = 1, attempts = ?, due = ? WHERE id = ?",
            [(attempts, due, message_id) for message_id, attempts, due in schedule],
        )

    def answered(self, key: ReplyKey) -> int:
        """The oracle replied for this event (digest, or ``seq`` when the reply had none): forget it."""
        if key.digest:
            return self._write("DELETE FROM outbox WHERE device = ? AND seq = ? AND digest = ?", [_key_columns(key)])
        return self._write("DELETE FROM outbox WHERE device = ? AND seq = ?", [(key.device, key.seq)])

    def _write(self, statement: str, batch: list[tuple[object, ...]]) -> int:
        if not batch:
            return 0
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                before = self._db.total_changes
                self._db.executemany(statement, batch)
                changed = self._db.total_changes - before
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OfflineBufferError(f"cannot update offline buffer {self.path}: {exc}") from None
        return changed

    def counts(self) -> tuple[int, int]:
        """(not yet acknowledged by the broker, acknowledged and waiting for the oracle's reply)."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) - COALESCE(SUM(acked), 0), COALESCE(SUM(acked), 0) FROM outbox")
            unsent, awaiting = row.fetchone()
        return int(unsent), int(awaiting)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> OfflineBuffer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _key_columns(key: ReplyKey | None) -> tuple[str | None, int | None, bytes | None]:
    return (None, None, None) if key is None else (key.device, key.seq, key.digest)
