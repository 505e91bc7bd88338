"""Metered agreements: tariffs, offer/accept (open), top-up, status, list, settle readings, withdraw, close.

An agreement lives in MeteredBilling (direct mode: each reading's signature is checked on chain) or in
OptimisticBilling (its readings are committed in bonded batches and claimed after a challenge window,
docs/OPTIMISTIC.md); both share the tariffs (MeteredBilling's) and the life-cycle functions, and the id says
which contract holds it (:func:`contract_of`). Every operation below taking an agreement id routes by it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_utils import to_checksum_address
from iotsettle.oracle.chain.revert import reason_label
from iotsettle.oracle.ops.context import OpsContext, parse_payloads
from iotsettle.oracle.ops.events import fetch_logs
from iotsettle.oracle.ops.token import ensure_allowance
from iotsettle.oracle.ops.token_info import TokenInfo, check_eth, describe_token
from iotsettle.oracle.ops.tx import TxResult, events_in, transact, transact_many
from iotsettle.oracle.ops.views import AgreementView, agreement_view
from iotsettle.oracle.protocol import batch_tree, settled
from iotsettle.oracle.protocol.errors import ChainError, ProtocolError
from iotsettle.oracle.protocol.packed import pack_item
from iotsettle.oracle.protocol.wire import SignedEvent

log = logging.getLogger(__name__)

CONTRACT = "MeteredBilling"
OPTIMISTIC = "OptimisticBilling"
MODES = ("direct", "optimistic")


def contract_of(agreement_id: int) -> str:
    """The contract holding ``agreement_id``: OptimisticBilling's ids carry ``batch_tree.AGREEMENT_ID_FLAG``."""
    return OPTIMISTIC if batch_tree.is_optimistic(agreement_id) else CONTRACT


def _holder(ctx: OpsContext, agreement_id: int) -> str:
    """:func:`contract_of`, checked against the deployment (a manifest from before the optimistic mode lacks it)."""
    name = contract_of(agreement_id)
    if not ctx.has(name):
        raise ChainError(f"agreement {hex(agreement_id)} is an {name} id, and this deployment has no {name}")
    return name


def agreement_of(ctx: OpsContext, agreement_id: int) -> AgreementView:
    billing = ctx.contract(_holder(ctx, agreement_id))
    raw = billing.functions.agreementOf(agreement_id).call()
    earnings = int(billing.functions.earningsOf(agreement_id).call()) if int(raw[5]) else 0
    return agreement_view(agreement_id, ctx.chain.chain_id, raw, earnings)


def create_flat_tariff(ctx: OpsContext, price: int) -> tuple[int, TxResult]:
    """A one-block tariff: every unit costs ``price`` base units."""
    return create_tariff(ctx, [(0, price)])


def create_tariff(ctx: OpsContext, blocks: list[tuple[int, int]]) -> tuple[int, TxResult]:
    """Store a tariff of (units, price) blocks; the last block has units 0 (unbounded)."""
    result = transact(ctx, ctx.contract(CONTRACT).functions.createTariff(list(blocks)), CONTRACT)
    created = events_in(ctx, CONTRACT, result.receipt, "TariffCreated")
    return int(created[0]["tariffId"]), result


def tariff_of(ctx: OpsContext, tariff_id: int) -> list[tuple[int, int]]:
    return [(int(u), int(p)) for u, p in ctx.contract(CONTRACT).functions.tariffOf(tariff_id).call()]


def offer(
    ctx: OpsContext,
    *,
    consumer: str,
    device: str,
    tariff_id: int,
    token: TokenInfo,
    start_value: int,
    notice_period: int,
    mode: str = "direct",
) -> tuple[int, TxResult]:
    """Provider (the sender) offers the agreement in ``mode`` (one of :data:`MODES`: the contract that will hold it,
    chosen once); returns its id. The tariff is MeteredBilling's in both modes."""
    name = OPTIMISTIC if mode == "optimistic" else CONTRACT
    if not ctx.has(name):
        raise ChainError(f"this deployment has no {name}: redeploy with `iotsettle deploy` to open {mode} agreements")
    call = ctx.contract(name).functions.offer(consumer, device, tariff_id, token.address, start_value, notice_period)
    result = transact(ctx, call, name)
    offered = events_in(ctx, name, result.receipt, "AgreementOffered")
    return int(offered[0]["agreementId"]), result


def _pay(ctx: OpsContext, token: TokenInfo, amount: int, name: str = CONTRACT) -> int:
    """Prepare a payment into the billing contract ``name``; returns the msg.value to send."""
    if token.is_eth:
        check_eth(ctx, amount)
        return amount
    ensure_allowance(ctx, token, name, amount)
    return 0


