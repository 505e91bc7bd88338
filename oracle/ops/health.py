"""HealthInsurance operations: offer/accept, top-up, close, earnings, relaying summaries, and each holder's tiers.

The premium is derived on chain from the clock and the settled tiers (contracts/interfaces/IHealthInsurance.sol,
docs/products/health-insurance.md)::

    discount(t)  = baseRate × discountBps[t] // 10_000
    premium      = Σ over the periods that are over (baseRate − discount(best settled tier of the period))
                   (a period with no summary costs baseRate)

so it is the same whichever summaries were relayed, in whatever order and batches, once they all are.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from eth_utils import to_checksum_address
from iotsettle.oracle.chain.revert import RejectReason, reason_of
from iotsettle.oracle.device.activity import Thresholds, thresholds_of
from iotsettle.oracle.ops._product import Sentences, named, state_name, transact_explained, when
from iotsettle.oracle.ops.context import OpsContext, parse_payloads
from iotsettle.oracle.ops.events import fetch_logs
from iotsettle.oracle.ops.token import ensure_allowance
from iotsettle.oracle.ops.token_info import TokenInfo, describe_token
from iotsettle.oracle.ops.tx import TxResult, events_in
from iotsettle.oracle.ops.vocabulary import HEALTH_POLICY_STATUSES
from iotsettle.oracle.protocol.errors import ChainError, ProtocolError
from iotsettle.oracle.protocol.packed import pack_item
from iotsettle.oracle.protocol.wire import SignedEvent

log = logging.getLogger(__name__)

CONTRACT = "HealthInsurance"
BPS = 10_000
#: a SummarySettled for a period that had no summary before reports its previous tier as this
NO_TIER = 255


def discount_of(base_rate: int, discount_bps: int) -> int:
    """What a summary of a tier with ``discount_bps`` gives back of one period's base rate (rounded down)."""
    return base_rate * discount_bps // BPS


def premium_of(base_rate: int, discount_bps: Sequence[int], due_periods: int, tiers: Sequence[int | None]) -> int:
    """The premium of ``due_periods`` periods whose best settled tiers are ``tiers`` (None: no summary)."""
    return sum(
        base_rate - (0 if tier is None else discount_of(base_rate, discount_bps[tier])) for tier in tiers[:due_periods]
    ) + base_rate * max(0, due_periods - len(tiers))


# ------------------------------------------------------------------------------------------------ views


@dataclass(frozen=True)
class HealthPolicyView:
    policy_id: int
    insurer: str
    holder: str
    wearable: str
    token: str
    status: str
    start: int
    base_rate: int
    period_length: int
    periods: int
    discount_bps: tuple[int, int, int, int]
    min_steps: tuple[int, int, int]
    min_active_minutes: tuple[int, int, int]
    tier_counts: tuple[int, int, int, int]
    due_periods: int
    premium: int
    deposited: int
    prepaid: int
    arrears: int
    refunded: int
    withdrawn: int
    earnings: int

    @property
    def end(self) -> int:
        return self.start + self.period_length * self.periods if self.start else 0

    @property
    def thresholds(self) -> Thresholds:
        return thresholds_of(self.min_steps, self.min_active_minutes)

    @property
    def summarised(self) -> int:
        return sum(self.tier_counts)

    @property
    def discounts(self) -> int:
        """What the settled summaries gave back so far."""
        return sum(n * discount_of(self.base_rate, d) for n, d in zip(self.tier_counts, self.discount_bps, strict=True))

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("policy_id", "base_rate", "premium", "deposited", "prepaid", "arrears", "refunded", "withdrawn"):
            out[key] = str(out[key])
        out["earnings"] = str(self.earnings)
        out["policy_id_hex"] = hex(self.policy_id)
        out["end"] = self.end
        out["summarised"] = self.summarised
        out["discounts"] = str(self.discounts)
        return out


