"""Settlement planner on a real SQLite store: which events go on chain, and when."""

from __future__ import annotations

from pathlib import Path

import pytest
from iotsettle.oracle.daemon.planner import Planner, PlannerSettings
from iotsettle.oracle.daemon.store import EventRecord, EventStatus, Store

BILLING = "0x" + "a1" * 20
ESCROW = "0x" + "b2" * 20
T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def reading(device: int, agreement: int, seq: int, value: int, received_at: float = T0) -> EventRecord:
    return EventRecord(
        "reading",
        f"0x{device:040x}",
        f"0x{device:040x}",
        31337,
        BILLING,
        agreement,
        seq,
        int(received_at),
        value,
        None,
        None,
        bytes([device, seq % 256, agreement % 256]) * 8 + b"rd",
        b"\x01" * 65,
        received_at,
    )


def delivery(device: int, escrow: int, received_at: float = T0) -> EventRecord:
    return EventRecord(
        "delivery",
        f"0x{device:040x}",
        f"0x{device:040x}",
        31337,
        ESCROW,
        escrow,
        1,
        int(received_at),
        None,
        b"\0" * 32,
        4,
        device.to_bytes(8, "big") * 4 + b"dl",
        b"\x01" * 65,
        received_at,
    )


def test_only_the_newest_reading_per_agreement_and_window_is_settled(store: Store) -> None:
    clock = Clock()
    planner = Planner(
        store, PlannerSettings(batch_max_events=100, batch_max_wait=0.0, settlement_window=60.0), clock=clock
    )
    first = store.commit_batch([reading(1, 11, 1, 100), reading(1, 11, 2, 150), reading(2, 22, 1, 7)], [], [])
    planner.claim()
    clock.now += 30
    later = store.commit_batch([reading(1, 11, 3, 180, received_at=clock.now)], [], [])
    planner.claim()
    assert planner.cut(10) == [], "the window of both agreements is still open"

    clock.now += 30
    (batch,) = planner.cut(10)

    assert sorted((e.target_id, e.seq) for e in batch.events) == [(11, 3), (22, 1)]
    statuses = {e.id: e.status for e in store.events(first + later)}
    assert statuses[first[0]] is EventStatus.SUPERSEDED and statuses[first[1]] is EventStatus.SUPERSEDED
    assert planner.superseded == 2
    assert planner.held == 0


def test_a_reading_older_than_the_one_held_is_superseded_not_sent(store: Store) -> None:
    planner = Planner(store, PlannerSettings(batch_max_wait=0.0))
    ids = store.commit_batch([reading(1, 11, 5, 500)], [], [])
    planner.claim()
    older = store.commit_batch([reading(1, 11, 4, 400)], [], [])  # arrived late (device retry after an outage)
    planner.claim()
    (batch,) = planner.cut(1)
    assert [e.id for e in batch.events] == ids
    assert store.events(older)[0].status is EventStatus.SUPERSEDED


def test_batches_are_cut_by_size_at_once_and_by_age_for_the_remainder(store: Store) -> None:
    clock = Clock()
    planner = Planner(store, PlannerSettings(batch_max_events=100, batch_max_wait=0.5), clock=clock)
    store.commit_batch([delivery(n, n) for n in range(1, 251)], [], [])
    planner.claim()

    full = planner.cut(10)
    assert [len(b.events) for b in full] == [100, 100], "full batches go at once"
    assert planner.cut(10) == [], "the partial batch waits for its oldest event to age"
    clock.now += 0.5
    (rest,) = planner.cut(10)
    assert len(rest.events) == 50 and rest.kind == "delivery" and rest.contract == ESCROW


CROP = "0x" + "c3" * 20


def observation(station: int, seq: int, received_at: float = T0) -> EventRecord:
    return EventRecord(
        "weather",
        f"0x{station:040x}",
        f"0x{station:040x}",
        31337,
        CROP,
        station,
        seq,
        int(received_at),
        100 * seq,
        None,
        2_000,
        bytes([station, seq % 256]) * 16 + b"wo",
        b"\x01" * 65,
        received_at,
    )