def accept(ctx: OpsContext, agreement_id: int, deposit: int, start_value: int) -> TxResult:
    """Consumer (the sender) accepts the offer whose meter register starts at ``start_value`` and prepays
    ``deposit``. The contract refuses the acceptance (TermsMismatch) when the offer names another start value."""
    name = _holder(ctx, agreement_id)
    view = agreement_of(ctx, agreement_id)
    value = _pay(ctx, describe_token(ctx, view.token), deposit, name)
    call = ctx.contract(name).functions.accept(agreement_id, deposit, start_value)
    return transact(ctx, call, name, value=value)


def top_up(ctx: OpsContext, agreement_id: int, amount: int) -> TxResult:
    """Anyone adds to the prepaid balance (arrears are paid first)."""
    name = _holder(ctx, agreement_id)
    view = agreement_of(ctx, agreement_id)
    value = _pay(ctx, describe_token(ctx, view.token), amount, name)
    return transact(ctx, ctx.contract(name).functions.topUp(agreement_id, amount), name, value=value)


def cancel_offer(ctx: OpsContext, agreement_id: int) -> TxResult:
    name = _holder(ctx, agreement_id)
    return transact(ctx, ctx.contract(name).functions.cancelOffer(agreement_id), name)


def withdraw_earnings(ctx: OpsContext, agreement_id: int) -> tuple[TxResult, int]:
    name = _holder(ctx, agreement_id)
    result = transact(ctx, ctx.contract(name).functions.withdrawEarnings(agreement_id), name)
    paid = sum(int(a["amount"]) for a in events_in(ctx, name, result.receipt, "EarningsWithdrawn"))
    return result, paid


@dataclass(frozen=True)
class CloseOutcome:
    closed: bool
    close_at: int
    """Readings signed up to this time still bill; later ones are refused (AfterEnd)."""
    closable_from: int
    """``close_at`` + the close delay + 1 s: the first second ``close`` pays the refund (at the delay's last
    second a reading signed by ``close_at`` still settles, so the close waits one more)."""
    refund: int
    txs: tuple[TxResult, ...]


def settlement_grace(ctx: OpsContext) -> int:
    """Seconds after closeAt during which readings signed by then still settle (the contract's SETTLEMENT_GRACE)."""
    return int(ctx.contract(CONTRACT).functions.SETTLEMENT_GRACE().call())


def close_delay(ctx: OpsContext, agreement_id: int) -> int:
    """Seconds after closeAt before ``close`` refunds: the settlement grace (direct), or OptimisticBilling's
    ``closeDelay()`` (the grace, the challenge window of a batch committed at closeAt, and a grace to claim it)."""
    if contract_of(agreement_id) == OPTIMISTIC:
        return int(ctx.contract(_holder(ctx, agreement_id)).functions.closeDelay().call())
    return settlement_grace(ctx)


def closable_from(ctx: OpsContext, agreement_id: int, close_at: int) -> int:
    """The first second ``close`` is accepted for an agreement ending at ``close_at`` (0 when no end is set)."""
    return close_at + close_delay(ctx, agreement_id) + 1 if close_at else 0


def _refund_in(ctx: OpsContext, name: str, result: TxResult) -> int:
    return sum(int(a["refund"]) for a in events_in(ctx, name, result.receipt, "AgreementClosed"))


def close(ctx: OpsContext, agreement_id: int) -> CloseOutcome:
    """Consumer: request the close if not yet requested, then close once closeAt + the settlement grace has passed.

    The first call only starts the notice (closeAt = now + notice period); call again from ``closable_from``:
    readings signed by closeAt keep settling until then, so a late relay cannot be cut off by the close.
    """
    name = _holder(ctx, agreement_id)
    billing = ctx.contract(name)
    view = agreement_of(ctx, agreement_id)
    txs: list[TxResult] = []
    close_at = view.close_at
    if close_at == 0 and view.status in ("active", "suspended"):
        txs.append(transact(ctx, billing.functions.requestClose(agreement_id), name))
        close_at = agreement_of(ctx, agreement_id).close_at
    opens = closable_from(ctx, agreement_id, close_at)
    now = int(ctx.w3.eth.get_block("latest")["timestamp"])
    if txs and opens > now:
        return CloseOutcome(False, close_at, opens, 0, tuple(txs))
    # Otherwise let the contract decide: an early or unauthorised close comes back as a decoded sentence.
    result = transact(ctx, billing.functions.close(agreement_id), name)
    txs.append(result)
    return CloseOutcome(True, close_at, opens, _refund_in(ctx, name, result), tuple(txs))


def close_with_reading(ctx: OpsContext, event: SignedEvent) -> CloseOutcome:
    """Consumer: settle a fresh final reading (signed within the clock skew of now) and end the agreement now,
    without the notice period. Nothing is refunded yet: a newer reading signed before this call may still be on
    its way and settles during the grace, so the refund comes from :func:`close` from ``closable_from``.

    Direct mode only: an optimistic agreement's readings reach the chain in batches, so it ends with the notice."""
    agreement_id = int(event.target_id)
    _direct_only(agreement_id, "end on a final reading")
    result = transact(ctx, ctx.contract(CONTRACT).functions.closeWithReading(reading_tuple(event)), CONTRACT)
    close_at = agreement_of(ctx, agreement_id).close_at
    return CloseOutcome(False, close_at, closable_from(ctx, agreement_id, close_at), 0, (result,))