def policy_of(ctx: OpsContext, policy_id: int) -> HealthPolicyView:
    health = ctx.contract(CONTRACT)
    p = named(health.abi, "policyOf", health.functions.policyOf(policy_id).call())
    status = int(p["status"])
    if status == 0:
        raise ChainError(f"health policy {hex(policy_id)} does not exist on chain {ctx.chain.chain_id}")
    t = p["terms"]
    return HealthPolicyView(
        policy_id,
        p["insurer"],
        p["holder"],
        p["wearable"],
        p["token"],
        state_name(HEALTH_POLICY_STATUSES, status),
        int(p["start"]),
        int(t["baseRate"]),
        int(t["periodLength"]),
        int(t["periods"]),
        tuple(int(d) for d in t["discountBps"]),  # type: ignore[arg-type]  # four by the ABI
        tuple(int(s) for s in t["minSteps"]),  # type: ignore[arg-type]  # three by the ABI
        tuple(int(m) for m in t["minActiveMinutes"]),  # type: ignore[arg-type]  # three by the ABI
        tuple(int(n) for n in p["tierCounts"]),  # type: ignore[arg-type]  # four by the ABI
        int(p["duePeriods"]),
        int(p["premium"]),
        int(p["deposited"]),
        int(p["prepaid"]),
        int(p["arrears"]),
        int(p["refunded"]),
        int(p["withdrawn"]),
        int(p["earnings"]),
    )


@dataclass(frozen=True)
class PeriodTier:
    """One period of a policy: whether a summary settled, its best tier, and what the period costs."""

    period: int
    start: int
    due: bool
    tier: int | None
    cost: int

    def as_dict(self) -> dict[str, Any]:
        return {"period": self.period, "start": self.start, "due": self.due, "tier": self.tier, "cost": str(self.cost)}


def tiers(ctx: OpsContext, policy_id: int, view: HealthPolicyView | None = None) -> list[PeriodTier]:
    """Every period of a policy up to the last one over (and the one running), with its best settled tier."""
    view = view or policy_of(ctx, policy_id)
    health = ctx.contract(CONTRACT)
    shown = min(view.periods, view.due_periods + 1) if view.start else 0
    out = []
    for period in range(shown):
        summarised, tier = health.functions.tierOf(policy_id, period).call()
        best = int(tier) if summarised else None
        due = period < view.due_periods
        cost = view.base_rate - (0 if best is None else discount_of(view.base_rate, view.discount_bps[best]))
        out.append(PeriodTier(period, view.start + period * view.period_length, due, best, cost if due else 0))
    return out


def list_policies(ctx: OpsContext, *, party: str | None = None, wearable: str | None = None) -> list[HealthPolicyView]:
    """Health policies of this deployment (from PolicyOffered events), optionally of one party or wearable."""
    views = []
    for entry in fetch_logs(ctx, CONTRACT, ["PolicyOffered"]):
        a = entry.args
        if party and to_checksum_address(party) not in (a["insurer"], a["holder"]):
            continue
        if wearable and to_checksum_address(wearable) != a["wearable"]:
            continue
        views.append(policy_of(ctx, int(a["policyId"])))
    return views


# ------------------------------------------------------------------------------------------------ sentences


def _status_sentence(a: dict[str, Any]) -> str:
    status = state_name(HEALTH_POLICY_STATUSES, int(a["status"]))
    if status == "offered":
        return f"health policy {hex(a['policyId'])} is only offered: the holder has not accepted it yet"
    return f"health policy {hex(a['policyId'])} is {status}, which does not allow this"


def _too_early(a: dict[str, Any]) -> str:
    wait = int(a["notBefore"]) - int(a["timestamp"])
    return f"health policy {hex(a['id'])} ends at {when(a['notBefore'])}, {wait} s from now: it can be closed from then"