def test_a_batch_carries_each_stations_observations_in_seq_order(store: Store) -> None:
    """CropInsurance takes a station's seqs without gaps: an observation that arrived after a later one (a device
    that published out of order, or one planned again after a sequence gap) still goes first in the batch."""
    planner = Planner(store, PlannerSettings(batch_max_events=100, batch_max_wait=0.0), kinds=("weather",))
    store.commit_batch(
        [observation(1, 2), observation(2, 1), observation(1, 3), observation(1, 1), observation(2, 2)], [], []
    )
    planner.claim()
    (batch,) = planner.cut(10)
    assert batch.kind == "weather"
    assert [(e.target_id, e.seq) for e in batch.events] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]


def test_deliveries_are_not_held_by_the_meter_window(store: Store) -> None:
    planner = Planner(store, PlannerSettings(batch_max_wait=0.0, settlement_window=3600.0))
    store.commit_batch([reading(1, 11, 1, 100), delivery(2, 5)], [], [])
    planner.claim()
    (batch,) = planner.cut(10)
    assert batch.kind == "delivery"
    assert planner.held == 1


def test_no_more_batches_than_the_submitter_can_take_and_the_rest_stays_claimed(store: Store) -> None:
    planner = Planner(store, PlannerSettings(batch_max_events=10, batch_max_wait=0.0))
    store.commit_batch([delivery(n, n) for n in range(1, 36)], [], [])
    planner.claim()
    assert len(planner.cut(2)) == 2
    assert planner.held == 15
    assert planner.cut(0) == []
    assert [len(b.events) for b in planner.cut(5)] == [10, 5]


def test_stopping_without_drain_gives_held_events_back_as_pending(store: Store) -> None:
    planner = Planner(store, PlannerSettings(settlement_window=3600.0))
    ids = store.commit_batch([reading(1, 11, 1, 100), reading(2, 22, 1, 100)], [], [])
    planner.claim()
    assert store.backlog()["claimed"] == 2
    assert planner.release_all() == 2
    assert {e.status for e in store.events(ids)} == {EventStatus.PENDING}
    assert planner.held == 0


def test_flush_ignores_the_window_and_the_wait(store: Store) -> None:
    planner = Planner(store, PlannerSettings(batch_max_wait=60.0, settlement_window=3600.0))
    store.commit_batch([reading(1, 11, 1, 100), delivery(2, 5)], [], [])
    planner.claim()
    assert planner.cut(10) == []
    assert sorted(b.kind for b in planner.cut(10, flush=True)) == ["delivery", "reading"]


def test_bad_settlement_settings_are_refused_naming_the_key(tmp_path: Path) -> None:
    from iotsettle.oracle.config import load_config
    from iotsettle.oracle.daemon.settler import SettlerSettings
    from iotsettle.oracle.protocol.errors import ConfigError

    config = load_config(
        Path(__file__).resolve().parents[1] / "empty.toml",
        env={"IOTSETTLE_ORACLE_BATCH_MAX_EVENTS": "0", "IOTSETTLE_ORACLE_MAX_FEE_GWEI": "-1"},
    )
    with pytest.raises(ConfigError, match=r"batch_max_events must be ≥ 1.*max_fee_gwei must be > 0"):
        SettlerSettings.from_config(config)
    defaults = SettlerSettings.from_config(load_config(Path(__file__).resolve().parents[1] / "empty.toml", env={}))
    assert defaults.planner.batch_max_events == 100 and defaults.submitter.max_fee == 500 * 10**9


def test_next_due_tells_the_settlement_loop_how_long_it_may_sleep(store: Store) -> None:
    clock = Clock()
    planner = Planner(
        store, PlannerSettings(batch_max_events=100, batch_max_wait=0.5, settlement_window=60.0), clock=clock
    )
    assert planner.next_due_in() is None, "nothing held: sleep until woken"
    store.commit_batch([reading(1, 11, 1, 100), delivery(3, 5)], [], [])
    planner.claim()
    assert planner.next_due_in() == pytest.approx(0.5), "the delivery is due when batch_max_wait runs out"
    clock.now += 0.5
    (batch,) = planner.cut(10)
    assert batch.kind == "delivery"
    assert planner.next_due_in() == pytest.approx(59.5), "the reading waits for its agreement's window"
    clock.now += 100
    assert planner.next_due_in() == 0.0
