"""The device's offline buffer: signed payloads waiting for the broker's acknowledgement, in a SQLite file.

Every event is written here before it is published and deleted only after the broker acknowledged it (PUBACK),
so a device that is offline for hours, or restarts, sends everything it signed, oldest first. The row id
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


class OfflineBufferError(IotSettleError):
    """The offline buffer file cannot be opened or written."""


@dataclass(frozen=True, slots=True)
class BufferedMessage:
    id: int
    topic: str
    payload: bytes


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
        except sqlite3.Error as exc:
            raise OfflineBufferError(f"cannot open offline buffer {self.path}: {exc}") from None
        log.debug("offline buffer %s holds %d messages", self.path, len(self))

    def push(self, topic: str, payload: bytes) -> int:
        """Append one message; returns its id."""
        with self._lock:
            try:
                cursor = self._db.execute("INSERT INTO outbox (topic, payload) VALUES (?, ?)", (topic, payload))
            except sqlite3.Error as exc:
                raise OfflineBufferError(f"cannot write to offline buffer {self.path}: {exc}") from None
            return int(cursor.lastrowid or 0)

    def push_many(self, messages: Iterable[tuple[str, bytes]]) -> int:
        """Append messages in one transaction (all or none); returns how many."""
        rows = list(messages)
        if not rows:
            return 0
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT INTO outbox (topic, payload) VALUES (?, ?)", rows)
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

    def peek(self, after_id: int = 0, limit: int = 100) -> list[BufferedMessage]:
        """The oldest ``limit`` messages with an id above ``after_id``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            ).fetchall()
        return [BufferedMessage(row[0], row[1], bytes(row[2])) for row in rows]

    def delete(self, ids: Iterable[int]) -> int:
        """Forget acknowledged messages; returns how many rows went."""
        batch = [(message_id,) for message_id in ids]
        if not batch:
            return 0
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                before = self._db.total_changes
                self._db.executemany("DELETE FROM outbox WHERE id = ?", batch)
                removed = self._db.total_changes - before
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OfflineBufferError(f"cannot delete from offline buffer {self.path}: {exc}") from None
        return removed

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