SENTENCES: Sentences = {
    "UnknownPolicy": lambda a: f"health policy {hex(a['policyId'])} does not exist",
    "NotInsurer": lambda a: f"only the insurer of health policy {hex(a['policyId'])} may do this, not {a['caller']}",
    "NotHolder": lambda a: f"only the holder of health policy {hex(a['policyId'])} may do this, not {a['caller']}",
    "NotParty": lambda a: (
        f"only the holder or the insurer of health policy {hex(a['id'])} may do this, not {a['caller']}"
    ),
    "WrongStatus": _status_sentence,
    "ZeroRate": lambda a: "the base rate per period must be more than zero",
    "ZeroAmount": lambda a: "the amount must be more than zero",
    "InvalidPeriods": lambda a: (
        f"a policy needs a period length above 0 s and 1 … 1008 periods, not {a['periodLength']} s × {a['periods']}"
    ),
    "InvalidDiscounts": lambda a: (
        f"the tier discounts {list(a['discountBps'])} (basis points) must not fall from tier 0 to 3 nor pass 10000"
    ),
    "InvalidThresholds": lambda a: (
        f"the thresholds (steps {list(a['minSteps'])}, active minutes {list(a['minActiveMinutes'])}) must not fall "
        "from tier 1 to 3"
    ),
    "TooEarly": _too_early,
    "NoEarnings": lambda a: (
        f"health policy {hex(a['policyId'])} has nothing to withdraw yet: the insurer takes each period's premium at "
        "the best tier's price once the period is over"
    ),
    "NothingToWithdraw": lambda a: f"{a['account']} has nothing credited by the health policies in {a['token']}",
    "WrongDeviceKind": lambda a: f"{a['device']} is not a wearable: health policies are priced by a WEARABLE device",
}

#: why an activity summary was skipped, in the policyholder's words
REJECTIONS: dict[RejectReason, str] = {
    RejectReason.UNKNOWN_KEY: "signed by a key that was never registered",
    RejectReason.WRONG_DEVICE: "signed by another device than the policy's wearable",
    RejectReason.WRONG_DEVICE_KIND: "signed by a device that is not a wearable",
    RejectReason.UNKNOWN_TARGET: "no such health policy",
    RejectReason.NOT_ACTIVE: "the policy is only offered, or was cancelled",
    RejectReason.REPLAYED: "the period already has a summary of this tier or a better one",
    RejectReason.TIMESTAMP_IN_FUTURE: "the period is not over yet on chain, or the summary is dated ahead of it",
    RejectReason.TIMESTAMP_TOO_OLD: "signed before its period ended",
    RejectReason.VALUE_OUT_OF_RANGE: "the tier is above 3",
    RejectReason.AFTER_END: "the period is beyond the policy's last one",
}


def rejection_sentence(code: int) -> str:
    reason = reason_of(code)
    if reason is None:
        return f"rejected with reason code {code}"
    return REJECTIONS.get(reason, reason.sentence)


def _send(ctx: OpsContext, call: Any) -> TxResult:
    return transact_explained(ctx, call, CONTRACT, SENTENCES)


# ------------------------------------------------------------------------------------------------ actions


@dataclass(frozen=True)
class Terms:
    """What the insurer fixes at the offer, for the life of the policy."""

    holder: str
    wearable: str
    token: TokenInfo
    base_rate: int
    period_length: int
    periods: int
    discount_bps: tuple[int, int, int, int]
    thresholds: Thresholds

    def as_tuple(self) -> tuple[Any, ...]:
        """The contract's Terms struct."""
        return (
            self.base_rate,
            self.period_length,
            self.periods,
            list(self.discount_bps),
            list(self.thresholds.min_steps),
            list(self.thresholds.min_active_minutes),
        )


#: default tiers: 0 %, 10 %, 20 %, 35 % off (the thresholds: ``device.activity.WEEKLY_THRESHOLDS``)
DEFAULT_DISCOUNTS = (0, 1_000, 2_000, 3_500)


def offer(ctx: OpsContext, terms: Terms) -> tuple[int, TxResult]:
    """Insurer (the sender) offers the policy; returns its id."""
    if terms.token.is_eth:
        raise ChainError("health policies are paid in an ERC-20 token, not ETH")
    call = ctx.contract(CONTRACT).functions.offer(terms.holder, terms.wearable, terms.token.address, terms.as_tuple())
    result = _send(ctx, call)
    return int(events_in(ctx, CONTRACT, result.receipt, "PolicyOffered")[0]["policyId"]), result


def _approve(ctx: OpsContext, view: HealthPolicyView, amount: int) -> None:
    ensure_allowance(ctx, describe_token(ctx, view.token), CONTRACT, amount)


def accept(ctx: OpsContext, policy_id: int, deposit: int) -> TxResult:
    """Holder (the sender) accepts and prepays ``deposit``: period 0 starts now."""
    _approve(ctx, policy_of(ctx, policy_id), deposit)
    return _send(ctx, ctx.contract(CONTRACT).functions.accept(policy_id, deposit))


