"""MotorInsurance operations: offer/accept, top-up, close, premiums, and the history that explains each rate.

The premium is priced on the totals since the offer (contracts/interfaces/IMotorInsurance.sol,
docs/products/motor-insurance.md)::

    M = odometer − startOdometer;   E = harsh braking + speeding − (startHarsh + startSpeeding)
    F(M, E) = ratePerKm × min(M × minFactor + E × step × 100_000, M × maxFactor) / 10_000_000
    charge of a report = floor(F(its totals)) − floor(F(the last settled report's totals))
    factor shown       = M == 0: (E × step == 0 ? minFactor : maxFactor);
                         otherwise min(minFactor + E × step × 100_000 / M, maxFactor)

so a policy's premiums add up to floor(F) of its newest settled report, whichever reports were relayed.
:func:`explain_factor` turns the totals of a ``PremiumCharged`` event back into that sentence for the policyholder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from eth_utils import to_checksum_address
from iotsettle.oracle.chain.revert import RejectReason, reason_of
from iotsettle.oracle.ops._product import Sentences, named, state_name, transact_explained, when
from iotsettle.oracle.ops.context import OpsContext, parse_payloads
from iotsettle.oracle.ops.events import fetch_logs
from iotsettle.oracle.ops.token import ensure_allowance
from iotsettle.oracle.ops.token_info import TokenInfo, describe_token
from iotsettle.oracle.ops.tx import TxResult, events_in
from iotsettle.oracle.ops.vocabulary import POLICY_STATUSES
from iotsettle.oracle.protocol import batch_tree
from iotsettle.oracle.protocol.errors import ChainError, ProtocolError
from iotsettle.oracle.protocol.packed import UNKNOWN_TERMS, pack_item
from iotsettle.oracle.protocol.wire import SignedEvent
from web3.exceptions import ContractLogicError

log = logging.getLogger(__name__)

CONTRACT = "MotorInsurance"
OPTIMISTIC = "OptimisticMotor"
MODES = ("direct", "optimistic")


def contract_of(policy_id: int) -> str:
    """The contract holding ``policy_id``: OptimisticMotor's ids carry bit 63 (``batch_tree.AGREEMENT_ID_FLAG``)."""
    return OPTIMISTIC if batch_tree.is_optimistic(policy_id) else CONTRACT


def _holder(ctx: OpsContext, policy_id: int) -> str:
    """:func:`contract_of`, checked against the deployment (a manifest from before the optimistic mode lacks it)."""
    name = contract_of(policy_id)
    if not ctx.has(name):
        raise ChainError(f"policy {hex(policy_id)} is an {name} id, and this deployment has no {name}")
    return name


BPS = 10_000
METRES_PER_KM = 1_000
STEP_DISTANCE_METRES = 100_000  # one step of the factor per event per 100 km
MAX_FACTOR_BPS = 50_000


def factor_text(bps: int) -> str:
    """``15000`` → ``×1.50``; more decimals only when the factor has them (``×0.905``)."""
    text = f"{Decimal(bps) / BPS:.4f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"×{whole}.{frac.ljust(2, '0')}"


def _km(metres: int) -> str:
    return (
        f"{Decimal(metres) / METRES_PER_KM:.1f}".rstrip("0").rstrip(".")
        if metres % 100 == 0
        else f"{Decimal(metres) / METRES_PER_KM:.3f}".rstrip("0").rstrip(".")
    )


def _events(n: int) -> str:
    return f"{n} event" if n == 1 else f"{n} events"


def explain_factor(metres: int, events: int, factor_bps: int, min_bps: int, max_bps: int, step_bps: int) -> str:
    """Why the premium so far is priced at ``factor_bps``, from the totals since the offer (``metres``, ``events``):
    "totals since the offer: 13 events in 101 km = 12.9 per 100 km → ×1.00 + 12.9 × 0.05 = ×1.6435"."""
    head = "totals since the offer:"
    if metres == 0:
        if events == 0 or step_bps == 0:
            return f"{head} no distance yet → {factor_text(factor_bps)}, nothing charged"
        return (
            f"{head} {_events(events)} with no distance yet → {factor_text(max_bps)} (cap), nothing charged "
            "until the distance follows"
        )
    if events == 0:
        return f"{head} no events in {_km(metres)} km → {factor_text(min_bps)} (the floor: full discount)"
    per_100km = Decimal(events * STEP_DISTANCE_METRES) / metres
    raw = min_bps + events * step_bps * STEP_DISTANCE_METRES // metres
    head = f"{head} {_events(events)} in {_km(metres)} km = {per_100km:.1f} per 100 km"
    if raw >= max_bps:
        return f"{head} → {factor_text(max_bps)} (cap)"
    step = f"{Decimal(step_bps) / BPS:.2f}"
    return f"{head} → {factor_text(min_bps)} + {per_100km:.1f} × {step} = {factor_text(factor_bps)}"


