"""The oracle's durable store (SQLite): accepted events (the settlement outbox), rejected events, per-device rule
state and the device registry mirrored from chain events.

One file, shared by intake and settlement: ``open_db`` is the connection factory both use; the settlement half
keeps its own tables (transactions, nonces) in the same file through its own module.

Durability: WAL journal with ``synchronous=FULL``. In WAL mode ``NORMAL`` survives a killed process but may lose
the last committed transactions on power loss or an OS crash, and the intake acknowledges MQTT messages right
after its commit: an acknowledged event that disappears would be lost for good, since the broker has already
forgotten it. ``FULL`` fsyncs the WAL on every commit; intake commits once per batch (hundreds of events), so
the cost is one fsync per batch, not per event.

Event life cycle (``EventStatus``)::

    pending ─claim_pending→ claimed ─attach_tx→ submitted ─mark_settled→ settled ─mark_final→ final
       ↑___________________ release (dropped tx, reorg) ___________________|
    any non-final state ─dead_letter→ dead          pending/claimed ─supersede→ superseded
    optimistic ─(committed, window over, claim mined)→ settled ─(claim confirmed)→ final
        ↑_________ unsettle_optimistic (the claim's block left the chain) _________|
    optimistic ─supersede / dead_letter→ …

Schema versions (``_MIGRATIONS``; ``open_db`` migrates an older file in place, in one transaction):
1. events, rejected, device_state, registry_keys, follower_cursor;
2. ``events.extra``: the signed fields of kinds other than readings and deliveries
   (``iotsettle.oracle.protocol.kinds``);
3. ``alerts`` and ``alert_state``: the early alerts raised on accepted events and what their detectors remember
   per device (``iotsettle.oracle.daemon.alerts``).

Event shape: this module alone maps an event to its row and back. Readings and deliveries keep their fields in the
``events`` columns ``value`` / ``location`` / ``max_temperature`` (the hot path, schema version 1); every other
kind keeps its signed fields other than the target, ``seq`` and ``timestamp`` in ``extra`` (a JSON object, schema
version 2), see ``COLUMNS``. Intake stores an event through ``event_record``; settlement reads its signed fields
back through ``EventRecord.msg`` and ``signed_fields``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from operator import attrgetter
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address
from iotsettle.oracle.protocol import wire
from iotsettle.oracle.protocol.errors import StoreError
from iotsettle.oracle.protocol.kinds import KINDS

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
BUSY_TIMEOUT_MS = 10_000


class EventStatus(StrEnum):
    PENDING = "pending"  # accepted and stored, waiting for the settlement planner
    CLAIMED = "claimed"  # taken by the planner, not yet in a transaction
    SUBMITTED = "submitted"  # part of a transaction (``tx_key``) that is not mined yet
    SETTLED = "settled"  # mined in ``block`` / ``tx_hash``, not yet deep enough to be final
    FINAL = "final"  # mined with enough confirmations
    DEAD = "dead"  # will never settle (``reason`` says why)
    SUPERSEDED = "superseded"  # a newer cumulative event of the same target (agreement, policy) settles instead
    #: a reading of an agreement on OptimisticBilling: never planned; the optimistic relayer commits it in a batch
    #: and claims it after the window (``iotsettle.oracle.daemon.optimistic``), then it is final, superseded or dead
    OPTIMISTIC = "optimistic"


_MIGRATIONS: tuple[str, ...] = (
    # version 1
    """
    CREATE TABLE events (
        id              INTEGER PRIMARY KEY,
        kind            TEXT    NOT NULL,               -- wire type: 'reading' | 'delivery' | ... (kinds.KINDS)
        device          TEXT    NOT NULL,               -- device identity (checksummed), the rule state key
        signer          TEXT    NOT NULL,               -- key that signed (the device itself unless rotated)
        chain_id        INTEGER NOT NULL,
        contract        TEXT    NOT NULL,
        target_id       TEXT    NOT NULL,               -- agreement / escrow / policy id or station, decimal
        seq             INTEGER NOT NULL,
        timestamp       INTEGER NOT NULL,
        value           TEXT,                           -- readings: cumulative register, decimal (uint256)
        location        BLOB,                           -- deliveries: bytes32
        max_temperature INTEGER,                        -- deliveries
        digest          BLOB    NOT NULL,               -- EIP-712 digest (not unique: it does not cover the device)
        sig             BLOB    NOT NULL,
        received_at     REAL    NOT NULL,
        status          TEXT    NOT NULL DEFAULT 'pending',
        tx_key          TEXT,
        block           INTEGER,
        tx_hash         TEXT,
        settled_at      REAL,
        final_at        REAL,
        reason          TEXT,
        UNIQUE (device, seq)
    );
    CREATE INDEX events_by_status ON events (status, kind, id);
    CREATE INDEX events_by_tx ON events (tx_key) WHERE tx_key IS NOT NULL;

    CREATE TABLE rejected (
        id          INTEGER PRIMARY KEY,
        received_at REAL    NOT NULL,
        topic       TEXT    NOT NULL,
        reason      TEXT    NOT NULL,
        detail      TEXT    NOT NULL DEFAULT '',
        device      TEXT,                               -- claimed device, when the payload parsed
        seq         INTEGER,
        digest      BLOB,
        payload     BLOB    NOT NULL
    );
    CREATE INDEX rejected_by_time ON rejected (received_at);

    CREATE TABLE device_state (
        device               TEXT PRIMARY KEY,
        last_seq             INTEGER,
        registers            TEXT    NOT NULL DEFAULT '[]', -- JSON [[target, value(s), timestamp], ...], decimal text
        last_timestamp       INTEGER,
        last_location        BLOB,
        failures             INTEGER NOT NULL DEFAULT 0,
        failure_window_start REAL,
        quarantined_at       REAL,
        quarantine_reason    TEXT
    );

    CREATE TABLE registry_keys (
        key    TEXT PRIMARY KEY,                        -- signing key address (checksummed)
        device TEXT    NOT NULL,                        -- device identity it signs for
        owner  TEXT,
        kind   INTEGER NOT NULL,
        active INTEGER NOT NULL,
        block  INTEGER NOT NULL
    );
    CREATE INDEX registry_by_device ON registry_keys (device);

    CREATE TABLE follower_cursor (
        name       TEXT PRIMARY KEY,                    -- e.g. 'registry:<chainId>:<address>'
        next_block INTEGER NOT NULL
    );
    """,
    # version 2: the signed fields of the insurance kinds (telematics, weather) that have no column of their own,
    # as a JSON object {"field": integer, ...}; NULL for readings and deliveries
    """
    ALTER TABLE events ADD COLUMN extra TEXT
    """,
    # version 3: early alerts (never block settlement) and the per-device state of their detectors
    """
    CREATE TABLE alerts (
        id          INTEGER PRIMARY KEY,
        kind        TEXT    NOT NULL,                   -- alerts.AlertKind: 'meter_spike' | ...
        device      TEXT    NOT NULL,
        event_type  TEXT    NOT NULL,                   -- wire type of the event that raised it
        target_id   TEXT    NOT NULL,                   -- decimal, as in events
        seq         INTEGER NOT NULL,
        timestamp   INTEGER NOT NULL,                   -- the event's
        raised_at   REAL    NOT NULL,
        value       REAL    NOT NULL,
        expected    REAL    NOT NULL,
        detail      TEXT    NOT NULL DEFAULT ''
    );
    CREATE INDEX alerts_by_device ON alerts (device, id);

    CREATE TABLE alert_state (
        device       TEXT PRIMARY KEY,
        state        TEXT    NOT NULL,                  -- JSON (alerts.AlertState.to_json)
        station_rate REAL,                              -- weather stations: smoothed rainfall rate, units/s
        station_time INTEGER
    )
    """,
)


def open_db(path: str | Path, *, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open (and create or migrate) the oracle database; the factory intake and settlement share.

    The connection is in autocommit mode (``isolation_level=None``): callers open their own write transactions
    with ``BEGIN IMMEDIATE`` (``Store.transaction``), so one never holds a read snapshot by accident.
    """
    if synchronous not in {"FULL", "NORMAL", "EXTRA"}:
        raise StoreError(f"synchronous={synchronous!r}: use FULL (default), EXTRA or NORMAL")
    target = Path(path)
    if str(path) != ":memory:":
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of {target}: {exc}") from None
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal" and str(path) != ":memory:":
            raise StoreError(f"{target}: the file system refused WAL mode (got {mode})")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys=ON")
        _migrate(conn, target)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the oracle database {target}: {exc}") from None
    return conn