def top_up(ctx: OpsContext, policy_id: int, amount: int) -> TxResult:
    _approve(ctx, policy_of(ctx, policy_id), amount)
    return _send(ctx, ctx.contract(CONTRACT).functions.topUp(policy_id, amount))


def cancel_offer(ctx: OpsContext, policy_id: int) -> TxResult:
    return _send(ctx, ctx.contract(CONTRACT).functions.cancelOffer(policy_id))


def close(ctx: OpsContext, policy_id: int) -> tuple[TxResult, int, bool]:
    """Anyone, once the last period is over: returns the refund and whether it was credited instead of sent."""
    result = _send(ctx, ctx.contract(CONTRACT).functions.close(policy_id))
    refund = sum(int(a["refund"]) for a in events_in(ctx, CONTRACT, result.receipt, "PolicyClosed"))
    credited = bool(events_in(ctx, CONTRACT, result.receipt, "Credited"))
    return result, refund, credited


def withdraw_earnings(ctx: OpsContext, policy_id: int) -> tuple[TxResult, int]:
    """Insurer takes the premium no later summary can take back."""
    result = _send(ctx, ctx.contract(CONTRACT).functions.withdrawEarnings(policy_id))
    return result, sum(int(a["amount"]) for a in events_in(ctx, CONTRACT, result.receipt, "EarningsWithdrawn"))


def withdraw_credit(ctx: OpsContext, token: TokenInfo) -> tuple[TxResult, int]:
    """The sender takes what the health policies credited it in ``token`` (late discounts, failed refunds)."""
    result = _send(ctx, ctx.contract(CONTRACT).functions.withdraw(token.address))
    return result, sum(int(a["amount"]) for a in events_in(ctx, CONTRACT, result.receipt, "Withdrawn"))


def credited(ctx: OpsContext, token: TokenInfo, account: str) -> int:
    return int(ctx.contract(CONTRACT).functions.withdrawable(token.address, account).call())


# ------------------------------------------------------------------------------------------------ summaries


def parse_summaries(ctx: OpsContext, text: str) -> list[SignedEvent]:
    """Wire payloads (one JSON object per line, or one object) checked against this deployment."""
    return parse_payloads(ctx, text, "activity", CONTRACT, "policy health settle")


@dataclass(frozen=True)
class SummaryOutcome:
    policy_id: int
    seq: int
    settled: bool
    reason: str = ""
    period: int = 0
    tier: int = 0


def packed_summaries(events: Sequence[SignedEvent]) -> bytes:
    """The packed batch ``settle`` takes (``iotsettle.oracle.protocol.packed``)."""
    items = []
    for event in events:
        *fields, r, vs = event.contract_tuple()
        try:
            items.append(pack_item("activity", [int(f) for f in fields], bytes(r), bytes(vs)))
        except ValueError as exc:
            raise ProtocolError(f"summary seq {event.msg['seq']} cannot be settled: {exc}") from None
    return b"".join(items)


def settle(ctx: OpsContext, events: list[SignedEvent]) -> tuple[TxResult, list[SummaryOutcome]]:
    """Relay signed activity summaries in one batch; bad items are skipped on chain with a reason.

    Raises ChainError when none was settled (the transaction then changed nothing).
    """
    for event in events:
        if event.type != "activity":
            raise ProtocolError(f"payload seq {event.seq} is a {event.type}, not an activity summary")
    result = _send(ctx, ctx.contract(CONTRACT).functions.settle(packed_summaries(events)))
    outcomes = [
        SummaryOutcome(int(a["policyId"]), int(a["seq"]), True, "", int(a["period"]), int(a["tier"]))
        for a in events_in(ctx, CONTRACT, result.receipt, "SummarySettled")
    ]
    outcomes += [
        SummaryOutcome(int(a["policyId"]), int(a["seq"]), False, rejection_sentence(int(a["reason"])))
        for a in events_in(ctx, CONTRACT, result.receipt, "SummaryRejected")
    ]
    if outcomes and not any(o.settled for o in outcomes):
        first = outcomes[0]
        more = f" (and {len(outcomes) - 1} more)" if len(outcomes) > 1 else ""
        raise ChainError(f"no summary settled: seq {first.seq} for policy {hex(first.policy_id)}: {first.reason}{more}")
    return result, outcomes
