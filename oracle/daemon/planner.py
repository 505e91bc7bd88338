"""Settlement planner: turn stored events into batches for the submitter.

- Cumulative kinds (``EventKind.cumulative``: meter readings, telematics reports) carry cumulative registers and
  the contract charges the delta since the last settled event, so only the newest event per target (agreement,
  policy) and settlement window needs to go on chain; the older ones of the window are marked superseded. With
  ``settlement_window = 0`` the window is "whatever is pending at the cut".
- The other kinds (deliveries, weather observations) settle every event, in the order they were accepted, which
  is seq order per device. Of an ``ordered`` kind (weather) at most one batch is in flight: ``cut`` skips the
  kinds named ``busy`` (those with an unmined transaction) and cuts at most one batch of them per pass, and each
  batch carries a device's events in seq order (the contract takes a station's seqs without gaps, so an event
  that arrived late still goes before the later ones it is batched with).
- A batch is cut when it is full (``batch_max_events``) or when its oldest event has waited ``batch_max_wait``
  seconds since it was received.

The planner claims events (``Store.claim_pending``) and holds them in memory until they go into a batch;
claims left by a stopped process are put back to pending by ``Store.release_unattached_claims`` at start-up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from iotsettle.oracle.daemon.store import Store, StoredEvent
from iotsettle.oracle.protocol.kinds import KINDS as EVENT_KINDS

log = logging.getLogger(__name__)

#: every kind the planner knows, in the order batches are cut
KINDS: tuple[str, ...] = tuple(EVENT_KINDS)


@dataclass(frozen=True, slots=True)
class PlannerSettings:
    batch_max_events: int = 100
    batch_max_wait: float = 0.25
    settlement_window: float = 0.0
    #: events held in memory per kind before the planner stops claiming more (back-pressure)
    max_held: int = 1_000


@dataclass(frozen=True, slots=True)
class Batch:
    """Events of one kind, for one contract, to settle in one transaction."""

    kind: str
    contract: str
    events: tuple[StoredEvent, ...]

    @property
    def ids(self) -> list[int]:
        return [e.id for e in self.events]

    @property
    def oldest_received_at(self) -> float:
        return min(e.received_at for e in self.events)


@dataclass(slots=True)
class _Held:
    event: StoredEvent
    since: float  # when the agreement's window opened (first reading held)


class Planner:
    """Holds claimed events and cuts batches; not thread-safe (the settlement loop is its only user).

    ``kinds``: the wire types to plan (those the settlement half has a contract for); events of other kinds stay
    pending in the store.
    """

    def __init__(
        self,
        store: Store,
        settings: PlannerSettings,
        *,
        kinds: Sequence[str] = KINDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if settings.batch_max_events < 1:
            raise ValueError("batch_max_events must be ≥ 1")
        unknown = set(kinds) - set(EVENT_KINDS)
        if unknown:
            raise ValueError(f"unknown event kinds {sorted(unknown)}")
        self.store = store
        self.settings = settings
        self._clock = clock
        self.kinds = tuple(k for k in EVENT_KINDS if k in kinds)  # table order: the order batches are cut in
        # cumulative kinds: (contract, target) → newest event held; insertion order = first held
        self._newest: dict[str, dict[tuple[str, int], _Held]] = {k: {} for k in self.kinds if EVENT_KINDS[k].cumulative}
        # the other kinds: every event, in claim order (= acceptance order, so seq order per device)
        self._queued: dict[str, list[StoredEvent]] = {k: [] for k in self.kinds if not EVENT_KINDS[k].cumulative}
        self._waiting_sql = (
            "SELECT k FROM (" + " UNION ALL ".join("SELECT ? AS k" for _ in self.kinds) + ") "
            "WHERE EXISTS (SELECT 1 FROM events WHERE status = 'pending' AND kind = k)"
        )
        self.superseded = 0

    @property
    def held(self) -> int:
        return sum(len(h) for h in self._newest.values()) + sum(len(q) for q in self._queued.values())

    @property
    def holds_ordered(self) -> bool:
        """Whether events of an ``ordered`` kind are held (then ``cut`` needs to know the busy kinds)."""
        return any(queued for kind, queued in self._queued.items() if EVENT_KINDS[kind].ordered)

    def next_due_in(self) -> float | None:
        """Seconds until the next held event is due in a batch (its window or ``batch_max_wait`` runs out; 0 when one
        is due now), or None when nothing is held: the settlement loop sleeps that long instead of polling."""
        window = self.settings.settlement_window
        wait = self.settings.batch_max_wait
        dues = [
            held.since + window if window > 0 else held.event.received_at + wait
            for newest in self._newest.values()
            for held in newest.values()
        ]
        dues += [event.received_at + wait for queued in self._queued.values() for event in queued]
        if not dues:
            return None
        return max(0.0, min(dues) - self._clock())

    def held_ids(self) -> list[int]:
        return [h.event.id for held in self._newest.values() for h in held.values()] + [
            e.id for queued in self._queued.values() for e in queued
        ]

    def claim(self) -> int:
        """Claim pending events from the store into memory; returns how many were claimed."""
        claimed = 0
        waiting = self._kinds_waiting()
        for kind in self.kinds:
            if kind not in waiting:
                continue
            newest = self._newest.get(kind)
            queued = self._queued.get(kind)
            room = self.settings.max_held - (len(newest) if newest is not None else len(queued or ()))
            if room <= 0:
                continue
            events = self.store.claim_pending(kind, room)
            claimed += len(events)
            if newest is not None:
                self._hold_newest(newest, events)
            elif queued is not None and events:
                late = bool(queued) and events[0].id < queued[-1].id  # released after a lost transaction
                queued.extend(events)
                if late:  # back into acceptance order, so a station's observations still reach the chain in seq order
                    queued.sort(key=lambda e: e.id)
        return claimed

    def _kinds_waiting(self) -> set[str]:
        """Kinds with pending events, by a read (no write lock): an idle pass must not queue behind intake's commits."""
        if not self.kinds:
            return set()
        rows = self.store._read(self._waiting_sql, self.kinds)
        # one index probe per kind (events_by_status), however long the backlog
        return {row[0] for row in rows}

    def _hold_newest(self, held_of_kind: dict[tuple[str, int], _Held], events: list[StoredEvent]) -> None:
        now = self._clock()
        redundant: list[int] = []
        for event in events:
            key = (event.contract, event.target_id)
            held = held_of_kind.get(key)
            if held is None:
                held_of_kind[key] = _Held(event, now)
            elif event.seq > held.event.seq:
                redundant.append(held.event.id)
                held.event = event
            else:
                redundant.append(event.id)
        if redundant:
            self.store.supersede(redundant)
            self.superseded += len(redundant)
            log.debug("superseded %d older cumulative events", len(redundant))

    def cut(self, max_batches: int, *, flush: bool = False, busy: Collection[str] = ()) -> list[Batch]:
        """Batches ready to send, at most ``max_batches``. ``flush`` ignores the windows and the wait (drain).

        ``busy``: kinds with a transaction not yet mined; an ``ordered`` kind among them waits for it.
        """
        if max_batches <= 0:
            return []
        now = self._clock()
        batches: list[Batch] = []
        window = self.settings.settlement_window
        for kind in self.kinds:
            room = max_batches - len(batches)
            if room <= 0:
                break
            if EVENT_KINDS[kind].ordered:
                if kind in busy:
                    continue
                room = 1
            newest = self._newest.get(kind)
            if newest is not None:
                ready = [key for key, held in newest.items() if flush or window <= 0 or now - held.since >= window]
                ready.sort(key=lambda k: newest[k].event.received_at)
                cut = self._cut_kind(kind, [newest[k].event for k in ready], now, room, flush)
                taken = {e.id for b in cut for e in b.events}
                for key in ready:
                    if newest[key].event.id in taken:
                        del newest[key]
            else:
                queued = self._queued[kind]
                cut = self._cut_kind(kind, queued, now, room, flush)
                if cut:
                    taken = {e.id for b in cut for e in b.events}
                    self._queued[kind] = [e for e in queued if e.id not in taken]
            batches += cut
        return batches

    def _cut_kind(self, kind: str, events: list[StoredEvent], now: float, max_batches: int, flush: bool) -> list[Batch]:
        by_contract: dict[str, list[StoredEvent]] = {}
        for event in events:
            by_contract.setdefault(event.contract, []).append(event)
        size = self.settings.batch_max_events
        out: list[Batch] = []
        for contract, items in by_contract.items():
            for start in range(0, len(items), size):
                if len(out) >= max_batches:
                    return out
                chunk = items[start : start + size]
                full = len(chunk) == size
                wait = self.settings.batch_max_wait
                waited = wait <= 0 or now - min(e.received_at for e in chunk) >= wait
                if full or waited or flush:
                    if EVENT_KINDS[kind].ordered:
                        chunk = sorted(chunk, key=lambda e: (e.target_id, e.seq))
                    out.append(Batch(kind, contract, tuple(chunk)))
        return out

    def put_back(self, kind: str, events: Sequence[StoredEvent]) -> None:
        """Hold again events of a cut batch that were not sent (their target is in flight on a lane without room),
        due at the next cut."""
        newest = self._newest.get(kind)
        if newest is None:
            self._queued[kind] = sorted([*self._queued[kind], *events], key=lambda e: e.id)
            return
        for event in events:
            held = newest.get((event.contract, event.target_id))
            if held is None:
                newest[(event.contract, event.target_id)] = _Held(event, 0.0)  # its window is over
            else:  # a newer one of its target arrived meanwhile: the older of the two is superseded
                older, held.event = sorted((held.event, event), key=lambda e: e.seq)
                self.store.supersede([older.id])
                self.superseded += 1

    def release_all(self) -> int:
        """Give every held event back to the store as pending (stop without drain)."""
        ids = self.held_ids()
        if ids:
            self.store.release(ids)
        for held in self._newest.values():
            held.clear()
        for queued in self._queued.values():
            queued.clear()
        return len(ids)