def _migrate(conn: sqlite3.Connection, target: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{target} has schema version {version}, this oracle knows up to {SCHEMA_VERSION}; upgrade iotsettle"
            )
        for number in range(version, SCHEMA_VERSION):
            log.info("migrating %s to schema version %d", target, number + 1)
            for statement in _MIGRATIONS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# ------------------------------------------------------------------------------------------------- event shape

#: the events-table column of a signed field that has no column of its own
EXTRA = "extra"
#: the columns every kind shares: its first three signed fields are target, seq, timestamp (``kinds`` checks it)
_COMMON = ("target_id", "seq", "timestamp")
#: wire type → (signed field, events-table column) for the fields other than target/seq/timestamp that have a
#: column of their own (schema version 1); the others go to ``extra``
_OWN_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "reading": (("value", "value"),),
    "delivery": (("location", "location"), ("maxTemperature", "max_temperature")),
}


def _columns(kind: str) -> tuple[tuple[str, str, str], ...]:
    own = dict(_OWN_COLUMNS.get(kind, ()))
    return tuple(
        (name, typ, _COMMON[index] if index < len(_COMMON) else own.get(name, EXTRA))
        for index, (typ, name) in enumerate(KINDS[kind].fields)
    )


#: wire type → (field name, solidity type, events-table column) of its signed fields, in signing order
COLUMNS: dict[str, tuple[tuple[str, str, str], ...]] = {kind: _columns(kind) for kind in KINDS}


