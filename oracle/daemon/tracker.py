"""Confirmation tracker: follows the transactions the submitter stored until they are final (the settlement loop that
drives it is ``settler.Settler``).

The tracker follows every transaction the submitter stored:

- **receipts** (any attempt's hash): per-item outcomes are read from the ``*Settled`` / ``*Rejected`` logs.
  Settled items are settled; an item rejected as ``Replayed`` was already consumed on chain (another oracle, or
  an earlier transaction of ours) and counts as settled, not as an error; an item rejected as ``SequenceGap``
  (a gapless kind whose earlier event is not on chain yet) goes back to pending and is planned again; any other
  reason dead-letters the event with the on-chain reason. A transaction that reverts as a whole has its poison
  items screened out and the rest re-planned.
- **final** only once ``[chain] confirmations`` blocks sit on top of the transaction's block and the block is
  still canonical; never earlier.
- **stuck** (no receipt after ``rebroadcast_after`` s) or **dropped** (the node no longer knows any attempt):
  re-signed at the same nonce with fees +12.5 % and re-sent.
- **reorgs**: a mined, not yet final transaction whose receipt vanished or moved is re-opened (its events go
  back to submitted, bound to the same transaction and nonce) and re-sent if the node lost it; the contracts'
  replay protection makes a second inclusion harmless.
- **lost**: the account's nonce passed the transaction but no attempt has a receipt (someone else used the key):
  the events go back to pending and are planned again.
- **another endpoint** (``[chain] rpc_urls``): after a switch the new node may not have seen our pending
  transactions; each open one is sent again as stored (same nonce, same signed bytes) in nonce order, before any
  new nonce could land behind a gap, and the chain's identity is checked again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from iotsettle.oracle.chain.connection import endpoints_of
from iotsettle.oracle.chain.revert import RejectReason, reason_label, reason_of
from iotsettle.oracle.daemon.calldata import decode_outcomes, hex_int
from iotsettle.oracle.daemon.metrics import Metrics
from iotsettle.oracle.daemon.store import EventStatus, Store, StoredEvent
from iotsettle.oracle.daemon.submitter import SendError, Submitter
from iotsettle.oracle.daemon.txstore import TxRecord, TxStatus, TxStore
from iotsettle.oracle.protocol.kinds import KINDS
from web3 import Web3

log = logging.getLogger(__name__)

#: Crash tests only (tests/reliability/test_reliability_crash.py): IOTSETTLE_FAULT_POINT=after_receipt ends the process
#: with status 137, as kill -9 would, the first time that point is reached. Read once, at import.
_FAULT_POINT = os.environ.get("IOTSETTLE_FAULT_POINT", "")


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    confirmations: int = 1
    rebroadcast_after: float = 15.0  # s without a receipt before fees are raised at the same nonce
    drop_check_after: float = 1.0  # s after a broadcast before asking the node whether it still has the tx
    drop_check_every: float = 1.0  # s between two such questions for one transaction
    lost_after: float = 5.0  # s the account nonce must have passed a transaction without a receipt before it is lost


class Tracker:
    """Follows the stored transactions of every relayer account (nonce lane) to final; see the module docstring."""

    def __init__(
        self,
        w3: Web3,
        store: Store,
        txstore: TxStore,
        submitter: Submitter,
        settings: TrackerSettings,
        metrics: Metrics | None = None,
    ) -> None:
        self.w3 = w3
        self.store = store
        self.txstore = txstore
        self.submitter = submitter
        self.settings = settings
        self.metrics = metrics
        self._head_hash: str | None = None
        self._head_number: int | None = None
        self._drop_checked: dict[str, float] = {}
        self._retried: dict[str, float] = {}
        self._nonce_passed: dict[str, float] = {}
        self._account_nonce: dict[str, int] = {}  # relayer account (nonce lane) → its latest transaction count
        self.head = 0
        self.head_moved = False  # whether the last poll saw a new head
        #: called when the previous head is no longer canonical, before the pass acts on it; raises to stop the pass
        #: (the settler checks that the node still serves the chain settlement started on)
        self.on_fork: Callable[[], None] | None = None
        #: called with the wei each mined transaction paid for gas (reverted ones too)
        self.on_fee: Callable[[int, str], None] | None = None  # (wei paid, relayer account)
        self._endpoints = endpoints_of(w3)
        self._switches_seen = self._endpoints.switches if self._endpoints is not None else 0

    def poll(self) -> int:
        """One pass over the open and the mined transactions; returns how many changed state.

        Receipts can only appear with a new block, so while the head stays the same a pass costs one RPC call
        (the head) plus whatever the re-send timers ask for.
        """
        now = time.time()
        head = self.submitter.rpc("eth_getBlockByNumber", ["latest", False])
        self._after_switch()
        number, head_hash = hex_int(head["number"]), str(head["hash"])
        self.head = number
        moved = head_hash != self._head_hash
        self.head_moved = moved
        unchanged = self._unchanged_below(number) if moved else None
        if unchanged == -1 and self._head_hash is not None and self.on_fork is not None:
            # The previous head is gone: a reorg, or another chain behind the same URL. Ask before acting on it.
            self.on_fork()
        open_txs = self.txstore.by_status(TxStatus.SIGNED, TxStatus.SENT)
        if moved:
            # The nonce counts before the receipts: a transaction mined after this read is then seen by the lookups.
            # One per lane (each relayer account counts its own nonces), every time: a reorg re-opens a transaction
            # after this read, and a count from before the reorg would make it look taken by a stranger.
            for sender in dict.fromkeys([*self.submitter.lanes, *(tx.sender for tx in open_txs)]):
                self._account_nonce[sender] = hex_int(self.submitter.rpc("eth_getTransactionCount", [sender, "latest"]))
        changed = 0
        for tx in open_txs:
            changed += self._follow_open(tx, now, moved or tx.tx_key in self._nonce_passed)
        if moved or changed:
            mined = self.txstore.by_status(TxStatus.MINED)
            if mined:
                changed += self._follow_mined(
                    mined, number, self._unchanged_below(number) if unchanged is None else unchanged
                )
            self._head_hash, self._head_number = head_hash, number
        return changed

    def _after_switch(self) -> None:
        """The RPC endpoint changed since the last pass: check the chain's identity (``on_fork``), then send every
        open transaction again as signed, lowest nonce first, so the new node's pool has them all."""
        pool = self._endpoints
        if pool is None or pool.switches == self._switches_seen:
            return
        self._switches_seen = pool.switches
        if self.on_fork is not None:
            self.on_fork()
        open_txs = sorted(self.txstore.by_status(TxStatus.SIGNED, TxStatus.SENT), key=lambda tx: (tx.sender, tx.nonce))
        for tx in open_txs:
            self.submitter.broadcast(tx)
        if open_txs:
            log.info(
                "RPC endpoint now %s: re-sent %d open transaction(s), nonces %d..%d, as signed",
                pool.label(),
                len(open_txs),
                open_txs[0].nonce,
                open_txs[-1].nonce,
            )

    def _unchanged_below(self, number: int) -> int:
        """Blocks up to the returned height are the same as at the previous pass (-1: nothing is known).

        One block lookup per new head instead of one receipt per mined transaction: if the previous head is still
        canonical, so is everything below it.
        """
        previous, previous_hash = self._head_number, self._head_hash
        if previous is None or previous_hash is None or number < previous:
            return -1
        block = self.submitter.rpc("eth_getBlockByNumber", [hex(previous), False])
        return previous if block is not None and str(block["hash"]) == previous_hash else -1

    # ------------------------------------------------------------------------------------------ open txs

    def _receipt(self, tx_hash: str) -> dict[str, Any] | None:
        return self.submitter.rpc("eth_getTransactionReceipt", [tx_hash])

    def _follow_open(self, tx: TxRecord, now: float, look_for_receipts: bool) -> int:
        attempts = self.txstore.attempts(tx.tx_key)
        if look_for_receipts:
            for tx_hash in attempts:
                receipt = self._receipt(tx_hash)
                if receipt is not None:
                    self._on_mined(tx, receipt)
                    return 1
        if tx.nonce < self._account_nonce.get(tx.sender, 0):
            # A node may count the nonce a moment before it serves the receipt (anvil does under load): only a
            # nonce passed for ``lost_after`` seconds without a receipt of any attempt means someone else used it.
            first_seen = self._nonce_passed.setdefault(tx.tx_key, now)
            if now - first_seen < self.settings.lost_after:
                return 0
            self._nonce_passed.pop(tx.tx_key, None)
            self._on_lost(tx, f"nonce {tx.nonce} was used by a transaction this oracle did not sign")
            return 1
        if tx.status is TxStatus.SIGNED:
            # Stored but never taken by the node (crash before the broadcast, node down, no funds): send again,
            # at most once per drop_check_every so a failing node is not hammered.
            if now - self._retried.get(tx.tx_key, tx.created_at) < self.settings.drop_check_every:
                return 0
            self._retried[tx.tx_key] = now
            error = self.submitter.broadcast(tx)
            return self._after_send_error(tx, error)
        if not tx.sent_at:
            # Re-opened after a reorg, or a competing transaction holds the nonce in the pool: replace at once.
            log.info("tx nonce %d must be sent again: replacing it with higher fees", tx.nonce)
            return self._replace(tx, "resent")
        age = now - tx.sent_at
        if age >= self.settings.rebroadcast_after:
            log.info("tx nonce %d has no receipt after %.0f s: replacing it with higher fees", tx.nonce, age)
            return self._replace(tx, "stuck")
        if (
            age >= self.settings.drop_check_after
            and now - self._drop_checked.get(tx.tx_key, 0.0) >= self.settings.drop_check_every
        ):
            self._drop_checked[tx.tx_key] = now
            if not any(self._known(h) for h in attempts):
                log.warning(
                    "tx nonce %d (%s) was dropped by the node: re-sending it with higher fees", tx.nonce, tx.tx_hash
                )
                return self._replace(tx, "dropped")
        return 0

    def _known(self, tx_hash: str) -> bool:
        return self.submitter.rpc("eth_getTransactionByHash", [tx_hash]) is not None

    def _replace(self, tx: TxRecord, why: str) -> int:
        if self.metrics is not None:
            self.metrics.transactions.labels(outcome=why).inc()
        replacement = self.submitter.replace(tx) or tx
        self.submitter.broadcast(replacement)
        # Whatever the node said, the stored attempt is sent again on a later pass (signed) or replaced again
        # once it is stuck (sent); the nonce check and the receipt lookups settle "nonce too low".
        return 1

    def _after_send_error(self, tx: TxRecord, error: SendError | None) -> int:
        if error is None:
            return 1
        if error is SendError.NONCE_TOO_LOW:
            # Mined meanwhile (the next poll finds the receipt) or taken by someone else (the nonce check sees it).
            log.info("tx nonce %d: node says the nonce is used; checking receipts on the next pass", tx.nonce)
        elif error is SendError.FEE_TOO_LOW and self.submitter.bumped(tx) is not None:
            return self._replace(tx, "fee_too_low")
        return 0

    def _on_lost(self, tx: TxRecord, reason: str) -> None:
        events = [e.id for e in self.store.events_by_tx(tx.tx_key) if e.status is EventStatus.SUBMITTED]
        with self.store.transaction():
            self.txstore.mark_lost(tx.tx_key, reason)
            self.store.release(events)
        log.warning("tx %s nonce %d lost (%s): %d events planned again", tx.tx_hash, tx.nonce, reason, len(events))
        if self.metrics is not None:
            self.metrics.transactions.labels(outcome="lost").inc()

    # -------------------------------------------------------------------------------------------- mined

    def _on_mined(self, tx: TxRecord, receipt: Mapping[str, Any]) -> None:
        if _FAULT_POINT == "after_receipt":
            os._exit(137)
        block = hex_int(receipt["blockNumber"])
        block_hash = str(receipt["blockHash"]).lower()
        mined_hash = str(receipt["transactionHash"]).lower()
        gas_used = hex_int(receipt["gasUsed"])
        if self.on_fee is not None:
            price = receipt.get("effectiveGasPrice")
            self.on_fee(gas_used * (hex_int(price) if price is not None else tx.max_fee), tx.sender)
        events = [e for e in self.store.events_by_tx(tx.tx_key) if e.status is EventStatus.SUBMITTED]
        self._drop_checked.pop(tx.tx_key, None)
        self._nonce_passed.pop(tx.tx_key, None)
        self._retried.pop(tx.tx_key, None)
        if hex_int(receipt["status"]) != 1:
            if gas_used >= tx.gas * 0.98:
                # Out of gas, not poison: allow more gas per item and plan the same events again.
                self.txstore.mark_mined(
                    tx.tx_key, block, block_hash, mined_hash, gas_used, reverted=True, reason="out of gas"
                )
                self.submitter.out_of_gas(tx.kind)
                self.store.release([e.id for e in events])
                if self.metrics is not None:
                    self.metrics.transactions.labels(outcome="out_of_gas").inc()
                return
            self.txstore.mark_mined(
                tx.tx_key,
                block,
                block_hash,
                mined_hash,
                gas_used,
                reverted=True,
                reason="the transaction reverted as a whole",
            )
            log.error(
                "tx %s (nonce %d) reverted in block %d; screening its %d events",
                mined_hash,
                tx.nonce,
                block,
                len(events),
            )
            good = self.submitter.screen_events(tx.kind, events)
            self.store.release([e.id for e in good])
            if self.metrics is not None:
                self.metrics.transactions.labels(outcome="reverted").inc()
            return
        spec = self.submitter.specs[tx.kind]
        queue: dict[tuple[int, int], list[Any]] = {}
        for outcome in decode_outcomes(spec, receipt["logs"]):
            queue.setdefault((outcome.target_id, outcome.seq), []).append(outcome)
        settled: list[StoredEvent] = []
        replayed = 0
        rejected: list[tuple[StoredEvent, str]] = []
        after_end: list[StoredEvent] = []
        unmatched: list[int] = []
        waiting: list[int] = []  # SequenceGap: an earlier event of the device is not on chain yet; relayed again
        for event in events:
            outcomes = queue.get((event.target_id, event.seq))
            if not outcomes:
                unmatched.append(event.id)
                continue
            outcome = outcomes.pop(0)
            if outcome.settled:
                settled.append(event)
            elif outcome.reason == RejectReason.REPLAYED:
                settled.append(event)  # consumed on chain already: paid once, by whoever got there first
                replayed += 1
            elif outcome.reason == RejectReason.SEQUENCE_GAP:
                waiting.append(event.id)
            else:
                reason = reason_of(outcome.reason)
                text = reason.sentence if reason is not None else "unknown reject code"
                rejected.append((event, f"{reason_label(outcome.reason)}: {text}"))
                if reason is RejectReason.AFTER_END and KINDS[tx.kind].cumulative:
                    after_end.append(event)
        self.submitter.learn_gas(tx.kind, gas_used, len(events))
        with self.store.transaction():
            self.store.mark_settled([e.id for e in settled], block, mined_hash)
            self.txstore.mark_mined(tx.tx_key, block, block_hash, mined_hash, gas_used)
            if unmatched or waiting:
                self.store.release(unmatched + waiting)
        if waiting:
            log.info(
                "tx %s: %d events wait for an earlier event of their device (sequence gap); planned again",
                mined_hash,
                len(waiting),
            )
        for event, why in rejected:
            self.submitter.dead_letter(event, why)
        for event in after_end:
            self._settle_before_end(tx.kind, event)
        if unmatched:
            log.error("tx %s: %d events had no outcome log; planned again", mined_hash, len(unmatched))
        log.debug(
            "tx %s nonce %d mined in block %d: %d settled (%d already on chain), %d rejected, gas %d",
            mined_hash,
            tx.nonce,
            block,
            len(settled),
            replayed,
            len(rejected),
            gas_used,
        )
        if self.metrics is not None:
            now = time.time()
            self.metrics.transactions.labels(outcome="mined").inc()
            self.metrics.settled.labels(kind=tx.kind).inc(len(settled))
            if events:
                per_event = gas_used / len(events)
                for _ in events:
                    self.metrics.gas_per_event.observe(per_event)
            for event in settled:
                self.metrics.latency.observe(max(0.0, now - event.received_at))
            self.metrics.last_settled_block.set(block)
        if self.settings.confirmations == 0:
            mined_tx = self.txstore.get(tx.tx_key)
            if mined_tx is not None:
                self._finalize([mined_tx])

    def _settle_before_end(self, kind: str, event: StoredEvent) -> None:
        """A cumulative event signed after its agreement's or policy's end was refused: the newest one the planner
        superseded before it may be signed before the end, and it still settles during the grace period. Revive it;
        if it is refused the same way, the next older one follows, until one settles or none is left."""
        revived = self.store.revive_superseded(event.contract, event.target_id, event.seq)
        if revived is not None:
            log.info(
                "%s seq %d of %s was signed after its end; relaying the newest earlier one (event %d) instead",
                kind,
                event.seq,
                event.target_id,
                revived,
            )

    def _follow_mined(self, mined: list[TxRecord], head: int, unchanged_below: int) -> int:
        """Re-open transactions a reorg took away; finalize those with enough confirmations, in one commit."""
        changed = 0
        ready: list[TxRecord] = []
        for tx in mined:
            if tx.block is None or tx.block > unchanged_below:
                receipt = self._receipt(tx.mined_hash or tx.tx_hash)
                if receipt is None or str(receipt["blockHash"]).lower() != tx.block_hash:
                    self._reopen(
                        tx, "its block left the canonical chain" if receipt is None else "it moved to another block"
                    )
                    changed += 1
                    continue
            if tx.block is not None and head - tx.block >= self.settings.confirmations:
                ready.append(tx)
        if ready:
            self._finalize(ready)
        return changed + len(ready)

    def _finalize(self, txs: Sequence[TxRecord]) -> None:
        counts: dict[str, int] = {}
        with self.store.transaction():
            for tx in txs:
                ids = [e.id for e in self.store.events_by_tx(tx.tx_key) if e.status is EventStatus.SETTLED]
                self.store.mark_final(ids)
                self.txstore.mark_final(tx.tx_key)
                counts[tx.kind] = counts.get(tx.kind, 0) + len(ids)
        if self.metrics is not None:
            for kind, count in counts.items():
                if count:
                    self.metrics.finalized.labels(kind=kind).inc(count)

    def _reopen(self, tx: TxRecord, why: str) -> None:
        ids = [e.id for e in self.store.events_by_tx(tx.tx_key) if e.status is EventStatus.SETTLED]
        with self.store.transaction():
            self.store.release(ids)
            self.store.attach_tx(ids, tx.tx_key)
            self.txstore.reopen(tx.tx_key)
        log.warning(
            "reorg: tx %s (nonce %d, block %s) is no longer final-bound because %s; %d events wait for it "
            "to be mined again",
            tx.mined_hash,
            tx.nonce,
            tx.block,
            why,
            len(ids),
        )
        if self.metrics is not None:
            self.metrics.transactions.labels(outcome="reorged").inc()