def factor_of(metres: int, events: int, min_bps: int, max_bps: int, step_bps: int) -> int:
    """The factor of the totals since the offer, as ``PremiumCharged`` reports it."""
    extra = events * step_bps * STEP_DISTANCE_METRES
    if metres == 0:
        return min_bps if extra == 0 else max_bps
    return min(min_bps + extra // metres, max_bps)


def premium(metres: int, events: int, min_bps: int, max_bps: int, step_bps: int, rate_per_km: int) -> int:
    """floor(F(metres, events)): everything a policy with these totals since the offer has cost."""
    weighted = min(metres * min_bps + events * step_bps * STEP_DISTANCE_METRES, metres * max_bps)
    return weighted * rate_per_km // (METRES_PER_KM * BPS)


# ------------------------------------------------------------------------------------------------ views


@dataclass(frozen=True)
class PolicyView:
    policy_id: int
    insurer: str
    holder: str
    vehicle: str
    token: str
    rate_per_km: int
    min_factor_bps: int
    max_factor_bps: int
    step_bps: int
    status: str
    notice_period: int
    close_at: int
    start_odometer: int
    last_odometer: int
    last_harsh: int
    last_speeding: int
    last_seq: int
    last_timestamp: int
    last_factor_bps: int
    prepaid: int
    arrears: int
    charged: int
    withdrawn: int
    deposited: int
    refunded: int
    #: the unit's behaviour counters at the offer (cumulative since installation); events are counted from here
    start_harsh: int
    start_speeding: int

    @property
    def earnings_to_withdraw(self) -> int:
        return self.charged - self.withdrawn

    @property
    def current_rate(self) -> int:
        """Base units per km at the factor of the last settled report."""
        return self.rate_per_km * self.last_factor_bps // BPS

    @property
    def harsh_since_offer(self) -> int:
        return self.last_harsh - self.start_harsh

    @property
    def speeding_since_offer(self) -> int:
        return self.last_speeding - self.start_speeding

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("policy_id", "rate_per_km", "prepaid", "arrears", "charged", "withdrawn", "deposited", "refunded"):
            out[key] = str(out[key])
        out["policy_id_hex"] = hex(self.policy_id)
        out["mode"] = "optimistic" if batch_tree.is_optimistic(self.policy_id) else "direct"
        out["earnings_to_withdraw"] = str(self.earnings_to_withdraw)
        out["current_factor"] = factor_text(self.last_factor_bps)
        out["current_rate_per_km"] = str(self.current_rate)
        out["km_driven"] = (self.last_odometer - self.start_odometer) / METRES_PER_KM
        out["harsh_since_offer"] = self.harsh_since_offer
        out["speeding_since_offer"] = self.speeding_since_offer
        return out


def policy_of(ctx: OpsContext, policy_id: int) -> PolicyView:
    motor = ctx.contract(_holder(ctx, policy_id))
    p = named(motor.abi, "policyOf", motor.functions.policyOf(policy_id).call())
    status = int(p["status"])
    if status == 0:
        raise ChainError(f"policy {hex(policy_id)} does not exist on chain {ctx.chain.chain_id}")
    return PolicyView(
        policy_id,
        p["insurer"],
        p["holder"],
        p["vehicle"],
        p["token"],
        int(p["ratePerKm"]),
        int(p["minFactorBps"]),
        int(p["maxFactorBps"]),
        int(p["stepBps"]),
        state_name(POLICY_STATUSES, status),
        int(p["noticePeriod"]),
        int(p["closeAt"]),
        int(p["startOdometer"]),
        int(p["lastOdometer"]),
        int(p["lastHarsh"]),
        int(p["lastSpeeding"]),
        int(p["lastSeq"]),
        int(p["lastTimestamp"]),
        int(p["lastFactorBps"]),
        int(p["prepaid"]),
        int(p["arrears"]),
        int(p["charged"]),
        int(p["withdrawn"]),
        int(p.get("deposited", 0)),
        int(p.get("refunded", 0)),
        int(p["startHarsh"]),
        int(p["startSpeeding"]),
    )


def list_policies(ctx: OpsContext, *, party: str | None = None, vehicle: str | None = None) -> list[PolicyView]:
    """Policies of this deployment in both modes (from each contract's PolicyOffered events, direct ones first),
    optionally where ``party`` is insurer or holder."""
    views = []
    for name in (CONTRACT, OPTIMISTIC):
        if not ctx.has(name):
            continue
        for entry in fetch_logs(ctx, name, ["PolicyOffered"]):
            a = entry.args
            if party and to_checksum_address(party) not in (a["insurer"], a["holder"]):
                continue
            if vehicle and to_checksum_address(vehicle) != a["vehicle"]:
                continue
            views.append(policy_of(ctx, int(a["policyId"])))
    return views


# ------------------------------------------------------------------------------------------------ sentences


def _status_sentence(a: dict[str, Any]) -> str:
    status = state_name(POLICY_STATUSES, int(a["status"]))
    if status == "offered":
        return f"policy {hex(a['policyId'])} is only offered: the holder has not accepted it yet"
    if status == "lapsed":
        return f"policy {hex(a['policyId'])} is lapsed for arrears; a top-up reinstates it"
    return f"policy {hex(a['policyId'])} is {status}, which does not allow this"


def _too_early(a: dict[str, Any]) -> str:
    wait = int(a["notBefore"]) - int(a["timestamp"])
    return (
        f"policy {hex(a['id'])} can be closed from {when(a['notBefore'])}, {wait} s from now (the notice, then "
        "a grace for reports signed before the end); close it after that"
    )


def _start_mismatch(a: dict[str, Any]) -> str:
    return (
        f"policy {hex(a['policyId'])} is priced from odometer {int(a['startOdometer']):,} m, "
        f"{a['startHarsh']} harsh braking, {a['startSpeeding']} speeding; the acceptance named "
        f"{int(a['acceptedOdometer']):,} m, {a['acceptedHarsh']} harsh braking, {a['acceptedSpeeding']} speeding"
    )


SENTENCES: Sentences = {
    "UnknownPolicy": lambda a: f"policy {hex(a['policyId'])} does not exist",
    "NotInsurer": lambda a: f"only the insurer of policy {hex(a['policyId'])} may do this, not {a['caller']}",
    "NotHolder": lambda a: f"only the holder of policy {hex(a['policyId'])} may do this, not {a['caller']}",
    "NotParty": lambda a: f"only the holder or the insurer of policy {hex(a['id'])} may do this, not {a['caller']}",
    "WrongStatus": _status_sentence,
    "InvalidFactorBounds": lambda a: (
        f"the factor bounds {factor_text(a['minFactorBps'])} … "
        f"{factor_text(a['maxFactorBps'])} are invalid: they need 0 < min ≤ max ≤ "
        f"{factor_text(MAX_FACTOR_BPS)}"
    ),
    "ZeroRate": lambda a: "the rate per km must be more than zero",
    "ZeroAmount": lambda a: "the amount must be more than zero",
    "CloseNotRequested": lambda a: (
        f"policy {hex(a['id'])} has no close request; the holder or the insurer runs "
        "`iotsettle policy request-close` first"
    ),
    "TooEarly": _too_early,
    "StartRegistersMismatch": _start_mismatch,
    "NoEarnings": lambda a: f"policy {hex(a['id'])} has no earned premiums left to withdraw",
    "NothingToWithdraw": lambda a: f"{a['account']} has no refund credited by the motor policies in {a['token']}",
}

#: why a telematics report was skipped, in the policyholder's words
REJECTIONS: dict[RejectReason, str] = {
    RejectReason.SIGNATURE_INVALID: "the signature does not recover to an address",
    RejectReason.SIGNATURE_MALLEABLE: "the signature is malleable (high s)",
    RejectReason.UNKNOWN_KEY: "signed by a key that was never registered",
    RejectReason.KEY_ROTATED: "signed by a key the vehicle has rotated out",
    RejectReason.DEVICE_REVOKED: "the vehicle's device was revoked",
    RejectReason.WRONG_DEVICE: "signed by another device than the policy's vehicle",
    RejectReason.WRONG_DEVICE_KIND: "signed by a device that is not a vehicle",
    RejectReason.UNKNOWN_TARGET: "no such policy",
    RejectReason.NOT_ACTIVE: "the policy is not active (offered, closed or cancelled)",
    RejectReason.REPLAYED: "already settled or superseded (seq not above the last settled one)",
    RejectReason.TIMESTAMP_IN_FUTURE: "dated too far ahead of the chain's clock",
    RejectReason.TIMESTAMP_TOO_OLD: "dated before the last settled report or the policy's acceptance",
    RejectReason.COUNTER_ROLLBACK: (
        "the odometer or an event counter went below the last settled value (before the "
        "first report: the value fixed by the offer)"
    ),
    RejectReason.VALUE_OUT_OF_RANGE: "a value does not fit on chain",
    RejectReason.SUSPENDED: "the policy is lapsed for arrears; a top-up reinstates it",
    RejectReason.AFTER_END: "signed after the policy's end (its closeAt): not the policy's driving",
}


def rejection_sentence(code: int) -> str:
    reason = reason_of(code)
    if reason is None:
        return f"rejected with reason code {code}"
    return REJECTIONS.get(reason, reason.sentence)


def _send(ctx: OpsContext, call: Any, name: str = CONTRACT) -> TxResult:
    return transact_explained(ctx, call, name, SENTENCES)


# ------------------------------------------------------------------------------------------------ actions


@dataclass(frozen=True)
class Terms:
    """What the insurer fixes at the offer; the factor bounds never change for the life of the policy."""

    holder: str
    vehicle: str
    token: TokenInfo
    rate_per_km: int
    min_factor_bps: int
    max_factor_bps: int
    step_bps: int
    start_odometer: int = 0
    notice_period: int = 0
    #: the unit's cumulative harsh-braking and speeding counts now: the first period pays only for events after them
    start_harsh: int = 0
    start_speeding: int = 0


def offer(ctx: OpsContext, terms: Terms, mode: str = "direct") -> tuple[int, TxResult]:
    """Insurer (the sender) offers the policy in ``mode`` (one of :data:`MODES`: the contract that will hold it,
    chosen once); returns its id."""
    if terms.token.is_eth:
        raise ChainError("motor policies are paid in an ERC-20 token, not ETH")
    name = OPTIMISTIC if mode == "optimistic" else CONTRACT
    if not ctx.has(name):
        raise ChainError(f"this deployment has no {name}: redeploy with `iotsettle deploy` to offer {mode} policies")
    call = ctx.contract(name).functions.offer(
        terms.holder,
        terms.vehicle,
        terms.token.address,
        terms.rate_per_km,
        terms.min_factor_bps,
        terms.max_factor_bps,
        terms.step_bps,
        terms.start_odometer,
        terms.start_harsh,
        terms.start_speeding,
        terms.notice_period,
    )
    result = _send(ctx, call, name)
    return int(events_in(ctx, name, result.receipt, "PolicyOffered")[0]["policyId"]), result


def _approve(ctx: OpsContext, view: PolicyView, amount: int) -> None:
    ensure_allowance(ctx, describe_token(ctx, view.token), contract_of(view.policy_id), amount)


@dataclass(frozen=True)
class StartRegisters:
    """The unit's registers the policy is priced from: the acceptance names them (the contract refuses others)."""

    odometer: int
    harsh: int
    speeding: int


def start_registers(view: PolicyView) -> StartRegisters:
    return StartRegisters(view.start_odometer, view.start_harsh, view.start_speeding)


def accept(ctx: OpsContext, policy_id: int, deposit: int, start: StartRegisters | None = None) -> TxResult:
    """Holder (the sender) accepts and prepays ``deposit``, naming the starting registers it agrees to: ``start``,
    or the offer's as read from the chain now."""
    view = policy_of(ctx, policy_id)
    offered = start_registers(view)
    start = start or offered
    if start != offered:  # the contract refuses it too; saying so here spares the approval
        raise ChainError(
            _start_mismatch(
                {
                    "policyId": policy_id,
                    "startOdometer": offered.odometer,
                    "startHarsh": offered.harsh,
                    "startSpeeding": offered.speeding,
                    "acceptedOdometer": start.odometer,
                    "acceptedHarsh": start.harsh,
                    "acceptedSpeeding": start.speeding,
                }
            )
        )
    _approve(ctx, view, deposit)
    name = _holder(ctx, policy_id)
    call = ctx.contract(name).functions.accept(policy_id, deposit, start.odometer, start.harsh, start.speeding)
    return _send(ctx, call, name)


def top_up(ctx: OpsContext, policy_id: int, amount: int) -> tuple[TxResult, int]:
    """Anyone adds to the prepaid balance; returns the part that paid arrears."""
    view = policy_of(ctx, policy_id)
    _approve(ctx, view, amount)
    name = _holder(ctx, policy_id)
    result = _send(ctx, ctx.contract(name).functions.topUp(policy_id, amount), name)
    paid = sum(int(a["arrearsPaid"]) for a in events_in(ctx, name, result.receipt, "PolicyToppedUp"))
    return result, paid


def cancel_offer(ctx: OpsContext, policy_id: int) -> TxResult:
    name = _holder(ctx, policy_id)
    return _send(ctx, ctx.contract(name).functions.cancelOffer(policy_id), name)


def request_close(ctx: OpsContext, policy_id: int) -> tuple[TxResult, int]:
    """Holder or insurer starts the notice period; returns closeAt."""
    name = _holder(ctx, policy_id)
    result = _send(ctx, ctx.contract(name).functions.requestClose(policy_id), name)
    requested = events_in(ctx, name, result.receipt, "CloseRequested")
    close_at = int(requested[0]["closeAt"]) if requested else policy_of(ctx, policy_id).close_at
    return result, close_at


def close(ctx: OpsContext, policy_id: int) -> tuple[TxResult, int, bool]:
    """Anyone, from closeAt + the close delay: ends the policy; returns the refund and whether it was credited to
    the holder (a failed push) instead of sent."""
    name = _holder(ctx, policy_id)
    result = _send(ctx, ctx.contract(name).functions.close(policy_id), name)
    refund = sum(int(a["refund"]) for a in events_in(ctx, name, result.receipt, "PolicyClosed"))
    credited = bool(events_in(ctx, name, result.receipt, "Credited"))
    return result, refund, credited


def settlement_grace(ctx: OpsContext) -> int:
    """Seconds after closeAt during which reports signed by closeAt still settle; `close` opens after them."""
    return int(ctx.contract(CONTRACT).functions.SETTLEMENT_GRACE().call())


def close_delay(ctx: OpsContext, policy_id: int) -> int:
    """Seconds after closeAt before ``close`` refunds: the grace (direct), or OptimisticMotor's two graces and a
    challenge window (a report committed at closeAt must still be claimable)."""
    return int(ctx.contract(_holder(ctx, policy_id)).functions.closeDelay(policy_id).call())


def withdraw_earnings(ctx: OpsContext, policy_id: int) -> tuple[TxResult, int]:
    """Insurer takes the earned premiums not yet withdrawn."""
    name = _holder(ctx, policy_id)
    result = _send(ctx, ctx.contract(name).functions.withdrawEarnings(policy_id), name)
    return result, sum(int(a["amount"]) for a in events_in(ctx, name, result.receipt, "EarningsWithdrawn"))


def withdraw_refund(ctx: OpsContext, token: TokenInfo) -> tuple[TxResult, int]:
    """The sender takes its refunds credited in ``token`` after failed pushes."""
    result = _send(ctx, ctx.contract(CONTRACT).functions.withdraw(token.address))
    return result, sum(int(a["amount"]) for a in events_in(ctx, CONTRACT, result.receipt, "Withdrawn"))


def refund_credited(ctx: OpsContext, token: TokenInfo, account: str) -> int:
    return int(ctx.contract(CONTRACT).functions.withdrawable(token.address, account).call())


# ------------------------------------------------------------------------------------------------ reports


def parse_telematics(ctx: OpsContext, text: str) -> list[SignedEvent]:
    """Wire payloads (one JSON object per line, or one object) checked against this deployment; reports of
    optimistic policies are refused (the oracle commits them in batches)."""
    return parse_payloads(ctx, text, "telematics", CONTRACT, "policy settle", _direct_only)


def _direct_only(event: SignedEvent) -> None:
    policy_id = int(event.target_id)
    if contract_of(policy_id) == OPTIMISTIC:
        raise ProtocolError(
            f"policy {hex(policy_id)} is optimistic: its reports are committed in batches by the oracle "
            "([optimistic] enabled) and claimed after the challenge window, not relayed here"
        )


@dataclass(frozen=True)
class ReportOutcome:
    policy_id: int
    seq: int
    settled: bool
    reason: str = ""
    amount: int = 0
    factor_bps: int = 0


def packed_reports(events: Sequence[SignedEvent], terms_of: Callable[[int], bytes]) -> bytes:
    """The packed batch ``settle`` takes (``iotsettle.oracle.protocol.packed``: the signed fields at their signed
    widths, then r, vs, then the policy's terms from ``terms_of``); ProtocolError for a field beyond its signed type
    (the signature could not match anyway)."""
    items = []
    for event in events:
        *fields, r, vs = event.contract_tuple()
        try:
            ints = [int(f) for f in fields]
            items.append(pack_item("telematics", ints, bytes(r), bytes(vs), terms_of(ints[0])))
        except ValueError as exc:
            raise ProtocolError(f"report seq {event.msg['seq']} cannot be settled: {exc}") from None
    return b"".join(items)


def settle(ctx: OpsContext, events: list[SignedEvent]) -> tuple[TxResult, list[ReportOutcome]]:
    """Relay signed telematics reports in one batch; bad items are skipped on chain with a reason.

    Raises ChainError when none was settled (the transaction then changed nothing).
    """
    for event in events:
        if event.type != "telematics":
            raise ProtocolError(f"payload seq {event.seq} is a {event.type}, not a telematics report")
    contract = ctx.contract(CONTRACT)
    terms: dict[int, bytes] = {}

    def terms_of(policy_id: int) -> bytes:
        # An unknown policy gets terms that match no seal: the contract refuses the report with its reason.
        if policy_id not in terms:
            try:
                terms[policy_id] = bytes(contract.functions.telematicsTerms(policy_id).call())
            except ContractLogicError:
                terms[policy_id] = UNKNOWN_TERMS["telematics"]
        return terms[policy_id]

    result = _send(ctx, contract.functions.settle(packed_reports(events, terms_of)))
    outcomes = [
        ReportOutcome(int(a["policyId"]), int(a["seq"]), True, "", int(a["amount"]), int(a["factorBps"]))
        for a in events_in(ctx, CONTRACT, result.receipt, "PremiumCharged")
    ]
    outcomes += [
        ReportOutcome(int(a["policyId"]), int(a["seq"]), False, rejection_sentence(int(a["reason"])))
        for a in events_in(ctx, CONTRACT, result.receipt, "TelematicsRejected")
    ]
    if outcomes and not any(o.settled for o in outcomes):
        first = outcomes[0]
        more = f" (and {len(outcomes) - 1} more)" if len(outcomes) > 1 else ""
        raise ChainError(f"no report settled: seq {first.seq} for policy {hex(first.policy_id)}: {first.reason}{more}")
    return result, outcomes


# ------------------------------------------------------------------------------------------------ history


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a policy's history: a charged period, a rejected report, or a change of status."""

    #: charged | rejected | offered | accepted | topped-up | lapsed | reinstated | close-requested | closed |
    #: earnings-withdrawn | refund-credited | cancelled
    kind: str
    block: int
    time: int
    tx_hash: str
    seq: int | None = None
    #: this report's deltas since the previous settled report
    metres: int = 0
    harsh_braking: int = 0
    speeding: int = 0
    #: the factor of the totals since the offer (what the premium so far is priced at)
    factor_bps: int = 0
    rate_per_km: int = 0
    amount: int = 0
    explanation: str = ""
    #: totals since the offer after this report
    total_metres: int = 0
    total_events: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["amount"] = str(self.amount)
        out["rate_per_km"] = str(self.rate_per_km)
        out["km"] = self.metres / METRES_PER_KM
        out["factor"] = factor_text(self.factor_bps) if self.kind == "charged" else None
        return out


_HISTORY_EVENTS = (
    "PolicyOffered",
    "PolicyAccepted",
    "PolicyToppedUp",
    "PremiumCharged",
    "TelematicsRejected",
    "PolicyLapsed",
    "PolicyReinstated",
    "CloseRequested",
    "PolicyClosed",
    "EarningsWithdrawn",
    "PolicyCancelled",
)


def history(ctx: OpsContext, policy_id: int) -> tuple[PolicyView, list[HistoryEntry]]:
    """Every event of a policy in chain order; each charge with the sentence that explains its factor."""
    view = policy_of(ctx, policy_id)
    fmt = describe_token(ctx, view.token).format
    times: dict[int, int] = {}

    def at(block: int) -> int:
        if block not in times:
            times[block] = int(ctx.w3.eth.get_block(block)["timestamp"])
        return times[block]

    entries: list[HistoryEntry] = []
    # Each PremiumCharged carries the deltas since the previous settled report: they add up to the totals.
    total_metres = total_events = 0
    for log_entry in fetch_logs(ctx, contract_of(policy_id), list(_HISTORY_EVENTS), topic1=policy_id):
        a, base = log_entry.args, (log_entry.block, at(log_entry.block), log_entry.tx_hash)
        name = log_entry.event
        if name == "PremiumCharged":
            metres, harsh, speeding, factor = (
                int(a["metres"]),
                int(a["harshBraking"]),
                int(a["speeding"]),
                int(a["factorBps"]),
            )
            total_metres += metres
            total_events += harsh + speeding
            entries.append(
                HistoryEntry(
                    "charged",
                    *base,
                    seq=int(a["seq"]),
                    metres=metres,
                    harsh_braking=harsh,
                    speeding=speeding,
                    factor_bps=factor,
                    rate_per_km=view.rate_per_km * factor // BPS,
                    amount=int(a["amount"]),
                    explanation=explain_factor(
                        total_metres, total_events, factor, view.min_factor_bps, view.max_factor_bps, view.step_bps
                    ),
                    total_metres=total_metres,
                    total_events=total_events,
                )
            )
        elif name == "TelematicsRejected":
            entries.append(
                HistoryEntry("rejected", *base, seq=int(a["seq"]), explanation=rejection_sentence(int(a["reason"])))
            )
        elif name == "PolicyOffered":
            entries.append(
                HistoryEntry(
                    "offered",
                    *base,
                    explanation=(
                        f"{fmt(view.rate_per_km)} per km at ×1.00; factor {factor_text(view.min_factor_bps)} … "
                        f"{factor_text(view.max_factor_bps)}, +{factor_text(view.step_bps).lstrip('×')} per event "
                        f"per 100 km; counted from odometer {int(a['startOdometer']):,} m, "
                        f"{int(a['startHarsh'])} harsh braking, {int(a['startSpeeding'])} speeding"
                    ),
                )
            )
        elif name == "PolicyAccepted":
            entries.append(
                HistoryEntry(
                    "accepted", *base, amount=int(a["deposit"]), explanation=f"{fmt(int(a['deposit']))} prepaid"
                )
            )
        elif name == "PolicyToppedUp":
            paid = int(a["arrearsPaid"])
            entries.append(
                HistoryEntry(
                    "topped-up",
                    *base,
                    amount=int(a["amount"]),
                    explanation=(
                        f"{fmt(int(a['amount']))} from {a['from']}"
                        + (f", {fmt(paid)} of it paid arrears" if paid else "")
                    ),
                )
            )
        elif name == "PolicyLapsed":
            entries.append(
                HistoryEntry(
                    "lapsed",
                    *base,
                    amount=int(a["arrears"]),
                    explanation=(
                        f"the prepaid balance ran out; {fmt(int(a['arrears']))} in arrears, "
                        "reports refused until a top-up"
                    ),
                )
            )
        elif name == "PolicyReinstated":
            entries.append(HistoryEntry("reinstated", *base, explanation="arrears paid; reports settle again"))
        elif name == "CloseRequested":
            entries.append(
                HistoryEntry(
                    "close-requested",
                    *base,
                    explanation=(
                        f"ends at {when(a['closeAt'])}: reports signed until then settle, closing opens "
                        f"{settlement_grace(ctx) // 60} min 1 s later"
                    ),
                )
            )
        elif name == "PolicyClosed":
            entries.append(
                HistoryEntry(
                    "closed",
                    *base,
                    amount=int(a["refund"]),
                    explanation=f"{fmt(int(a['refund']))} refunded to the holder",
                )
            )
        elif name == "EarningsWithdrawn":
            entries.append(
                HistoryEntry(
                    "earnings-withdrawn",
                    *base,
                    amount=int(a["amount"]),
                    explanation=f"the insurer took {fmt(int(a['amount']))}",
                )
            )
        elif name == "PolicyCancelled":
            entries.append(HistoryEntry("cancelled", *base, explanation="the offer was withdrawn or declined"))
    return view, entries
