"""Submitter: one batch → one signed EIP-1559 transaction at the next nonce of a relayer account.

- **Lanes**: each relayer account (``[chain]`` key plus ``[oracle] relayer_keys``) is a nonce lane of its own: its own
  nonce counter, transactions in flight (at most ``max_in_flight``), replacements and funds. A batch goes to the
  lane with the fewest transactions in flight, except that a target (agreement, escrow, policy, station) stays on the
  lane of its transaction in flight until that one is mined (``assign``), so two transactions of one target are
  never in flight on two lanes, where the later could land first and the earlier be refused.

- **Nonces** are this oracle's own: handed out from the ``settlement_nonce`` table in the same SQLite transaction
  that stores the signed transaction and attaches its events (``txstore`` write-ahead), then broadcast. At start
  ``reconcile`` compares the table with ``eth_getTransactionCount`` (latest and pending) so a restart neither
  reuses a nonce nor leaves a gap.
- **Fees**: EIP-1559, ``maxFeePerGas = min(cap, 2 × baseFee + tip)``; re-broadcasts raise both fees by at least
  12.5 % (what nodes require of a replacement), never above the cap.
- **Gas**: the first batch of a kind is estimated; later batches are run once with ``eth_call`` only when
  ``[oracle] batch_preflight`` is on (off by default: on anvil the call halves settlement throughput, and the
  contracts skip bad items instead of reverting, so a whole-batch revert is screened after its receipt instead)
  and get a limit of items × the highest
  gas per item seen so far (never below ``min_gas_per_item``) plus a margin. If the estimate or the call reverts,
  the batch is bisected down to the items that revert alone, which are dead-lettered with the decoded error while
  the rest goes ahead.
- **Errors** from ``eth_sendRawTransaction`` are classified (``SendError``) rather than matched ad hoc.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import requests
from eth_typing import HexStr
from iotsettle.oracle.chain.revert import ErrorDecoder
from iotsettle.oracle.chain.rpc import RpcClient
from iotsettle.oracle.chain.signer import Signer
from iotsettle.oracle.daemon.calldata import KindSpec
from iotsettle.oracle.daemon.metrics import Metrics
from iotsettle.oracle.daemon.planner import Batch
from iotsettle.oracle.daemon.store import Store, StoredEvent
from iotsettle.oracle.daemon.txstore import TxRecord, TxStatus, TxStore, new_tx_key
from iotsettle.oracle.protocol.errors import ChainError, StoreError
from web3 import Web3
from web3.exceptions import Web3Exception

log = logging.getLogger(__name__)

#: Crash tests only (tests/reliability/test_reliability_crash.py): IOTSETTLE_FAULT_POINT=after_nonce|after_broadcast
#: ends the process with status 137, as kill -9 would, the first time that point is reached (``after_nonce@3``: the
#: third time, to stop in the middle of sending on several lanes). Read once, at import.
_FAULT_POINT, _, _FAULT_NTH = os.environ.get("IOTSETTLE_FAULT_POINT", "").partition("@")
_fault_hits = [0]


def _fault(point: str) -> None:
    if point == _FAULT_POINT:
        _fault_hits[0] += 1
        if _fault_hits[0] >= int(_FAULT_NTH or 1):
            os._exit(137)


GWEI = 10**9
#: nodes (geth, anvil) accept a replacement only if both fees rise by ≥ 10 %; 12.5 % also clears stricter pools.
FEE_BUMP_NUM, FEE_BUMP_DEN = 9, 8
DeadLetter = Callable[[StoredEvent, str], None]
RPC_ERRORS = (requests.RequestException, OSError, Web3Exception, ValueError)


class Reverted(Exception):
    """``eth_call`` / ``eth_estimateGas`` reverted; ``data`` is the revert data (0x-hex) when the node gave it."""

    def __init__(self, message: str, data: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class SendError(StrEnum):
    """What ``eth_sendRawTransaction`` refused, in the terms the submitter and tracker act on."""

    ALREADY_KNOWN = "already_known"  # the node has this exact transaction: as good as sent
    NONCE_TOO_LOW = "nonce_too_low"  # the nonce is used on chain: mined already (ours) or taken by another tx
    UNDERPRICED = "underpriced"  # another transaction holds this nonce in the pool with fees we did not beat
    INSUFFICIENT_FUNDS = "insufficient_funds"  # the relayer account cannot pay gas × maxFee
    FEE_TOO_LOW = "fee_too_low"  # maxFeePerGas below the base fee, or the tip below the pool minimum
    UNAVAILABLE = "unavailable"  # no answer from the node (down, timeout)
    OTHER = "other"


_PATTERNS: tuple[tuple[SendError, tuple[str, ...]], ...] = (
    (SendError.ALREADY_KNOWN, ("already known", "already imported", "known transaction", "already exists")),
    (SendError.NONCE_TOO_LOW, ("nonce too low", "nonce is too low", "oldnonce", "invalid nonce")),
    (
        SendError.UNDERPRICED,
        ("replacement transaction underpriced", "replacement underpriced", "could not replace existing tx"),
    ),
    (SendError.INSUFFICIENT_FUNDS, ("insufficient funds", "insufficient balance", "lack of funds")),
    (
        SendError.FEE_TOO_LOW,
        (
            "less than block base fee",
            "fee cap less than",
            "max fee per gas less than",
            "transaction underpriced",
            "feecap",
            "fee too low",
        ),
    ),
)


def classify_send_error(exc: BaseException) -> SendError:
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return SendError.UNAVAILABLE
    message = str(getattr(exc, "message", "") or exc).lower()
    for kind, needles in _PATTERNS:
        if any(n in message for n in needles):
            return kind
    return SendError.OTHER


@dataclass(frozen=True, slots=True)
class SubmitterSettings:
    max_in_flight: int = 8
    max_fee: int = 500 * GWEI  # cap on maxFeePerGas (wei)
    priority_fee: int | None = None  # wei; None = eth_maxPriorityFeePerGas
    gas_margin: float = 1.25
    gas_extra: int = 25_000
    min_gas_per_item: int = (
        25_000  # floor of the learned figure: a first batch of cheap items must not starve later ones
    )
    preflight: bool = False  # eth_call every batch before signing (False: rely on the receipt to reveal a revert)


@dataclass(frozen=True, slots=True)
class Fees:
    max_fee: int
    tip: int


class Priced(Protocol):
    """What a replacement is priced against: the fees of the attempt it replaces (a ``TxRecord``, or ``Fees``)."""

    @property
    def max_fee(self) -> int: ...

    @property
    def tip(self) -> int: ...


@dataclass(slots=True)
class Lane:
    """One relayer account: a nonce lane with its own counter, transactions in flight and funds."""

    account: Signer
    funds_ok: bool = True

    @property
    def address(self) -> str:
        return str(self.account.address)


class Submitter:
    """Signs, stores and broadcasts settlement transactions for the relayer accounts (nonce lanes) of one chain."""

    def __init__(
        self,
        w3: Web3,
        chain_id: int,
        account: Signer,
        store: Store,
        txstore: TxStore,
        specs: Mapping[str, KindSpec],
        decoder: ErrorDecoder,
        settings: SubmitterSettings,
        metrics: Metrics | None = None,
        on_dead_letter: DeadLetter | None = None,
        lanes: Sequence[Signer] = (),
    ) -> None:
        self.w3 = w3
        self.chain_id = chain_id
        self.account = account
        self.sender = account.address  # the first lane: the [chain] key
        #: address → lane, the [chain] key first; ``lanes`` are the [oracle] relayer_keys
        self.lanes: dict[str, Lane] = {str(a.address): Lane(a) for a in (account, *lanes)}
        #: open transaction → (its lane, the targets it carries): where a target in flight is pinned (``assign``)
        self._pins: dict[str, tuple[str, frozenset[tuple[str, int]]]] = {}
        self.store = store
        self.txstore = txstore
        self.specs = dict(specs)
        self.decoder = decoder
        self.settings = settings
        self.metrics = metrics
        self.on_dead_letter = on_dead_letter
        self._by_contract = {spec.contract: spec for spec in self.specs.values()}
        self._gas_per_item: dict[str, float] = {}
        self._base_fee = 0
        self._base_fee_at = -1e9
        self._tip = GWEI
        self._tip_at = -1e9
        self._transport = RpcClient(w3)

    # ------------------------------------------------------------------------------------------- nonces

    @property
    def funds_ok(self) -> bool:
        """Whether every lane could pay for its last broadcast."""
        return all(lane.funds_ok for lane in self.lanes.values())

    def short_of_funds(self) -> list[str]:
        """The lanes whose last broadcast was refused for want of gas money."""
        return [address for address, lane in self.lanes.items() if not lane.funds_ok]

    def reconcile(self) -> int:
        """Bring every lane's stored next nonce in line with the chain after a (re)start; returns the first lane's."""
        nonces = {address: self.reconcile_lane(address) for address in self.lanes}
        return nonces[self.sender]

    def reconcile_lane(self, sender: str) -> int:
        """Bring the stored next nonce of ``sender`` in line with the chain after a (re)start; returns it.

        Our open transactions cover [chain latest, stored next). A chain ``pending`` count above the stored one
        means another sender used this key (or the database is older than the chain): follow the chain, since
        those nonces are spent. A stored value above the chain's is normal after a crash or a node restart: the
        tracker re-broadcasts the stored transactions that fill the range.
        """
        address = Web3.to_checksum_address(sender)
        latest = self.w3.eth.get_transaction_count(address, "latest")
        pending = self.w3.eth.get_transaction_count(address, "pending")
        stored = self.txstore.next_nonce(self.chain_id, sender)
        live = [tx.nonce for tx in self.txstore.by_status(TxStatus.SIGNED, TxStatus.SENT) if tx.sender == sender]
        nxt = max(stored or 0, latest, pending, *[n + 1 for n in live])
        if stored is None:
            log.info("relayer %s starts at nonce %d (chain latest %d, pending %d)", sender, nxt, latest, pending)
        elif pending > stored:
            # All our nonces are below ``stored``: the chain (or its pool) holds transactions we never signed.
            log.warning(
                "relayer %s: the chain counts %d transactions, this oracle handed out %d; another sender "
                "uses the key?  continuing at %d",
                sender,
                pending,
                stored,
                nxt,
            )
        elif live and stored > pending:
            log.info(
                "relayer %s: nonces %d..%d are stored but not in the node's pool; re-broadcasting them",
                sender,
                pending,
                stored - 1,
            )
        self.txstore.set_next_nonce(self.chain_id, sender, nxt)
        return nxt

    def capacity(self) -> int:
        """Batches that may be sent now: the free places of every lane that can pay (``max_in_flight`` each)."""
        if len(self.lanes) == 1:
            return max(0, self.settings.max_in_flight - self.txstore.count_open()) if self.funds_ok else 0
        return sum(self._room().values())

    def _room(self) -> dict[str, int]:
        """Free places per lane that can pay, lanes with none left out."""
        open_by = self.txstore.count_open_by_sender()
        room = {a: self.settings.max_in_flight - open_by.get(a, 0) for a, lane in self.lanes.items() if lane.funds_ok}
        return {address: free for address, free in room.items() if free > 0}

    # -------------------------------------------------------------------------------------------- lanes

    def assign(self, batch: Batch) -> tuple[dict[str, tuple[StoredEvent, ...]], tuple[StoredEvent, ...]]:
        """Which lane sends which events of ``batch``: (lane → events, events held back).

        A target with a transaction in flight is pinned to that transaction's lane: its events go there, or, when
        that lane is full, are held back until it has room (never onto another lane, where they could overtake).
        The other events join the largest pinned group that can be sent, else go to the lane with the most room
        (the fewest transactions in flight). One lane takes the whole batch unless its targets are in flight on
        several lanes.
        """
        if len(self.lanes) == 1:
            return {self.sender: batch.events}, ()
        room = self._room()
        pins = self._pinned()
        lane_of: dict[int, str | None] = {}
        counts: dict[str, int] = {}
        for event in batch.events:
            lane = pins.get((event.contract, event.target_id))
            lane_of[event.id] = lane
            if lane is not None and lane in room:
                counts[lane] = counts.get(lane, 0) + 1
        if counts:
            free_lane: str | None = max(counts, key=counts.__getitem__)
        else:
            order = list(self.lanes)
            free_lane = max(room, key=lambda a: (room[a], -order.index(a))) if room else None
        groups: dict[str, list[StoredEvent]] = {}
        held: list[StoredEvent] = []
        for event in batch.events:
            lane = lane_of[event.id] or free_lane
            if lane is None or lane not in room:
                held.append(event)
            else:
                groups.setdefault(lane, []).append(event)
        return {lane: tuple(events) for lane, events in groups.items()}, tuple(held)

    def _pinned(self) -> dict[tuple[str, int], str]:
        """(contract, target) → the lane of its transaction in flight."""
        open_txs = self.txstore.open_senders()
        for tx_key in [key for key in self._pins if key not in open_txs]:
            del self._pins[tx_key]
        for tx_key, sender in open_txs.items():
            if tx_key not in self._pins:  # signed before a restart: its targets from the store
                events = self.store.events_by_tx(tx_key)
                self._pins[tx_key] = (sender, frozenset((e.contract, e.target_id) for e in events))
        return {target: sender for sender, targets in self._pins.values() for target in targets}

    def spread(self, batch: Batch) -> tuple[list[TxRecord], tuple[StoredEvent, ...]]:
        """Send ``batch`` on the lanes ``assign`` picks: (the transactions sent, the events held back)."""
        groups, held = self.assign(batch)
        txs = []
        waiting = list(groups.items())
        try:
            while waiting:
                lane, events = waiting[0]
                tx = self.submit(dataclasses.replace(batch, events=events), lane)
                waiting.pop(0)
                if tx is not None:
                    txs.append(tx)
        except BaseException:
            # ``prepare`` released the group that failed; the groups after it and the held events go back as well
            left = [e.id for _, events in waiting[1:] for e in events] + [e.id for e in held]
            if left:
                self.store.release(left)
            raise
        return txs, held

    # --------------------------------------------------------------------------------------------- fees

    def fees(self) -> Fees:
        cap = self.settings.max_fee
        now = time.monotonic()
        if now - self._base_fee_at > 1.0:
            block = self.rpc("eth_getBlockByNumber", ["latest", False])
            self._base_fee = int(block.get("baseFeePerGas") or "0x0", 16)
            self._base_fee_at = now
        base = self._base_fee
        tip = self.settings.priority_fee
        if tip is None:
            if now - self._tip_at > 30.0:
                try:
                    self._tip = int(self.rpc("eth_maxPriorityFeePerGas", []), 16)
                except ChainError:
                    self._tip = GWEI
                self._tip_at = now
            tip = self._tip
        max_fee = 2 * base + tip
        if max_fee > cap:
            if base > cap:
                log.warning(
                    "base fee %.3f gwei is above the cap of %.3f gwei: transactions wait for it to fall",
                    base / GWEI,
                    cap / GWEI,
                )
            max_fee = cap
        return Fees(max_fee, min(tip, max_fee))

    def rpc(self, method: str, params: list[Any]) -> Any:
        """A raw JSON-RPC call: the hot path skips web3's result formatters (a 100-log receipt costs ~30 ms there)."""
        response = self._transport(method, params)
        error = response.get("error")
        if error:
            message = str(error.get("message", error)) if isinstance(error, dict) else str(error)
            data = error.get("data") if isinstance(error, dict) else None
            if isinstance(data, dict):
                data = data.get("data")
            if method in ("eth_call", "eth_estimateGas") and ("revert" in message.lower() or data):
                raise Reverted(message, data if isinstance(data, str) else None)
            raise ChainError(f"{method}: {message}")
        return response.get("result")

    def bumped(self, tx: Priced) -> Fees | None:
        """Fees for a replacement of ``tx`` (≥ +12.5 % each, at least today's), or None when the cap forbids it.

        The optimistic relayer prices its replacements here too (``optimistic.FeePolicy``)."""
        current = self.fees()
        tip = max(math.ceil(tx.tip * FEE_BUMP_NUM / FEE_BUMP_DEN) + 1, current.tip)
        max_fee = max(math.ceil(tx.max_fee * FEE_BUMP_NUM / FEE_BUMP_DEN) + 1, current.max_fee, tip)
        if max_fee > self.settings.max_fee:
            max_fee = self.settings.max_fee
            if max_fee * FEE_BUMP_DEN < tx.max_fee * FEE_BUMP_NUM:
                return None
            tip = min(tip, max_fee)
        return Fees(max_fee, tip)

    # ----------------------------------------------------------------------------------------- batches

    def submit(self, batch: Batch, lane: str | None = None) -> TxRecord | None:
        """Prepare (estimate, sign, store) and broadcast a batch on ``lane`` (default: the first); None if nothing of
        it was left to send."""
        tx = self.prepare(batch, lane)
        if tx is not None:
            _fault("after_nonce")
            self.broadcast(tx)
        return tx

    def prepare(self, batch: Batch, lane: str | None = None) -> TxRecord | None:
        """Everything before the broadcast: items, gas, nonce, signature; stored with the events attached.

        On an RPC failure the batch's events are released (pending again) and the error propagates.
        """
        try:
            return self._prepare(batch, self.lanes[lane or self.sender])
        except BaseException:
            still_claimed = [e.id for e in self.store.events(batch.ids) if e.status == "claimed"]
            if still_claimed:
                self.store.release(still_claimed)
            raise

    def _prepare(self, batch: Batch, lane: Lane) -> TxRecord | None:
        spec = self._by_contract.get(Web3.to_checksum_address(batch.contract))
        if spec is None or spec.kind != batch.kind:
            for event in batch.events:
                self.dead_letter(
                    event, f"WrongContract: signed for {batch.contract}, which this oracle does not settle at"
                )
            return None
        items: list[tuple[StoredEvent, bytes]] = []
        for event in batch.events:
            try:
                item = spec.item(event)
            except (ValueError, TypeError, OverflowError) as exc:
                self.dead_letter(event, f"Unencodable: {exc}")
                continue
            items.append((event, item))
        gas_limit, items = self._gas(spec, items)
        if not items:
            return None
        events = [e for e, _ in items]
        data = spec.calldata([i for _, i in items])
        fees = self.fees()
        # Signed before the write transaction: a remote signer's round trip must not hold the database's write lock
        # (intake commits wait on it). Only this thread hands out nonces, so the one read here is the one taken.
        sender = lane.address
        nonce = self.txstore.next_nonce(self.chain_id, sender)
        if nonce is None:
            raise StoreError(f"no nonce recorded for {sender} on chain {self.chain_id}: reconcile first")
        signed = self._sign(spec.contract, data, gas_limit, nonce, fees, lane.account)
        with self.store.transaction():
            taken = self.txstore.take_nonce(self.chain_id, sender)
            if taken != nonce:
                raise StoreError(f"nonce {nonce} of {sender} was taken meanwhile (now {taken}); planned again")
            tx = TxRecord(
                new_tx_key(self.chain_id, nonce),
                self.chain_id,
                sender,
                nonce,
                spec.kind,
                spec.contract,
                data,
                gas_limit,
                fees.max_fee,
                fees.tip,
                signed[0],
                signed[1],
                TxStatus.SIGNED,
                time.time(),
                None,
                1,
                None,
                None,
                None,
                None,
                None,
                None,
            )
            self.txstore.insert(tx)
            self.store.attach_tx([e.id for e in events], tx.tx_key)
        self._pins[tx.tx_key] = (sender, frozenset((e.contract, e.target_id) for e in events))
        log.debug("tx %s nonce %d: %d %s(s), gas limit %d", tx.tx_hash, nonce, len(events), spec.kind, gas_limit)
        return tx

    def _sign(self, to: str, data: bytes, gas: int, nonce: int, fees: Fees, account: Signer) -> tuple[bytes, str]:
        signed = account.sign_transaction(
            {
                "type": 2,
                "chainId": self.chain_id,
                "nonce": nonce,
                "to": HexStr(to),
                "value": 0,
                "data": data,
                "gas": gas,
                "maxFeePerGas": fees.max_fee,
                "maxPriorityFeePerGas": fees.tip,
            }
        )
        return bytes(signed.raw_transaction), "0x" + bytes(signed.hash).hex()

    def _call(self, spec: KindSpec, items: Sequence[bytes], method: str = "eth_call") -> int:
        """Run the batch against the latest state (``eth_call``) or estimate it; raises Reverted."""
        tx = {"from": self.sender, "to": spec.contract, "data": "0x" + spec.calldata(items).hex()}
        result = self.rpc(method, [tx, "latest"] if method == "eth_call" else [tx])
        return int(result, 16) if method == "eth_estimateGas" else 0

    def _gas(
        self,
        spec: KindSpec,
        items: list[tuple[StoredEvent, bytes]],
    ) -> tuple[int, list[tuple[StoredEvent, bytes]]]:
        """Gas limit for the batch, after dropping the items that make it revert (bisection, dead-lettered).

        The first batch of a kind is estimated (``eth_estimateGas``); later ones only run once (``eth_call``, ~10×
        cheaper on anvil, whose estimate re-executes the batch many times) and get ``items × the highest gas per
        item seen`` (estimates and receipts) with the margin. A batch that still runs out of gas doubles the
        figure (``out_of_gas``) and is planned again.
        """
        if not items:
            return 0, items
        learned = self._gas_per_item.get(spec.kind)
        if learned is not None and not self.settings.preflight:
            per_item = max(learned, self.settings.min_gas_per_item)
            return int(len(items) * per_item * self.settings.gas_margin) + self.settings.gas_extra, items
        method = "eth_estimateGas" if learned is None else "eth_call"
        try:
            estimate = self._call(spec, [i for _, i in items], method)
        except Reverted as exc:
            log.warning(
                "a batch of %d %s(s) reverts as a whole (%s); looking for the poison item(s)",
                len(items),
                spec.kind,
                self.decoder.decode(exc.data).sentence,
            )
            items = self._screen(spec, items)
            if not items:
                return 0, items
            # Halves that pass alone may still revert together (rare); the error then releases the batch.
            estimate = self._call(spec, [i for _, i in items], method)
        if learned is None:
            learned = estimate / len(items)
            self._gas_per_item[spec.kind] = learned
            return int(estimate * self.settings.gas_margin) + self.settings.gas_extra, items
        per_item = max(learned, self.settings.min_gas_per_item)
        return int(len(items) * per_item * self.settings.gas_margin) + self.settings.gas_extra, items

    def learn_gas(self, kind: str, gas_used: int, items: int) -> None:
        """A receipt: raise the per-item figure if this batch needed more per item than any before."""
        if items > 0:
            self._gas_per_item[kind] = max(self._gas_per_item.get(kind, 0.0), gas_used / items)

    def out_of_gas(self, kind: str) -> None:
        self._gas_per_item[kind] = 2 * self._gas_per_item.get(kind, 50_000.0)
        log.warning("a %s batch ran out of gas: allowing %.0f gas per item from now on", kind, self._gas_per_item[kind])

    def _screen(
        self,
        spec: KindSpec,
        items: list[tuple[StoredEvent, bytes]],
    ) -> list[tuple[StoredEvent, bytes]]:
        """The items whose sub-batch runs cleanly; items that revert alone are dead-lettered with the reason."""
        try:
            self._call(spec, [i for _, i in items])
            return items
        except Reverted as exc:
            if len(items) == 1:
                decoded = self.decoder.decode(exc.data) if exc.data else None
                label, sentence = (decoded.label, decoded.sentence) if decoded else ("Reverted", exc.message)
                self.dead_letter(items[0][0], f"{label}: {sentence}")
                return []
        middle = len(items) // 2
        return self._screen(spec, items[:middle]) + self._screen(spec, items[middle:])

    def screen_events(self, kind: str, events: Sequence[StoredEvent]) -> list[StoredEvent]:
        """Dead-letter the events that make a batch revert on their own; the others are returned (tracker use)."""
        spec = self.specs[kind]
        items = []
        for event in events:
            try:
                items.append((event, spec.item(event)))
            except ValueError as exc:
                self.dead_letter(event, f"Unencodable: {exc}")
        return [e for e, _ in self._screen(spec, items)] if items else []

    def dead_letter(self, event: StoredEvent, reason: str) -> None:
        log.warning("dead-lettering %s %s seq %d: %s", event.kind, event.device, event.seq, reason)
        self.store.dead_letter(event.id, reason)
        if self.metrics is not None:
            self.metrics.dead_lettered.labels(reason=reason.split(":", 1)[0]).inc()
        if self.on_dead_letter is not None:
            try:
                self.on_dead_letter(event, reason)
            except Exception:
                log.exception("dead-letter notification failed")

    # ---------------------------------------------------------------------------------------- broadcast

    def broadcast(self, tx: TxRecord) -> SendError | None:
        """Send the newest signed attempt of ``tx``; None when the node took it. Updates the stored status."""
        try:
            self.rpc("eth_sendRawTransaction", ["0x" + tx.raw.hex()])
        except (ChainError, *RPC_ERRORS) as exc:
            error = classify_send_error(exc)
            if error is SendError.ALREADY_KNOWN:
                self.txstore.mark_sent(tx.tx_key)
                return None
            if self.metrics is not None:
                self.metrics.transactions.labels(outcome=f"send_{error}").inc()
            lane = self.lanes.get(tx.sender)
            if error is SendError.INSUFFICIENT_FUNDS and lane is not None:
                if lane.funds_ok:
                    log.error("relayer %s cannot pay for gas: top it up; its lane is paused", tx.sender)
                lane.funds_ok = False
            elif error is SendError.UNDERPRICED:
                # Something holds the nonce in the pool: an attempt of ours from before a restart, or a stranger's.
                # Counting it as sent long ago makes the tracker replace it with higher fees at once.
                self.txstore.mark_sent(tx.tx_key, at=0.0)
            elif error is not SendError.NONCE_TOO_LOW:
                log.warning("broadcast of %s (nonce %d) failed: %s (%s)", tx.tx_hash, tx.nonce, error, exc)
            return error
        _fault("after_broadcast")
        lane = self.lanes.get(tx.sender)
        if lane is not None:
            lane.funds_ok = True
        self.txstore.mark_sent(tx.tx_key)
        if self.metrics is not None:
            self.metrics.transactions.labels(outcome="sent").inc()
        return None

    def replace(self, tx: TxRecord) -> TxRecord | None:
        """Re-sign ``tx`` at the same nonce with fees +12.5 % and store it as the newest attempt (not yet sent).

        None when the fee cap leaves no room for a replacement (the tracker then re-sends the current attempt).
        """
        lane = self.lanes.get(tx.sender)
        if lane is None:
            log.warning(
                "tx nonce %d of %s: that key is no longer configured; re-sending it as signed", tx.nonce, tx.sender
            )
            return None
        fees = self.bumped(tx)
        if fees is None:
            log.warning(
                "tx nonce %d: fee cap %.3f gwei reached, cannot raise fees further",
                tx.nonce,
                self.settings.max_fee / GWEI,
            )
            return None
        raw, tx_hash = self._sign(tx.contract, tx.data, tx.gas, tx.nonce, fees, lane.account)
        self.txstore.add_attempt(tx.tx_key, raw, tx_hash, fees.max_fee, fees.tip)
        if self.metrics is not None:
            self.metrics.transactions.labels(outcome="replaced").inc()
        log.info(
            "tx nonce %d re-signed with maxFee %.3f gwei (was %.3f): %s",
            tx.nonce,
            fees.max_fee / GWEI,
            tx.max_fee / GWEI,
            tx_hash,
        )
        updated = self.txstore.get(tx.tx_key)
        if updated is None:
            raise StoreError(f"transaction {tx.tx_key} vanished from the database")
        return updated