def extra_fields(kind: str) -> tuple[str, ...]:
    """The signed fields of ``kind`` stored in the ``extra`` JSON object, in signing order."""
    return tuple(name for name, _, column in COLUMNS[kind] if column == EXTRA)


def _check_columns() -> None:
    """Every own column must hold a signed field of its kind (a mistake here would mis-settle silently)."""
    for kind, own in _OWN_COLUMNS.items():
        signed = {name for _, name in KINDS[kind].fields}
        for name, column in own:
            if name not in signed or column not in {"value", "location", "max_temperature"}:
                raise RuntimeError(f"event kind {kind!r}: {name} → {column} is not a signed field and an own column")


_check_columns()


def _column_fields(kind: str) -> tuple[str | None, str | None, str | None, tuple[str, ...]]:
    """The signed fields stored in the columns value, location and max_temperature (None: not used), and in extra."""
    own = {column: name for name, column in _OWN_COLUMNS.get(kind, ())}
    return own.get("value"), own.get("location"), own.get("max_temperature"), extra_fields(kind)


#: wire type → ``_column_fields``, looked up once per event on the hot path
_COLUMN_FIELDS = {kind: _column_fields(kind) for kind in KINDS}


def event_record(event: wire.SignedEvent, device: str, signer: str, received_at: float) -> EventRecord:
    """The stored form of an accepted event."""
    msg = event.msg
    value, location, max_temperature, extra = _COLUMN_FIELDS[event.type]
    return EventRecord(
        event.type,
        device,
        signer,
        event.chain_id,
        event.contract,
        event.target_id,
        event.seq,
        int(msg["timestamp"]),
        msg[value] if value else None,
        msg[location] if location else None,
        msg[max_temperature] if max_temperature else None,
        event.digest,
        event.sig,
        received_at,
        extra=tuple((name, int(msg[name])) for name in extra) if extra else (),
    )


def signed_fields(kind: str) -> Callable[[EventRecord], tuple[Any, ...]]:
    """The signed fields of a stored event of ``kind`` in signing order: one ``attrgetter`` when every field has its
    own column (readings, deliveries: the hot path), else a lookup per field."""
    columns = COLUMNS[kind]
    if all(column != EXTRA for _, _, column in columns):
        return attrgetter(*(column for _, _, column in columns))

    def fields_of(event: EventRecord) -> tuple[Any, ...]:
        return tuple(event.field_value(name, column) for name, _, column in columns)

    return fields_of


# ----------------------------------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An accepted event as intake stores it."""

    kind: str
    device: str
    signer: str
    chain_id: int
    contract: str
    target_id: int
    seq: int
    timestamp: int
    value: int | None
    location: bytes | None
    max_temperature: int | None
    digest: bytes
    sig: bytes
    received_at: float
    #: signed fields without a column of their own (``extra_fields``), in signing order
    extra: tuple[tuple[str, int], ...] = field(default=(), kw_only=True)

    def field_value(self, name: str, column: str) -> Any:
        """The stored value of signed field ``name`` kept in ``column`` (``COLUMNS``)."""
        if column == EXTRA:
            for key, value in self.extra:
                if key == name:
                    return value
            raise KeyError(f"{self.kind} event {self.device} seq {self.seq} has no stored {name}")
        return getattr(self, column)

    @property
    def msg(self) -> dict[str, Any]:
        """The signed EIP-712 message, field name → value.

        Shaped as ``iotsettle.oracle.protocol.eip712`` and the contracts expect it.
        """
        out: dict[str, Any] = {}
        for name, typ, column in COLUMNS[self.kind]:
            value = self.field_value(name, column)
            out[name] = to_checksum_address(value.to_bytes(20, "big")) if typ == "address" else value
        return out


