"""Settlement planner: turn stored events into batches for the submitter.

- Meter readings carry a cumulative register and the contract bills the delta since the last settled reading,
  so only the newest reading per agreement and settlement window needs to go on chain; the older ones of the
  window are marked superseded. With ``settlement_window = 0`` the window is "whatever is pending at the cut".
- Deliveries settle at once.
- A batch is cut when it is full (``batch_max_events``) or when its oldest event has waited ``batch_max_wait``
  seconds since it was received.

The planner claims events (``Store.claim_pending``) and holds them in memory until they go into a batch;
claims left by a stopped process are put back to pending by ``Store.release_unattached_claims`` at start-up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from oracle.daemon.store import StoredEvent, Store

log = logging.getLogger(__name__)

KINDS = ("reading", "delivery")


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
    """Holds claimed events and cuts batches; not thread-safe (the settlement loop is its only user)."""

    def __init__(self, store: Store, settings: PlannerSettings, *,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        if settings.batch_max_events < 1:
            raise ValueError("batch_max_events must be ≥ 1")
        self.store = store
        self.settings = settings
        self._clock = clock
        # reading: (contract, agreement) → newest reading held; insertion order = first held
        self._readings: dict[tuple[str, int], _Held] = {}
        self._deliveries: list[StoredEvent] = []
        self.superseded = 0

    @property
    def held(self) -> int:
        return len(self._readings) + len(self._deliveries)

    def held_ids(self) -> list[int]:
        return [h.event.id for h in self._readings.values()] + [e.id for e in self._deliveries]

    def claim(self) -> int:
        """Claim pending events from the store into memory; returns how many were claimed."""
        claimed = 0
        waiting = self._kinds_waiting()
        room = self.settings.max_held - len(self._readings)
        if room > 0 and "reading" in waiting:
            readings = self.store.claim_pending("reading", room)
            claimed += len(readings)
            self._hold_readings(readings)
        room = self.settings.max_held - len(self._deliveries)
        if room > 0 and "delivery" in waiting:
            deliveries = self.store.claim_pending("delivery", room)
            claimed += len(deliveries)
            self._deliveries.extend(deliveries)
        return claimed

    def _kinds_waiting(self) -> set[str]:
        """Kinds with pending events, by a read (no write lock): an idle pass must not queue behind intake's commits."""
        rows = self.store._read(  # noqa: SLF001 - the store's locked read helper, shared on purpose
            "SELECT k FROM (SELECT 'reading' AS k UNION ALL SELECT 'delivery') "
            "WHERE EXISTS (SELECT 1 FROM events WHERE status = 'pending' AND kind = k)"
        )  # one index probe per kind (events_by_status), however long the backlog
        return {row[0] for row in rows}

    def _hold_readings(self, readings: list[StoredEvent]) -> None:
        now = self._clock()
        redundant: list[int] = []
        for event in readings:
            key = (event.contract, event.target_id)
            held = self._readings.get(key)
            if held is None:
                self._readings[key] = _Held(event, now)
            elif event.seq > held.event.seq:
                redundant.append(held.event.id)
                held.event = event
            else:
                redundant.append(event.id)
        if redundant:
            self.store.supersede(redundant)
            self.superseded += len(redundant)
            log.debug("superseded %d older readings", len(redundant))

    def cut(self, max_batches: int, *, flush: bool = False) -> list[Batch]:
        """Batches ready to send, at most ``max_batches``. ``flush`` ignores the windows and the wait (drain)."""
        if max_batches <= 0:
            return []
        now = self._clock()
        batches: list[Batch] = []
        window = self.settings.settlement_window
        ready = [key for key, held in self._readings.items() if flush or window <= 0 or now - held.since >= window]
        ready.sort(key=lambda k: self._readings[k].event.received_at)
        batches += self._cut_kind("reading", [self._readings[k].event for k in ready], now, max_batches, flush)
        taken = {e.id for b in batches for e in b.events}
        for key in ready:
            if self._readings[key].event.id in taken:
                del self._readings[key]
        if len(batches) < max_batches:
            delivery_batches = self._cut_kind("delivery", self._deliveries, now, max_batches - len(batches), flush)
            taken = {e.id for b in delivery_batches for e in b.events}
            self._deliveries = [e for e in self._deliveries if e.id not in taken]
            batches += delivery_batches
        return batches

    def _cut_kind(self, kind: str, events: list[StoredEvent], now: float, max_batches: int,
                  flush: bool) -> list[Batch]:  # fmt: skip
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
                    out.append(Batch(kind, contract, tuple(chunk)))
        return out

    def release_all(self) -> int:
        """Give every held event back to the store as pending (stop without drain)."""
        ids = self.held_ids()
        if ids:
            self.store.release(ids)
        self._readings.clear()
        self._deliveries.clear()
        return len(ids)
