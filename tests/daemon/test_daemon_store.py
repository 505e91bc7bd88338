"""The oracle's SQLite store: durable across processes, versioned, and the settlement-facing life cycle of an event."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from iotsettle.oracle.daemon.store import (
    SCHEMA_VERSION,
    DeviceState,
    EventRecord,
    EventStatus,
    Rejection,
    Store,
    open_db,
)
from iotsettle.oracle.protocol.errors import StoreError


def record(seq: int, *, kind: str = "reading", device: str = "0xD1", target: int = 7) -> EventRecord:
    is_reading = kind == "reading"
    return EventRecord(
        kind,
        device,
        device,
        31337,
        "0xC0",
        target,
        seq,
        1_700_000_000 + seq,
        1_000 + seq if is_reading else None,
        None if is_reading else b"u33dc0c".ljust(32, b"\0"),
        None if is_reading else 4,
        seq.to_bytes(32, "big"),
        b"\x01" * 65,
        time.time(),
    )


def test_open_db_uses_wal_full_sync_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "a.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="upgrade iotsettle"):
        open_db(tmp_path / "a.db")


def test_a_committed_batch_survives_a_killed_process(tmp_path: Path) -> None:
    db = tmp_path / "oracle.db"
    script = (
        "import os, time\n"
        "from iotsettle.oracle.daemon.store import Store, EventRecord, DeviceState\n"
        f"s = Store.open({str(db)!r})\n"
        "r = EventRecord('reading', '0xD1', '0xD1', 31337, '0xC0', 7, 1, 1, 5, None, None, b'd'*32, b's'*65, 1.0)\n"
        "s.commit_batch([r], [], [DeviceState('0xD1', last_seq=1)])\n"
        "os.kill(os.getpid(), 9)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2], check=False)
    assert result.returncode == -9
    store = Store.open(db)
    assert store.event_count() == 1
    assert store.device_state("0xD1") == DeviceState("0xD1", last_seq=1)


def test_a_failed_batch_stores_nothing(store: Store) -> None:
    store.commit_batch([record(1)], [], [])
    with pytest.raises(StoreError):
        store.commit_batch(
            [record(2), record(1)], [Rejection(1.0, "t", "malformed", "", b"x")], [DeviceState("0xD1", last_seq=2)]
        )
    assert store.event_count() == 1
    assert store.reject_counts() == {}
    assert store.device_state("0xD1") is None


def test_settlement_life_cycle(store: Store) -> None:
    ids = store.commit_batch([record(seq) for seq in range(1, 6)] + [record(1, kind="delivery", device="0xD2")], [], [])
    claimed = store.claim_pending("reading", 3)
    assert [e.seq for e in claimed] == [1, 2, 3] and all(e.status == EventStatus.CLAIMED for e in claimed)
    assert claimed[0].msg == {"agreementId": 7, "seq": 1, "timestamp": 1_700_000_001, "value": 1_001}
    assert [e.seq for e in store.claim_pending("reading", 10)] == [4, 5]  # claimed ones are not handed out twice
    assert [e.kind for e in store.claim_pending("delivery", 10)] == ["delivery"]

    first = [e.id for e in claimed]
    store.attach_tx(first, "31337:0")
    assert {e.status for e in store.events_by_tx("31337:0")} == {EventStatus.SUBMITTED}
    store.mark_settled(first, 42, "0xabc")
    assert store.last_settled_block() == 42
    store.mark_final(first)
    with pytest.raises(StoreError, match="not in state"):
        store.release(first)  # final is final

    store.attach_tx([ids[3], ids[4]], "31337:1")
    store.release([ids[3], ids[4]])  # dropped transaction: back to pending, tx forgotten
    again = store.claim_pending("reading", 10)
    assert [e.id for e in again] == [ids[3], ids[4]] and again[0].tx_key is None

    store.dead_letter(ids[3], "AgreementClosed(7)")
    store.supersede([ids[4]])
    assert store.events([ids[3]])[0].reason == "AgreementClosed(7)"
    backlog = store.backlog()
    assert (backlog["final"], backlog["dead"], backlog["superseded"], backlog["claimed"]) == (3, 1, 1, 1)
    assert store.release_unattached_claims() == 1  # the delivery claimed above and never attached
    assert store.pending_count("delivery") == 1


def test_other_connections_see_commits_at_once(store: Store, tmp_path: Path) -> None:
    reader = sqlite3.connect(tmp_path / "oracle.db")
    store.commit_batch([record(1)], [], [])
    assert reader.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1


def test_revive_superseded_puts_back_the_newest_older_event_of_the_target(store: Store) -> None:
    ids = store.commit_batch([record(seq) for seq in range(1, 5)] + [record(9, target=8)], [], [])
    store.claim_pending("reading", 10)
    store.supersede([ids[0], ids[1], ids[2], ids[4]])  # seq 1-3 of agreement 7, seq 9 of agreement 8
    # seq 4 of agreement 7 was refused as signed after the end: seq 3 is the newest one signed before it
    assert store.revive_superseded("0xC0", 7, 4) == ids[2]
    assert [e.seq for e in store.claim_pending("reading", 10)] == [3]
    # seq 3 refused the same way: seq 2 follows; another target's events are never touched
    assert store.revive_superseded("0xC0", 7, 3) == ids[1]
    assert store.revive_superseded("0xC0", 8, 100) == ids[4]
    assert store.revive_superseded("0xC0", 7, 1) is None