@dataclass(frozen=True, slots=True)
class StoredEvent(EventRecord):
    """An event row with its settlement state."""

    id: int
    status: EventStatus
    tx_key: str | None
    block: int | None
    tx_hash: str | None
    settled_at: float | None
    final_at: float | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class Rejection:
    received_at: float
    topic: str
    reason: str
    detail: str
    payload: bytes
    device: str | None = None
    seq: int | None = None
    digest: bytes | None = None


@dataclass(frozen=True, slots=True)
class RejectedRow(Rejection):
    id: int = 0


@dataclass(frozen=True, slots=True)
class DeviceState:
    """What the fraud rules remember about a device between events."""

    device: str
    last_seq: int | None = None
    #: newest accepted registers per target (agreement, policy, station): ((target, register values in the kind's
    #: ``registers`` order, timestamp), ...), most recent last
    registers: tuple[tuple[int, tuple[int, ...], int], ...] = ()
    last_timestamp: int | None = None
    last_location: bytes | None = None
    failures: int = 0
    failure_window_start: float | None = None
    quarantined_at: float | None = None
    quarantine_reason: str | None = None


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    """One signing key of a registered device, as followed from the DeviceRegistry's events."""

    key: str
    device: str
    owner: str | None
    kind: int
    active: bool
    block: int


#: positional row layout (``_record_row`` / ``_stored_event``): the record's fields, its settlement state, then extra
_RECORD_COLUMNS = (
    "kind",
    "device",
    "signer",
    "chain_id",
    "contract",
    "target_id",
    "seq",
    "timestamp",
    "value",
    "location",
    "max_temperature",
    "digest",
    "sig",
    "received_at",
)
_STATE_OF_EVENT = ("id", "status", "tx_key", "block", "tx_hash", "settled_at", "final_at", "reason")
_EVENT_COLUMNS = ", ".join((*_RECORD_COLUMNS, *_STATE_OF_EVENT, "extra"))
#: readings and deliveries leave ``extra`` NULL: a batch of only those binds one parameter less per row
_INSERT_EVENT = f"INSERT INTO events ({', '.join(_RECORD_COLUMNS)}) VALUES ({', '.join('?' for _ in _RECORD_COLUMNS)})"
_INSERT_EVENT_EXTRA = (
    f"INSERT INTO events ({', '.join(_RECORD_COLUMNS)}, extra) VALUES ({', '.join('?' for _ in _RECORD_COLUMNS)}, ?)"
)
_STATE_COLUMNS = (
    "device",
    "last_seq",
    "registers",
    "last_timestamp",
    "last_location",
    "failures",
    "failure_window_start",
    "quarantined_at",
    "quarantine_reason",
)
_UPSERT_STATE = (
    f"INSERT OR REPLACE INTO device_state ({', '.join(_STATE_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _STATE_COLUMNS)})"
)


#: the alerts table's columns, in the order ``Store.alerts`` returns them (``add_alerts`` takes them without id)
ALERT_COLUMNS = (
    "id",
    "kind",
    "device",
    "event_type",
    "target_id",
    "seq",
    "timestamp",
    "raised_at",
    "value",
    "expected",
    "detail",
)
_INSERT_ALERT = (
    f"INSERT INTO alerts ({', '.join(ALERT_COLUMNS[1:])}) VALUES ({', '.join('?' for _ in ALERT_COLUMNS[1:])})"
)


def _record_row(record: EventRecord) -> tuple[Any, ...]:
    value = None if record.value is None else str(record.value)
    return (
        record.kind,
        record.device,
        record.signer,
        record.chain_id,
        record.contract,
        str(record.target_id),
        record.seq,
        record.timestamp,
        value,
        record.location,
        record.max_temperature,
        record.digest,
        record.sig,
        record.received_at,
    )


def _record_row_extra(record: EventRecord) -> tuple[Any, ...]:
    return (*_record_row(record), _extra_text(record.extra) if record.extra else None)


def _extra_text(extra: tuple[tuple[str, int], ...]) -> str:
    return json.dumps(dict(extra), separators=(",", ":"))


def _extra_fields(text: str | None) -> tuple[tuple[str, int], ...]:
    return tuple((name, int(value)) for name, value in json.loads(text).items()) if text else ()


