"""DeliveryEscrow operations: create (funds it), status, list, relay a signed delivery, refund, cancel, withdraw."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from eth_utils import to_checksum_address
from iotsettle.oracle.chain.revert import reason_label
from iotsettle.oracle.ops.context import OpsContext, parse_payloads
from iotsettle.oracle.ops.events import fetch_logs
from iotsettle.oracle.ops.token import ensure_allowance
from iotsettle.oracle.ops.token_info import TokenInfo, check_eth, describe_token
from iotsettle.oracle.ops.tx import TxResult, events_in, transact, transact_many
from iotsettle.oracle.ops.views import EscrowView, escrow_view
from iotsettle.oracle.protocol import delivery_batch
from iotsettle.oracle.protocol.errors import ChainError, ProtocolError
from iotsettle.oracle.protocol.wire import SignedEvent
from web3.exceptions import ContractLogicError

log = logging.getLogger(__name__)

CONTRACT = "DeliveryEscrow"


def escrow_of(ctx: OpsContext, escrow_id: int) -> EscrowView:
    """The escrow's record; raises ChainError for an escrow that does not exist."""
    raw = ctx.contract(CONTRACT).functions.escrowOf(escrow_id).call()
    return escrow_view(escrow_id, ctx.chain.chain_id, raw)


@dataclass(frozen=True)
class Created:
    escrow_id: int
    tx: TxResult
    approve_tx: TxResult | None


def create(
    ctx: OpsContext,
    *,
    seller: str,
    device: str,
    token: TokenInfo,
    amount: int,
    destination: bytes,
    deadline: int,
    temperature_limit: int = 0,
    penalty_bps: int = 0,
) -> Created:
    """Create and fund an escrow in one transaction (ERC-20: approve first when the allowance is short)."""
    if token.is_eth:
        check_eth(ctx, amount)
        approve = None
    else:
        approve = ensure_allowance(ctx, token, CONTRACT, amount)
    call = ctx.contract(CONTRACT).functions.createEscrow(
        seller, device, token.address, amount, destination, deadline, temperature_limit, penalty_bps
    )
    result = transact(ctx, call, CONTRACT, value=amount if token.is_eth else 0)
    created = events_in(ctx, CONTRACT, result.receipt, "EscrowCreated")
    if not created:
        raise ChainError(f"transaction {result.tx_hash} emitted no EscrowCreated event")
    return Created(int(created[0]["escrowId"]), result, approve)


def approve(ctx: OpsContext, token: TokenInfo, amount: int) -> TxResult | None:
    """Let the escrow contract take ``amount`` of ``token`` from the sender (what ``create`` needs for an ERC-20)."""
    if token.is_eth:
        raise ChainError("ETH escrows are funded with the create transaction itself; nothing to approve")
    return ensure_allowance(ctx, token, CONTRACT, amount)


def list_escrows(ctx: OpsContext, *, party: str | None = None, device: str | None = None) -> list[EscrowView]:
    """Every escrow created on this deployment (from EscrowCreated logs), optionally for one party or device."""
    views: list[EscrowView] = []
    for entry in fetch_logs(ctx, CONTRACT, ["EscrowCreated"]):
        args = entry.args
        if party and to_checksum_address(party) not in (args["buyer"], args["seller"]):
            continue
        if device and to_checksum_address(device) != args["device"]:
            continue
        views.append(escrow_of(ctx, int(args["escrowId"])))
    return views


@dataclass(frozen=True)
class Confirmation:
    escrow_id: int
    seq: int
    confirmed: bool
    reason: str  # "" when confirmed
    to_seller: int = 0
    to_buyer: int = 0


def delivery_tuple(event: SignedEvent) -> tuple[Any, ...]:
    """The SignedDelivery struct for a decoded wire event (65-byte signature → ERC-2098 r, vs)."""
    if event.type != "delivery":
        raise ProtocolError(f"this is a {event.type} event, not a delivery")
    return event.contract_tuple()


def _record(ctx: OpsContext, item: tuple[Any, ...]) -> bytes:
    """A packed batch record; an escrow the contract does not know gets zero terms and is rejected on chain."""
    escrow_id = int(item[0])
    try:
        terms = bytes(ctx.contract(CONTRACT).functions.deliveryTerms(escrow_id).call())
    except ContractLogicError:
        terms = delivery_batch.UNKNOWN_TERMS
    escrow_id, seq, timestamp, location, max_temperature, r, vs = item
    try:
        return delivery_batch.record(
            int(escrow_id), int(seq), int(timestamp), _raw(location), int(max_temperature), _raw(r), _raw(vs), terms
        )
    except ValueError as exc:
        raise ProtocolError(f"delivery for escrow {escrow_id} cannot be relayed: {exc}") from exc