def _direct_only(agreement_id: int, what: str) -> None:
    if contract_of(agreement_id) == OPTIMISTIC:
        raise ProtocolError(
            f"agreement {hex(agreement_id)} is optimistic: it cannot {what}; its readings are committed in batches "
            "by the oracle ([optimistic] enabled) and claimed after the challenge window"
        )


def list_agreements(ctx: OpsContext, *, party: str | None = None, device: str | None = None) -> list[AgreementView]:
    """Agreements of both modes, from each contract's AgreementOffered events (direct ones first)."""
    views: list[AgreementView] = []
    for name in (CONTRACT, OPTIMISTIC):
        if not ctx.has(name):
            continue
        for entry in fetch_logs(ctx, name, ["AgreementOffered"]):
            a = entry.args
            if party and to_checksum_address(party) not in (a["provider"], a["consumer"]):
                continue
            if device and to_checksum_address(device) != a["device"]:
                continue
            views.append(agreement_of(ctx, int(a["agreementId"])))
    return views


def reading_tuple(event: SignedEvent) -> tuple[Any, ...]:
    """The SignedReading struct for a decoded wire event (65-byte signature → ERC-2098 r, vs)."""
    if event.type != "reading":
        raise ProtocolError(f"this is a {event.type} event, not a reading")
    return event.contract_tuple()


def packed_readings(events: Sequence[SignedEvent]) -> bytes:
    """The packed batch ``settle`` takes (``iotsettle.oracle.protocol.packed``); ProtocolError for a reading whose
    seq or timestamp is beyond 2^40 or whose value is beyond 2^64 (the contract would refuse it)."""
    items = []
    for event in events:
        *fields, r, vs = reading_tuple(event)
        try:
            items.append(pack_item("reading", fields, r, vs))
        except ValueError as exc:
            raise ProtocolError(f"reading seq {event.msg['seq']} cannot be settled: {exc}") from None
    return b"".join(items)


def parse_readings(ctx: OpsContext, text: str) -> list[SignedEvent]:
    """Wire payloads (one JSON object per line, or one pretty-printed object) checked against this deployment;
    readings of optimistic agreements are refused (the oracle commits them in batches)."""
    return parse_payloads(
        ctx, text, "reading", CONTRACT, "agreement settle", lambda e: _direct_only(int(e.target_id), "be relayed here")
    )


@dataclass(frozen=True)
class Settlement:
    agreement_id: int
    seq: int
    settled: bool
    reason: str
    amount: int = 0


def settle(ctx: OpsContext, events: list[SignedEvent]) -> tuple[TxResult, list[Settlement]]:
    """Relay signed readings: one with ``settleReading`` (refusal → decoded revert), several in one ``settle`` batch."""
    billing = ctx.contract(CONTRACT)
    if len(events) == 1:
        result = transact(ctx, billing.functions.settleReading(reading_tuple(events[0])), CONTRACT)
    else:
        result = transact(ctx, billing.functions.settle(packed_readings(events)), CONTRACT)
    outcomes = [
        Settlement(r.agreement_id, r.seq, True, "", r.amount)
        for a in events_in(ctx, CONTRACT, result.receipt, settled.EVENT)
        for r in settled.decode_records(bytes(a["records"]))
    ]
    outcomes += [
        Settlement(int(a["agreementId"]), int(a["seq"]), False, reason_label(int(a["reason"])))
        for a in events_in(ctx, CONTRACT, result.receipt, "ReadingRejected")
    ]
    return result, outcomes


def offer_many(ctx: OpsContext, offers: list[dict[str, Any]]) -> list[int]:
    """Several ``offer`` calls back to back (bulk set-up); returns the agreement ids in order."""
    billing = ctx.contract(CONTRACT)
    calls = [
        billing.functions.offer(
            o["consumer"], o["device"], o["tariff_id"], o["token"].address, o["start_value"], o["notice_period"]
        )
        for o in offers
    ]
    results = transact_many(ctx, calls, CONTRACT, gas=250_000)
    return [int(events_in(ctx, CONTRACT, r.receipt, "AgreementOffered")[0]["agreementId"]) for r in results]


def accept_many(ctx: OpsContext, accepts: list[tuple[int, int, int]]) -> list[TxResult]:
    """Accept several offers, each (agreement id, deposit, start value), in an ERC-20 with prepaid deposits (the
    allowance must already cover them all)."""
    billing = ctx.contract(CONTRACT)
    calls = [billing.functions.accept(i, deposit, start) for i, deposit, start in accepts]
    return transact_many(ctx, calls, CONTRACT, gas=250_000)