def _stored_event(row: sqlite3.Row | tuple[Any, ...]) -> StoredEvent:
    (
        kind,
        device,
        signer,
        chain_id,
        contract,
        target_id,
        seq,
        timestamp,
        value,
        location,
        max_temperature,
        digest,
        sig,
        received_at,
        event_id,
        status,
        tx_key,
        block,
        tx_hash,
        settled_at,
        final_at,
        reason,
        extra,
    ) = row
    return StoredEvent(
        kind,
        device,
        signer,
        chain_id,
        contract,
        int(target_id),
        seq,
        timestamp,
        None if value is None else int(value),
        location,
        max_temperature,
        digest,
        sig,
        received_at,
        event_id,
        EventStatus(status),
        tx_key,
        block,
        tx_hash,
        settled_at,
        final_at,
        reason,
        extra=_extra_fields(extra) if extra else (),
    )


def _state_row(state: DeviceState) -> tuple[Any, ...]:
    # one register is stored as a decimal string (the version 1 layout), several as a list of them
    registers = json.dumps(
        [
            [str(target), str(values[0]) if len(values) == 1 else [str(v) for v in values], ts]
            for target, values, ts in state.registers
        ],
        separators=(",", ":"),
    )
    return (
        state.device,
        state.last_seq,
        registers,
        state.last_timestamp,
        state.last_location,
        state.failures,
        state.failure_window_start,
        state.quarantined_at,
        state.quarantine_reason,
    )


def _device_state(row: tuple[Any, ...]) -> DeviceState:
    values = list(row)
    values[2] = tuple(
        (int(target), tuple(int(v) for v in value) if isinstance(value, list) else (int(value),), int(ts))
        for target, value, ts in json.loads(values[2] or "[]")
    )
    return DeviceState(*values)