def _raw(value: Any) -> bytes:
    return bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else bytes(value)


def parse_deliveries(ctx: OpsContext, text: str) -> list[SignedEvent]:
    """Wire payloads (one JSON object per line, or one pretty-printed object) checked against this deployment."""
    return parse_payloads(ctx, text, "delivery", CONTRACT, "escrow confirm")


def confirm(ctx: OpsContext, events: list[SignedEvent]) -> tuple[TxResult, list[Confirmation]]:
    """Relay signed deliveries. One is sent with ``confirmDelivery`` (a refusal reverts with a decoded sentence);
    several go in one packed ``confirmDeliveriesPacked`` batch with each escrow's terms, where refused items are
    reported, not reverted."""
    escrow = ctx.contract(CONTRACT)
    if len(events) == 1:
        result = transact(ctx, escrow.functions.confirmDelivery(delivery_tuple(events[0])), CONTRACT)
    else:
        records = [_record(ctx, delivery_tuple(e)) for e in events]
        result = transact(ctx, escrow.functions.confirmDeliveriesPacked(delivery_batch.batch(records)), CONTRACT)
    outcomes = [
        Confirmation(int(a["escrowId"]), int(a["seq"]), True, "", int(a["toSeller"]), int(a["toBuyer"]))
        for a in events_in(ctx, CONTRACT, result.receipt, "DeliveryConfirmed")
    ]
    outcomes += [
        Confirmation(int(a["escrowId"]), int(a["seq"]), False, reason_label(int(a["reason"])))
        for a in events_in(ctx, CONTRACT, result.receipt, "DeliveryRejected")
    ]
    return result, outcomes


def settlement_grace(ctx: OpsContext) -> int:
    """Seconds after the deadline during which a delivery signed by the deadline still confirms and no refund is
    possible (the contract's SETTLEMENT_GRACE)."""
    return int(ctx.contract(CONTRACT).functions.SETTLEMENT_GRACE().call())


def refundable_from(ctx: OpsContext, view: EscrowView) -> int:
    """The first second the buyer may refund: strictly after deadline + the settlement grace."""
    return view.deadline + settlement_grace(ctx) + 1


def refund(ctx: OpsContext, escrow_id: int) -> TxResult:
    """Buyer, once deadline + the settlement grace (1 h) has passed with no delivery confirmed: credit the amount
    back to the buyer (then `withdraw`). A delivery signed by the deadline confirms until the refund, however late
    it is relayed, so an earlier refund is refused (TooEarly)."""
    return transact(ctx, ctx.contract(CONTRACT).functions.refund(escrow_id), CONTRACT)


def cancel(ctx: OpsContext, escrow_id: int) -> TxResult:
    """Seller gives up: credit the buyer."""
    return transact(ctx, ctx.contract(CONTRACT).functions.cancel(escrow_id), CONTRACT)


def withdrawable(ctx: OpsContext, token: TokenInfo, account: str) -> int:
    return int(ctx.contract(CONTRACT).functions.withdrawable(token.address, account).call())


def withdraw(ctx: OpsContext, token: TokenInfo) -> tuple[TxResult, int]:
    """Pay the sender everything credited to it in ``token``; returns the transaction and the amount."""
    result = transact(ctx, ctx.contract(CONTRACT).functions.withdraw(token.address), CONTRACT)
    paid = sum(int(a["amount"]) for a in events_in(ctx, CONTRACT, result.receipt, "Withdrawn"))
    return result, paid


def token_of(ctx: OpsContext, view: EscrowView) -> TokenInfo:
    return describe_token(ctx, view.token)


def create_many(ctx: OpsContext, escrows: list[dict[str, Any]]) -> list[int]:
    """Several ERC-20 escrows back to back (bulk set-up; the allowance must already cover them); returns the ids."""
    contract = ctx.contract(CONTRACT)
    calls = [
        contract.functions.createEscrow(
            e["seller"],
            e["device"],
            e["token"].address,
            e["amount"],
            e["destination"],
            e["deadline"],
            e["temperature_limit"],
            e["penalty_bps"],
        )
        for e in escrows
    ]
    results = transact_many(ctx, calls, CONTRACT, gas=400_000)
    return [int(events_in(ctx, CONTRACT, r.receipt, "EscrowCreated")[0]["escrowId"]) for r in results]
