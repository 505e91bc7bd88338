"""The settlement loop (``Settler``): planner → submitter on one thread, the tracker on another, both over the same
store; built from the deployment the daemon resolved at start-up (``deployment.Deployment``).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from iotsettle.oracle.chain.revert import ErrorDecoder
from iotsettle.oracle.chain.rpc import RpcClient
from iotsettle.oracle.chain.signer import Signer
from iotsettle.oracle.config import Config
from iotsettle.oracle.daemon.calldata import KindSpec
from iotsettle.oracle.daemon.deployment import Deployment
from iotsettle.oracle.daemon.metrics import Metrics
from iotsettle.oracle.daemon.planner import Batch, Planner, PlannerSettings
from iotsettle.oracle.daemon.settled import SettledSeqs
from iotsettle.oracle.daemon.store import Store
from iotsettle.oracle.daemon.submitter import GWEI, RPC_ERRORS, DeadLetter, Submitter, SubmitterSettings
from iotsettle.oracle.daemon.tracker import Tracker, TrackerSettings
from iotsettle.oracle.daemon.txstore import TxStatus, TxStore
from iotsettle.oracle.protocol import delivery_batch, packed
from iotsettle.oracle.protocol.errors import ChainError, ConfigError, IotSettleError
from iotsettle.oracle.protocol.kinds import KINDS
from web3 import Web3
from web3.exceptions import ContractLogicError

log = logging.getLogger(__name__)

#: seconds between checks that the node still serves the chain settlement started on (``Settler._check_chain``)
CHAIN_CHECK_EVERY = 10.0


def _settlement_store(store: Store) -> Store | None:
    """A second connection to the database file of ``store``, for settlement writes; None for in-memory stores."""
    rows = store.conn.execute("PRAGMA database_list").fetchall()
    path = next((row[2] for row in rows if row[1] == "main"), "")
    return Store.open(path, synchronous="NORMAL") if path else None


@dataclass(frozen=True, slots=True)
class _TermsView:
    function: str  # the contract's view: packed terms by target id
    unknown: bytes  # what an item carries when the terms cannot be read: the contract then reads its own
    max_age: float | None  # s a fetched copy is used; None: the terms never change


#: kind → where its batch items' terms come from. An escrow's terms never change; a policy's change once, when a
#: close is requested (closeAt): a copy older than that is refused by the seal and costs only the contract's reads.
TERMS_VIEWS: dict[str, _TermsView] = {
    "delivery": _TermsView("deliveryTerms", delivery_batch.UNKNOWN_TERMS, None),
    "telematics": _TermsView("telematicsTerms", packed.UNKNOWN_TERMS["telematics"], 60.0),
}


def terms_reader(w3: Web3, address: str, abi: Sequence[Mapping[str, Any]], kind: str) -> Callable[[int], bytes] | None:
    """The packed terms of ``kind``'s agreements by id (``DeliveryEscrow.deliveryTerms``,
    ``MotorInsurance.telematicsTerms``), or None for a kind or contract without them. Each agreement costs one call
    per ``max_age``; an id the contract does not know, or a failed call, gets the unknown terms (not kept): the
    contract then reads the agreement itself, with the same outcome at a higher gas cost."""
    view = TERMS_VIEWS.get(kind)
    if view is None or not any(e.get("type") == "function" and e.get("name") == view.function for e in abi):
        return None
    function = getattr(w3.eth.contract(address=Web3.to_checksum_address(address), abi=abi).functions, view.function)
    cache: dict[int, tuple[bytes, float]] = {}

    def terms_of(target_id: int) -> bytes:
        now = time.monotonic()
        hit = cache.get(target_id)
        if hit is not None and (view.max_age is None or now - hit[1] < view.max_age):
            return hit[0]
        try:
            terms = bytes(function(target_id).call())
        except (ContractLogicError, *RPC_ERRORS) as exc:
            log.debug("%s %d: no terms (%s); the contract reads them", kind, target_id, exc)
            return view.unknown
        cache[target_id] = (terms, now)
        return terms

    return terms_of


@dataclass(frozen=True, slots=True)
class SettlerSettings:
    planner: PlannerSettings = field(default_factory=PlannerSettings)
    submitter: SubmitterSettings = field(default_factory=SubmitterSettings)
    tracker: TrackerSettings = field(default_factory=TrackerSettings)
    poll_interval: float = 0.02  # s between passes while a transaction is in flight or an event is due
    #: s between passes with nothing to do: the loops sleep until new events are stored (``Settler.wake``), a held
    #: event falls due, or a batch is sent; this only bounds how late anything else (a release after a reorg) is seen
    idle_wait: float = 1.0
    #: s between head polls while only mined transactions wait for confirmations (blocks come at the chain's pace);
    #: doubled after each poll that saw no new block, up to ``confirm_interval_max`` (a chain that mines only when
    #: transactions come, such as anvil's automine, may leave the last batch one block short for a long time)
    confirm_interval: float = 0.25
    confirm_interval_max: float = 4.0
    max_backoff: float = 5.0  # s, after repeated node errors

    @classmethod
    def from_config(cls, config: Config) -> SettlerSettings:
        """The settlement settings of ``[oracle]`` and ``[chain] confirmations``; ConfigError names a bad value."""
        o = config.oracle
        problems = [
            message
            for bad, message in (
                (o.batch_max_events < 1, "batch_max_events must be ≥ 1"),
                (o.batch_max_wait < 0, "batch_max_wait must be ≥ 0"),
                (o.settlement_window < 0, "settlement_window must be ≥ 0"),
                (o.max_in_flight < 1, "max_in_flight must be ≥ 1"),
                (o.max_fee_gwei <= 0, "max_fee_gwei must be > 0"),
                (o.priority_fee_gwei < 0, "priority_fee_gwei must be ≥ 0"),
                (o.priority_fee_gwei > o.max_fee_gwei, "priority_fee_gwei must not exceed max_fee_gwei"),
                (o.rebroadcast_after <= 0, "rebroadcast_after must be > 0"),
            )
            if bad
        ]
        if problems:
            raise ConfigError("[oracle] " + "; ".join(problems))
        return cls(
            PlannerSettings(o.batch_max_events, o.batch_max_wait, o.settlement_window),
            SubmitterSettings(
                o.max_in_flight,
                int(o.max_fee_gwei * GWEI),
                int(o.priority_fee_gwei * GWEI) if o.priority_fee_gwei > 0 else None,
                preflight=o.batch_preflight,
            ),
            TrackerSettings(config.chain.confirmations, o.rebroadcast_after),
        )


class Settler:
    """The settlement half of the daemon: one worker thread running planner → submitter → tracker passes.

    ``start()`` recovers (claims of a stopped process back to pending, nonces reconciled with the chain) and
    starts the thread; ``stop(drain=True)`` settles everything stored and waits for it to be mined;
    ``run_once()`` is one pass, for callers that drive the loop themselves (tests, one-shot tools).
    """

    def __init__(
        self,
        store: Store,
        w3: Web3,
        chain_id: int,
        account: Signer,
        contracts: Mapping[str, tuple[str, Sequence[Mapping[str, Any]]]],
        decoder: ErrorDecoder,
        settings: SettlerSettings | None = None,
        metrics: Metrics | None = None,
        on_dead_letter: DeadLetter | None = None,
        lanes: Sequence[Signer] = (),
    ) -> None:
        self.settings = settings or SettlerSettings()
        # Settlement writes through a connection of its own with synchronous=NORMAL (a commit costs ~0.03 ms
        # instead of an fsync, ~3 ms here). Intake needs FULL because it acknowledges MQTT messages after its
        # commit; settlement state can be re-derived after a power loss: nonces are reconciled with the chain,
        # and an event whose transaction record was lost is planned again and meets the contract's replay check.
        self._own_store = _settlement_store(store)
        store = self._own_store or store
        self.store = store
        self.w3 = w3
        self.txstore = TxStore(store)
        specs = {
            kind: KindSpec.from_abi(kind, address, abi, terms_reader(w3, address, abi, kind))
            for kind, (address, abi) in contracts.items()
        }
        self.submitter = Submitter(
            w3,
            chain_id,
            account,
            store,
            self.txstore,
            specs,
            decoder,
            self.settings.submitter,
            metrics,
            on_dead_letter,
            lanes,
        )
        self.tracker = Tracker(w3, store, self.txstore, self.submitter, self.settings.tracker, metrics)
        self.planner = Planner(store, self.settings.planner, kinds=tuple(specs))
        self.settled_seqs = SettledSeqs(RpcClient(w3), contracts)
        self._ordered = any(KINDS[kind].ordered for kind in specs)
        self.metrics = metrics
        self._threads: list[threading.Thread] = []
        self._recover_lock = threading.Lock()
        self._stopped: bool | None = None
        self._stop = threading.Event()
        # The loops sleep on these instead of polling: intake sets the first when it stores events (``wake``), the
        # submit loop sets the second when it sends a batch, ``stop`` sets both.
        self.tracker.on_fork = self._force_chain_check
        self._submit_wake = threading.Event()
        self._track_wake = threading.Event()
        self._confirm_wait = self.settings.confirm_interval
        self._recovered = False
        self._last_error: str | None = None
        self._genesis: str | None = None  # block 0 hash of the chain this settler started on
        self._chain_checked_at = 0.0  # monotonic time of the last identity check; 0 = check before the next pass
        self.last_error_at: float | None = None

    @classmethod
    def from_deployment(
        cls,
        config: Config,
        deployment: Deployment,
        store: Store,
        *,
        metrics: Metrics | None = None,
        on_dead_letter: DeadLetter | None = None,
    ) -> Settler:
        """The settler of a resolved deployment: its relayer, the contracts of the kinds it relays and their ABIs."""
        contracts = {kind: (address, deployment.abi_of_kind(kind)) for kind, address in deployment.contracts.items()}
        return cls(
            store,
            deployment.chain.w3,
            deployment.chain.chain_id,
            deployment.relayer,
            contracts,
            deployment.errors,
            SettlerSettings.from_config(config),
            metrics,
            on_dead_letter,
            deployment.lanes,
        )

    # ---------------------------------------------------------------------------------------- lifecycle

    def recover(self) -> None:
        """Undo what a stopped process left half-done; safe to call more than once, from either thread."""
        with self._recover_lock:
            if self._recovered:
                return
            released = self.store.release_unattached_claims()
            if released:
                log.info("released %d events claimed by a previous run", released)
            self.submitter.reconcile()
            self._recovered = True

    def start(self) -> None:
        """Start the two worker threads: one plans and sends batches, one follows receipts and confirmations, so
        neither waits for the other's RPC round trips. Recovery runs as their first pass (retried while the node
        is unreachable)."""
        if self._threads:
            return
        self._stop.clear()
        self._threads = [
            threading.Thread(
                target=self._loop,
                args=(self._submit_pass, self._submit_wake, self._submit_idle),
                name="settlement-submit",
                daemon=True,
            ),
            threading.Thread(
                target=self._loop,
                args=(self._track_pass, self._track_wake, self._track_idle),
                name="settlement-track",
                daemon=True,
            ),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, drain: bool = True, timeout: float = 30.0) -> bool:
        """Stop the loop; with ``drain`` first settle everything stored and wait until it is mined.

        Returns True when nothing is left in flight. Events not yet in a transaction go back to pending. A stopped
        settler stays stopped (its database connection is closed); a second call only reports the first result.
        """
        if self._stopped is not None:
            return self._stopped
        self._stop.set()
        self._submit_wake.set()
        self._track_wake.set()
        for thread in self._threads:
            thread.join(timeout=max(timeout, 5.0))
        self._threads = []
        done = self.drain(timeout) if drain else False
        released = self.planner.release_all()
        if released:
            log.info("stopped with %d events not yet in a transaction; they stay pending", released)
        if self._own_store is not None:
            self._own_store.close()
            self._own_store = None
        self._stopped = done
        return done

    def drain(self, timeout: float = 30.0) -> bool:
        """Settle everything stored now (windows and batch waits ignored) and wait until mined; True when done."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.run_once(flush=True)
            except (IotSettleError, *RPC_ERRORS) as exc:
                self._note_error(exc)
                time.sleep(0.2)
                continue
            if self.planner.held == 0 and self.store.pending_count() == 0 and self.txstore.count_open() == 0:
                return True
            time.sleep(self.settings.poll_interval)
        log.warning("drain: %d events still unsettled after %.0f s", self.store.pending_count(), timeout)
        return False

    def run_once(self, flush: bool = False) -> int:
        """One pass of both halves in this thread: follow transactions, then claim, cut and send batches."""
        self._check_chain()
        self.recover()
        return self.tracker.poll() + self._submit_pass(flush)

    def wake(self) -> None:
        """New events were stored: plan them now rather than at the next idle tick. Safe from any thread."""
        self._submit_wake.set()

    def _submit_idle(self) -> float:
        """How long the submit loop may sleep after a pass that did nothing."""
        due = self.planner.next_due_in()
        if due is None:
            return self.settings.idle_wait
        return max(self.settings.poll_interval, due)

    def _track_pass(self) -> int:
        self._recheck_chain()
        return self.tracker.poll()

    def _force_chain_check(self) -> None:
        self._chain_checked_at = 0.0
        self._check_chain()

    def _recheck_chain(self) -> None:
        """The loops sleep while idle, so no failed call may have told them that the node behind the URL was
        replaced meanwhile (a restart without its state): before a pass that may send (a batch, a re-broadcast after
        a "reorg"), look at the genesis again if the last look is older than ``idle_wait``."""
        if time.monotonic() - self._chain_checked_at > self.settings.idle_wait:
            self._chain_checked_at = 0.0
            self._check_chain()

    def _track_idle(self) -> float:
        """How long the track loop may sleep: short while a transaction is in flight, at the confirmation pace while
        mined ones wait to be final, and until the next batch is sent when nothing is live."""
        open_txs, mined = self.txstore.count_live()
        if open_txs:
            self._confirm_wait = self.settings.confirm_interval
            return self.settings.poll_interval
        if not mined:
            return self.settings.idle_wait
        if self.tracker.head_moved:
            self._confirm_wait = self.settings.confirm_interval
        wait = self._confirm_wait
        self._confirm_wait = min(wait * 2, self.settings.confirm_interval_max)
        return wait

    def _submit_pass(self, flush: bool = False) -> int:
        self.recover()
        work = self.planner.claim()
        if self.planner.held:
            self._recheck_chain()
        # an ordered kind (weather) waits for its transaction in flight; one read, only while such events are held
        busy = self.txstore.open_kinds() if self._ordered and self.planner.holds_ordered else set()
        cuts = self.planner.cut(self.submitter.capacity(), flush=flush, busy=busy)
        batches = self._without_settled(cuts)
        work += len(cuts) - len(batches)  # batches left empty: all their events already settled by another relayer
        for batch in batches:
            sent, held = self.submitter.spread(batch)
            if held:  # their target is in flight on a lane without room: planned again once it has some
                self.planner.put_back(batch.kind, held)
            work += bool(sent) or not held
        if work:
            self._track_wake.set()
        return work

    def _without_settled(self, batches: list[Batch]) -> list[Batch]:
        """``batches`` without the cumulative events whose target the chain has already settled at their seq or a
        newer one (another relayer was first; ``settled``), which are superseded; a batch left empty is dropped.
        One read for all of them. When the node cannot be read the batches go as they are: the contract refuses
        what is stale."""
        if not batches:
            return batches
        try:
            stale_of = self.settled_seqs.already_settled_of([(batch.kind, batch.events) for batch in batches])
        except (IotSettleError, *RPC_ERRORS) as exc:
            log.warning("last settled seqs not read (%s); sending the batches as they are", exc)
            return batches
        out: list[Batch] = []
        for batch, stale in zip(batches, stale_of, strict=True):
            if not stale:
                out.append(batch)
                continue
            self.store.supersede([event.id for event in stale])
            self.planner.superseded += len(stale)
            log.info("%d %s event(s) already settled on chain by another relayer: not sent", len(stale), batch.kind)
            ids = {event.id for event in stale}
            rest = tuple(event for event in batch.events if event.id not in ids)
            if rest:
                out.append(dataclasses.replace(batch, events=rest))
        return out

    def _loop(self, one_pass: Callable[[], int], wake: threading.Event, idle: Callable[[], float]) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            try:
                self._check_chain()
                self.recover()
                work = one_pass()
            except (IotSettleError, *RPC_ERRORS) as exc:
                self._chain_checked_at = 0.0  # the node may have been replaced while it was away
                self._note_error(exc)
                backoff = min(self.settings.max_backoff, max(0.1, backoff * 2))
                self._stop.wait(backoff)
                continue
            except Exception as exc:
                log.exception("settlement pass failed")
                self._note_error(exc)
                backoff = min(self.settings.max_backoff, max(0.1, backoff * 2))
                self._stop.wait(backoff)
                continue
            backoff = 0.0
            if self._last_error is not None and time.time() - (self.last_error_at or 0) > 1.0:
                log.info("settlement recovered")
                self._last_error = None
            if not work:
                # Cleared after the wait, before the next pass reads the store: a wake-up during a pass ends the next
                # wait at once, and one lost between the wait and the clear is covered by that next pass.
                wake.wait(idle())
                wake.clear()

    def _check_chain(self) -> None:
        """Refuse to settle when the node behind the RPC URL now serves another chain (e.g. a node restarted
        without its state: another genesis, none of the contracts), instead of sending batches into the void.

        One block lookup at start, after every node error and every ``CHAIN_CHECK_EVERY`` seconds; the check
        keeps failing (settlement degraded, nothing sent) until the original chain is back.
        """
        now = time.monotonic()
        if self._chain_checked_at and now - self._chain_checked_at < CHAIN_CHECK_EVERY:
            return
        block = self.submitter.rpc("eth_getBlockByNumber", ["0x0", False])
        genesis = str(block["hash"]).lower() if block else "none"
        if self._genesis is None:
            self._genesis = genesis
        elif genesis != self._genesis:
            raise ChainError(
                f"the node now serves another chain (genesis {genesis[:12]}…, settlement started on "
                f"{self._genesis[:12]}…); nothing is sent until the original chain is back"
            )
        self._chain_checked_at = now

    def _note_error(self, exc: BaseException) -> None:
        if self._last_error is None:
            log.warning("settlement degraded: %s: %s", type(exc).__name__, exc)
        self._last_error = f"{type(exc).__name__}: {exc}"
        self.last_error_at = time.time()

    @property
    def last_error(self) -> str | None:
        """Why settlement is not making progress (node errors, relayer out of funds); None while it is."""
        if self._last_error is not None:
            return self._last_error
        short = self.submitter.short_of_funds()
        if short:
            return f"relayer {', '.join(short)} cannot pay for gas; top it up"
        return None

    # ------------------------------------------------------------------------------------------ status

    @property
    def running(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    @property
    def health(self) -> str:
        """ "ok", or "degraded" while the node errs or the relayer cannot pay for gas."""
        if self.last_error is not None:
            return "degraded"
        return "ok"

    def status(self) -> dict[str, Any]:
        open_txs = self.txstore.by_status(TxStatus.SIGNED, TxStatus.SENT)
        chain_id = self.submitter.chain_id
        return {
            "health": self.health,
            "relayer": self.submitter.sender,
            "in_flight": len(open_txs),
            "next_nonce": self.txstore.next_nonce(chain_id, self.submitter.sender),
            "lanes": [
                {
                    "relayer": address,
                    "in_flight": sum(1 for tx in open_txs if tx.sender == address),
                    "next_nonce": self.txstore.next_nonce(chain_id, address),
                }
                for address in self.submitter.lanes
            ],
            "held": self.planner.held,
            "last_error": self.last_error,
            "head": self.tracker.head,
        }