class Store:
    """Typed access to the oracle database. Thread-safe: one lock serialises this object's use of its connection.

    Several ``Store`` objects (one per thread or per component) may share one file; SQLite's WAL mode lets
    readers run beside the single writer, and ``BEGIN IMMEDIATE`` + the busy timeout order the writers.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._lock = threading.RLock()
        self._depth = 0

    @classmethod
    def open(cls, path: str | Path, *, synchronous: str = "FULL") -> Store:
        return cls(open_db(path, synchronous=synchronous))

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``); nested uses join the outer one.

        The settlement half may wrap ``claim_pending``/``attach_tx`` and writes to its own tables in one of these.
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.conn
                finally:
                    self._depth -= 1
                return
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot start a write transaction: {exc}") from None
            self._depth = 1
            try:
                yield self.conn
            except BaseException:
                self._depth = 0
                self.conn.execute("ROLLBACK")
                raise
            self._depth = 0
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self.conn.execute("ROLLBACK")
                raise StoreError(f"commit failed: {exc}") from None

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self.conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"query failed: {exc}") from None

    # ------------------------------------------------------------------------------------------------ intake

    def commit_batch(
        self,
        accepted: Sequence[EventRecord],
        rejected: Sequence[Rejection],
        states: Iterable[DeviceState],
        *,
        optimistic: Collection[str] = (),
    ) -> list[int]:
        """Store one intake batch atomically: accepted events, rejections and the devices' new rule state.

        Events signed for a contract of ``optimistic`` (the addresses of OptimisticBilling and OptimisticMotor when
        the daemon relays optimistically) are stored ``optimistic``, in the same transaction, so the planner never
        takes them. Returns the new event ids. Raises StoreError (and
        stores nothing) if any write fails, e.g. an event whose (device, seq) is already stored: the rules must have
        filtered those as duplicates.
        """
        with self.transaction() as conn:
            try:
                if any(record.extra for record in accepted):
                    conn.executemany(_INSERT_EVENT_EXTRA, [_record_row_extra(record) for record in accepted])
                else:
                    conn.executemany(_INSERT_EVENT, [_record_row(record) for record in accepted])
                # one writer at a time (BEGIN IMMEDIATE): the rows just inserted have consecutive ids
                last = conn.execute("SELECT last_insert_rowid()").fetchone()[0] if accepted else 0
                ids = list(range(last - len(accepted) + 1, last + 1))
                if optimistic and accepted:
                    marks = ", ".join("?" for _ in optimistic)
                    conn.execute(
                        "UPDATE events SET status = 'optimistic' WHERE id BETWEEN ? AND ? "
                        f"AND lower(contract) IN ({marks})",
                        (ids[0], ids[-1], *(a.lower() for a in optimistic)),
                    )
                conn.executemany(
                    "INSERT INTO rejected (received_at, topic, reason, detail, device, seq, digest, payload) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (r.received_at, r.topic, r.reason, r.detail, r.device, r.seq, r.digest, r.payload)
                        for r in rejected
                    ],
                )
                conn.executemany(_UPSERT_STATE, [_state_row(s) for s in states])
            except sqlite3.Error as exc:
                raise StoreError(f"storing an intake batch failed: {exc}") from exc
        return ids

    def device_state(self, device: str) -> DeviceState | None:
        rows = self._read(f"SELECT {', '.join(_STATE_COLUMNS)} FROM device_state WHERE device = ?", (device,))
        return _device_state(rows[0]) if rows else None

    def accepted_digest(self, device: str, seq: int) -> bytes | None:
        """The digest of the accepted event (device, seq), to tell a duplicate from a replayed sequence number."""
        rows = self._read("SELECT digest FROM events WHERE device = ? AND seq = ?", (device, seq))
        return bytes(rows[0][0]) if rows else None

    def quarantined_devices(self) -> list[DeviceState]:
        rows = self._read(
            f"SELECT {', '.join(_STATE_COLUMNS)} FROM device_state WHERE quarantined_at IS NOT NULL ORDER BY device"
        )
        return [_device_state(row) for row in rows]

    def release_quarantine(self, device: str) -> bool:
        """Let a quarantined device in again (operator action); returns False if it was not quarantined."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE device_state SET quarantined_at = NULL, quarantine_reason = NULL, failures = 0, "
                "failure_window_start = NULL WHERE device = ? AND quarantined_at IS NOT NULL",
                (device,),
            )
        return cursor.rowcount == 1

    def recent_rejects(self, limit: int = 20) -> list[RejectedRow]:
        rows = self._read(
            "SELECT received_at, topic, reason, detail, payload, device, seq, digest, id FROM rejected "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [RejectedRow(*row) for row in rows]

    def reject_counts(self) -> dict[str, int]:
        return dict(self._read("SELECT reason, COUNT(*) FROM rejected GROUP BY reason ORDER BY reason"))

    def prune_rejected(self, older_than: float) -> int:
        """Delete rejected rows received before ``older_than`` (unix time); returns how many went."""
        with self.transaction() as conn:
            return conn.execute("DELETE FROM rejected WHERE received_at < ?", (older_than,)).rowcount

    # ---------------------------------------------------------------------------------------------- alerts

    def add_alerts(
        self, alerts: Sequence[tuple[Any, ...]], states: Iterable[tuple[str, str, float | None, int | None]]
    ) -> list[int]:
        """Store alert rows (``ALERT_COLUMNS`` order, without the id) and detector states (device, JSON, station
        rate, station time); returns the alerts' ids. Inside ``transaction()`` it joins the intake batch's."""
        with self.transaction() as conn:
            try:
                ids = [conn.execute(_INSERT_ALERT, row).lastrowid or 0 for row in alerts]
                conn.executemany(
                    "INSERT OR REPLACE INTO alert_state (device, state, station_rate, station_time) "
                    "VALUES (?, ?, ?, ?)",
                    list(states),
                )
            except sqlite3.Error as exc:
                raise StoreError(f"storing alerts failed: {exc}") from exc
        return ids

    def alert_state(self, device: str) -> tuple[str, str, float | None, int | None] | None:
        rows = self._read(
            "SELECT device, state, station_rate, station_time FROM alert_state WHERE device = ?", (device,)
        )
        return (rows[0][0], rows[0][1], rows[0][2], rows[0][3]) if rows else None

    def station_rates(self) -> dict[str, tuple[float, int]]:
        """Every weather station's smoothed rainfall rate and its time, for the neighbour comparison."""
        rows = self._read("SELECT device, station_rate, station_time FROM alert_state WHERE station_rate IS NOT NULL")
        return {row[0]: (float(row[1]), int(row[2])) for row in rows}

    def alerts(
        self, *, after_id: int = 0, limit: int = 100, kind: str | None = None, device: str | None = None
    ) -> list[tuple[Any, ...]]:
        """Alert rows (``ALERT_COLUMNS``) with an id above ``after_id``: the newest ``limit`` of them, oldest first."""
        where: list[str] = ["id > ?"]
        params: list[Any] = [after_id]
        if kind:
            where.append("kind = ?")
            params.append(kind)
        if device:
            where.append("device = ?")
            params.append(device)
        rows = self._read(
            f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return rows[::-1]

    def alert_counts(self) -> dict[str, int]:
        return dict(self._read("SELECT kind, COUNT(*) FROM alerts GROUP BY kind ORDER BY kind"))

    # -------------------------------------------------------------------------------------------- registry

    def registry(self) -> dict[str, RegistryEntry]:
        """Every known signing key → its registry entry (active or not)."""
        rows = self._read("SELECT key, device, owner, kind, active, block FROM registry_keys")
        return {row[0]: RegistryEntry(row[0], row[1], row[2], row[3], bool(row[4]), row[5]) for row in rows}

    def registry_entry(self, key: str) -> RegistryEntry | None:
        rows = self._read("SELECT key, device, owner, kind, active, block FROM registry_keys WHERE key = ?", (key,))
        return (
            RegistryEntry(rows[0][0], rows[0][1], rows[0][2], rows[0][3], bool(rows[0][4]), rows[0][5])
            if rows
            else None
        )

    def apply_registry(
        self,
        entries: Sequence[RegistryEntry],
        deactivate_devices: Sequence[tuple[str, int]] = (),
        *,
        cursor: str | None = None,
        next_block: int | None = None,
    ) -> None:
        """Apply registry changes in order and move the follower's cursor, atomically.

        ``entries`` are upserted by key; ``deactivate_devices`` ((device, block) pairs) switch off every key
        of a revoked device.
        """
        with self.transaction() as conn:
            for entry in entries:
                conn.execute(
                    "INSERT OR REPLACE INTO registry_keys (key, device, owner, kind, active, block) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (entry.key, entry.device, entry.owner, entry.kind, int(entry.active), entry.block),
                )
            for device, block in deactivate_devices:
                conn.execute("UPDATE registry_keys SET active = 0, block = ? WHERE device = ?", (block, device))
            if cursor is not None and next_block is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO follower_cursor (name, next_block) VALUES (?, ?)", (cursor, next_block)
                )

    def follower_cursor(self, name: str) -> int | None:
        rows = self._read("SELECT next_block FROM follower_cursor WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else None

    # ------------------------------------------------------------------------------------------ settlement

    def claim_pending(self, kind: str, limit: int) -> list[StoredEvent]:
        """Take up to ``limit`` pending events of ``kind`` (a wire type), oldest first, marking them
        claimed so a second call does not return them again. ``attach_tx`` or ``release`` must follow."""
        with self.transaction() as conn:
            rows = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE status = 'pending' AND kind = ? ORDER BY id LIMIT ?",
                (kind, limit),
            ).fetchall()
            ids = [row[14] for row in rows]
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                conn.execute(f"UPDATE events SET status = 'claimed' WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
        return [_stored_event((*row[:15], "claimed", *row[16:])) for row in rows]

    def attach_tx(self, event_ids: Sequence[int], tx_key: str) -> None:
        """Record that the events travel in transaction ``tx_key`` (the settlement half's own id for it)."""
        self._transition(event_ids, ("pending", "claimed"), "status = 'submitted', tx_key = ?", (tx_key,))

    def mark_settled(self, event_ids: Sequence[int], block: int, tx_hash: str) -> None:
        """The events' transaction was mined in ``block``."""
        self._transition(
            event_ids,
            ("submitted", "settled"),
            "status = 'settled', block = ?, tx_hash = ?, settled_at = ?",
            (block, tx_hash, time.time()),
        )

    def mark_final(self, event_ids: Sequence[int]) -> None:
        """The events' block has enough confirmations; they will not be touched again."""
        self._transition(event_ids, ("settled",), "status = 'final', final_at = ?", (time.time(),))

    def release(self, event_ids: Sequence[int]) -> None:
        """Put events back to pending (dropped transaction, reorg, crash before broadcast)."""
        self._transition(
            event_ids,
            ("claimed", "submitted", "settled"),
            "status = 'pending', tx_key = NULL, block = NULL, tx_hash = NULL, settled_at = NULL",
            (),
        )

    def dead_letter(self, event_id: int, reason: str) -> None:
        """The event can never settle (e.g. the contract reverts with a named error): keep it with the reason."""
        self._transition(
            [event_id],
            ("pending", "claimed", "submitted", "settled", "optimistic"),
            "status = 'dead', reason = ?",
            (reason,),
        )

    def supersede(self, event_ids: Sequence[int]) -> None:
        """Events made redundant by a newer cumulative event of the same target (``EventKind.cumulative``)."""
        self._transition(event_ids, ("pending", "claimed", "optimistic"), "status = 'superseded'", ())

    def optimistic_events(self, limit: int, contract: str) -> list[StoredEvent]:
        """Up to ``limit`` events signed for ``contract`` waiting for its optimistic relayer
        (``EventStatus.OPTIMISTIC``), oldest first."""
        return [
            _stored_event(r)
            for r in self._read(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE status = 'optimistic' AND lower(contract) = ? "
                "ORDER BY id LIMIT ?",
                (contract.lower(), limit),
            )
        ]

    def settle_optimistic(self, event_ids: Sequence[int], block: int, tx_hash: str) -> None:
        """Optimistic readings billed by the claim ``tx_hash`` (of the newest of them or of a newer one of the same
        agreement), mined in ``block``: settled, and ``mark_final`` once the claim has its confirmations."""
        self._transition(
            event_ids,
            ("optimistic",),
            "status = 'settled', block = ?, tx_hash = ?, settled_at = ?",
            (block, tx_hash, time.time()),
        )

    def unsettle_optimistic(self, event_ids: Sequence[int]) -> None:
        """Optimistic readings whose claim left the canonical chain before it was final: optimistic again."""
        self._transition(
            event_ids, ("settled",), "status = 'optimistic', block = NULL, tx_hash = NULL, settled_at = NULL", ()
        )

    def revive_superseded(self, contract: str, target_id: int, before_seq: int) -> int | None:
        """Put back to pending the newest superseded event of ``target_id`` with a seq below ``before_seq``; its id,
        or None when there is none. For a cumulative event refused as signed after its target's end: an older one,
        signed before the end, still settles during the grace period (the contracts' ``SETTLEMENT_GRACE``).
        Rare (once per close), so the lookup may scan."""
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT id FROM events WHERE contract = ? AND target_id = ? AND seq < ? AND status = 'superseded' "
                "ORDER BY seq DESC LIMIT 1",
                (contract, str(target_id), before_seq),
            ).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE events SET status = 'pending' WHERE id = ?", (row[0],))
            return int(row[0])

    def release_unattached_claims(self) -> int:
        """At start-up: claims left by a process that stopped before ``attach_tx`` go back to pending."""
        with self.transaction() as conn:
            return conn.execute("UPDATE events SET status = 'pending' WHERE status = 'claimed'").rowcount

    def _transition(
        self, event_ids: Sequence[int], allowed: tuple[str, ...], assignment: str, params: tuple[Any, ...]
    ) -> None:
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return
        marks = ", ".join("?" for _ in allowed)
        with self.transaction() as conn:
            updated = 0
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                updated += conn.execute(
                    f"UPDATE events SET {assignment} WHERE id IN ({', '.join('?' for _ in chunk)}) "
                    f"AND status IN ({marks})",
                    (*params, *chunk, *allowed),
                ).rowcount
            if updated != len(ids):
                wrong = conn.execute(
                    f"SELECT id, status FROM events WHERE id IN ({', '.join('?' for _ in ids[:500])})", ids[:500]
                ).fetchall()
                found = dict(wrong)
                bad = {i: found.get(i, "missing") for i in ids if found.get(i) not in allowed}
                raise StoreError(f"events not in state {'/'.join(allowed)}: {dict(list(bad.items())[:10])}")

    def events(self, event_ids: Sequence[int]) -> list[StoredEvent]:
        ids = list(event_ids)
        out: list[StoredEvent] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            out += [
                _stored_event(row)
                for row in self._read(
                    f"SELECT {_EVENT_COLUMNS} FROM events WHERE id IN ({', '.join('?' for _ in chunk)}) ORDER BY id",
                    chunk,
                )
            ]
        return out

    def events_by_tx(self, tx_key: str) -> list[StoredEvent]:
        return [
            _stored_event(r)
            for r in self._read(f"SELECT {_EVENT_COLUMNS} FROM events WHERE tx_key = ? ORDER BY id", (tx_key,))
        ]

    def events_of_device(self, device: str) -> list[StoredEvent]:
        return [
            _stored_event(r)
            for r in self._read(f"SELECT {_EVENT_COLUMNS} FROM events WHERE device = ? ORDER BY seq", (device,))
        ]

    def backlog(self) -> dict[str, int]:
        """Number of events per status (every status present, zero included)."""
        counts = {status.value: 0 for status in EventStatus}
        counts.update(dict(self._read("SELECT status, COUNT(*) FROM events GROUP BY status")))
        return counts

    def pending_count(self, kind: str | None = None) -> int:
        """Events stored but not yet mined (pending, claimed or submitted)."""
        sql = "SELECT COUNT(*) FROM events WHERE status IN ('pending', 'claimed', 'submitted')"
        rows = self._read(sql + " AND kind = ?", (kind,)) if kind else self._read(sql)
        return int(rows[0][0])

    def event_count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM events")[0][0])

    def last_settled_block(self) -> int | None:
        rows = self._read("SELECT MAX(block) FROM events WHERE status IN ('settled', 'final')")
        return rows[0][0]
