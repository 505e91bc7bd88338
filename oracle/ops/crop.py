"""CropInsurance operations: pools, seasons, cover, weather observations, finalization and payouts.

Finalizing decides a season's verdict and books the pool; the payouts follow with ``payOut`` in pages (each a
bounded push that becomes a credit the beneficiary withdraws when it fails), so :func:`finalize` then pays out
until every policy is processed.

Units on chain: rainfall in hundredths of a millimetre, temperature in hundredths of a degree Celsius
(``RAIN_UNITS_PER_MM``, ``TEMPERATURE_UNITS_PER_DEGREE``); :func:`threshold_units` converts what people type.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from iotsettle.oracle.chain.revert import RejectReason, reason_of
from iotsettle.oracle.ops._product import Sentences, named, state_name, transact_explained, when
from iotsettle.oracle.ops.context import OpsContext, parse_payloads
from iotsettle.oracle.ops.events import fetch_logs
from iotsettle.oracle.ops.token import ensure_allowance
from iotsettle.oracle.ops.token_info import TokenInfo, describe_token
from iotsettle.oracle.ops.tx import TxResult, events_in
from iotsettle.oracle.ops.vocabulary import DEFAULT_PAYOUT_BATCH, INDEXES
from iotsettle.oracle.protocol.errors import ChainError, IotSettleError, ProtocolError
from iotsettle.oracle.protocol.packed import pack_item
from iotsettle.oracle.protocol.wire import SignedEvent
from web3.exceptions import LogTopicError, MismatchedABI

log = logging.getLogger(__name__)

CONTRACT = "CropInsurance"
BPS = 10_000
RAIN_UNITS_PER_MM = 100
TEMPERATURE_UNITS_PER_DEGREE = 100
VERDICTS = ("abstain", "no trigger", "trigger")
COVER_STATUSES = ("none", "active", "paid", "expired", "due")
#: the contract's floors (MIN_COVERAGE_SLACK, MIN_FINALIZE_DELAY), in seconds
MIN_COVERAGE_SLACK = 10
MIN_FINALIZE_DELAY = 10
INT64_MAX = (1 << 63) - 1


class TermsError(IotSettleError, ValueError):
    """Season terms that cannot be expressed on chain (checked before sending anything)."""


def threshold_units(index: str, text: str) -> int:
    """ "50mm" / "50" (rain) → 5000 hundredths of a mm; "35C" / "35°C" / "35" (heat) → 3500 hundredths of °C."""
    raw = text.strip().lower().replace(" ", "")
    if index == "rain":
        number, scale, unit = raw.removesuffix("mm"), RAIN_UNITS_PER_MM, "mm"
    elif index == "heat":
        number, scale, unit = raw.removesuffix("°c").removesuffix("c"), TEMPERATURE_UNITS_PER_DEGREE, "°C"
    else:
        raise TermsError(f"unknown index {index!r}: use rain or heat")
    try:
        value = Decimal(number) * scale
    except InvalidOperation:
        raise TermsError(
            f"{text!r} is not a threshold in {unit} (e.g. {'120mm' if index == 'rain' else '35C'})"
        ) from None
    if value != value.to_integral_value():
        raise TermsError(f"{text!r} is finer than the contract's 0.01 {unit}")
    if index == "rain" and value <= 0:
        raise TermsError(f"a rainfall threshold must be more than 0 mm, not {text!r}")
    if abs(value) > INT64_MAX:
        raise TermsError(f"{text!r} does not fit the contract's threshold")
    return int(value)


def threshold_text(index: int, units: int) -> str:
    if index == 0:
        return f"{Decimal(units) / RAIN_UNITS_PER_MM:f} mm"
    return f"{Decimal(units) / TEMPERATURE_UNITS_PER_DEGREE:f} °C"


def region_bytes(text: str) -> bytes:
    """A region as bytes32: 0x + 64 hex digits, or a name of at most 32 UTF-8 bytes (right-padded with zeros)."""
    if text.startswith("0x") and len(text) == 66:
        try:
            return bytes.fromhex(text[2:])
        except ValueError:
            pass
    raw = text.encode()
    if len(raw) > 32:
        raise TermsError(f"region {text!r} is longer than 32 bytes; use a shorter name or a geohash")
    return raw.ljust(32, b"\0")


def region_text(raw: bytes) -> str:
    stripped = bytes(raw).rstrip(b"\0")
    try:
        text = stripped.decode()
        if text.isprintable():
            return text
    except UnicodeDecodeError:
        pass
    return "0x" + bytes(raw).hex()


def days_text(n: int) -> str:
    return "1 day" if n == 1 else f"{n} days"


def premium_for(cover: int, premium_bps: int) -> int:
    """ceil(cover × premiumBps / 10_000), as the contract computes it."""
    return -(-cover * premium_bps // BPS)


# ------------------------------------------------------------------------------------------------ sentences

SENTENCES: Sentences = {
    "UnknownPool": lambda a: f"pool {a['poolId']} does not exist",
    "NotPoolOwner": lambda a: f"only the owner of pool {a['poolId']} may do this, not {a['caller']}",
    "InsufficientFreeAssets": lambda a: (
        f"pool {a['poolId']} has only {a['free']} base units free (assets not "
        f"locked by cover sold), not {a['requested']}"
    ),
    "InvalidWindow": lambda a: (
        f"the season window is invalid (sale end {when(a['saleEnd'])}, start "
        f"{when(a['start']) if a['start'] else 0}, end {when(a['end'])}): it needs "
        "sale end ≤ start < end, at most 400 days long and starting within 400 days"
    ),
    "FinalizeDelayTooLong": lambda a: f"a finalize delay of {a['finalizeDelay']} s is more than 30 days",
    "FinalizeDelayTooShort": lambda a: (
        f"a finalize delay of {a['finalizeDelay']} s is less than the "
        f"{a['minimum']} s relayers need after the end to bring the last "
        "observations on chain"
    ),
    "CoverageSlackTooShort": lambda a: (
        f"a coverage slack of {a['coverageSlack']} s is less than {a['minimum']} s: "
        "stations could hardly report close enough to the start and the end to vote"
    ),
    "StationReportedSinceStart": lambda a: (
        f"station {a['station']} already reported at {when(a['lastTimestamp'])}, "
        "not before the season's start; open the season with a later start"
    ),
    "InvalidQuorum": lambda a: (
        f"k = {a['k']} of {a['n']} stations is not allowed: a season needs 3 to 7 "
        "stations and 2 ≤ k ≤ n − 1, so one faulty station can neither trigger nor block "
        "a payout"
    ),
    "InvalidPremium": lambda a: f"a premium of {a['premiumBps']} basis points is not within 1 … 10000 (0.01 % … 100 %)",
    "InvalidIndex": lambda a: (
        "a rainfall threshold must be above 0"
        if int(a["index"]) == 0
        else "a heat index needs at least one hot day to trigger (--days)"
    ),
    "DuplicateStation": lambda a: f"station {a['station']} is listed twice",
    "InvalidStation": lambda a: f"{a['station']} is not a registered, active weather station",
    "StationBusy": lambda a: f"station {a['station']} already serves 8 unfinalized seasons",
    "StationNotAllowed": lambda a: (
        f"the owner of station {a['station']} has not allowed {a['insurer']} to name it "
        "in a season; they run `iotsettle crop allow-insurer STATION --insurer "
        f"{a['insurer']}`"
    ),
    "NotStationOwner": lambda a: f"only the owner of station {a['station']} may do this, not {a['caller']}",
    "StationNotInSeason": lambda a: f"station {a['station']} does not serve season {a['seasonId']}",
    "ReleaseClosed": lambda a: (
        f"a station can leave season {a['seasonId']} only before its sale ends "
        f"({when(a['saleEnd'])}): buyers rely on the station set from then on"
    ),
    "UnknownSeason": lambda a: f"season {a['seasonId']} does not exist",
    "SaleClosed": lambda a: f"cover for season {a['seasonId']} was on sale until {when(a['saleEnd'])}",
    "InsufficientCapacity": lambda a: (
        f"the pool can take on only {a['available']} base units more cover "
        "(its assets, with this premium, minus the cover already sold)"
    ),
    "AlreadyFinalized": lambda a: (
        f"season {a['seasonId']} is already finalized; `iotsettle crop pay-out` continues its payouts"
    ),
    "TooEarly": lambda a: f"season {a['id']} can be finalized from {when(a['notBefore'])}",
    "NotFinalized": lambda a: f"season {a['seasonId']} is not finalized yet; run `iotsettle crop finalize` first",
    "NothingToWithdraw": lambda a: f"{a['account']} has no payout credited in {a['token']}",
    "ZeroAmount": lambda a: "the amount must be more than zero",
    "ZeroAddress": lambda a: "an address argument is the zero address",
}


def _send(ctx: OpsContext, call: Any) -> TxResult:
    return transact_explained(ctx, call, CONTRACT, SENTENCES)


# ------------------------------------------------------------------------------------------------ pools


@dataclass(frozen=True)
class PoolView:
    pool_id: int
    owner: str
    token: str
    assets: int
    locked: int

    @property
    def free(self) -> int:
        return self.assets - self.locked

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("assets", "locked"):
            out[key] = str(out[key])
        out["free"] = str(self.free)
        return out


def pool_of(ctx: OpsContext, pool_id: int) -> PoolView:
    crop = ctx.contract(CONTRACT)
    p = named(crop.abi, "poolOf", crop.functions.poolOf(pool_id).call())
    if int(p["owner"], 16) == 0:
        raise ChainError(f"pool {pool_id} does not exist on chain {ctx.chain.chain_id}")
    return PoolView(pool_id, p["owner"], p["token"], int(p["assets"]), int(p["locked"]))


def create_pool(ctx: OpsContext, token: TokenInfo) -> tuple[int, TxResult]:
    if token.is_eth:
        raise ChainError("crop insurance pools hold an ERC-20 token, not ETH")
    result = _send(ctx, ctx.contract(CONTRACT).functions.createPool(token.address))
    return int(events_in(ctx, CONTRACT, result.receipt, "PoolCreated")[0]["poolId"]), result


def deposit_to_pool(ctx: OpsContext, pool_id: int, amount: int) -> TxResult:
    pool = pool_of(ctx, pool_id)
    ensure_allowance(ctx, describe_token(ctx, pool.token), CONTRACT, amount)
    return _send(ctx, ctx.contract(CONTRACT).functions.depositToPool(pool_id, amount))


def withdraw_from_pool(ctx: OpsContext, pool_id: int, amount: int) -> TxResult:
    """Pool owner takes ``amount`` of the free assets (not locked by cover sold)."""
    pool = pool_of(ctx, pool_id)
    if amount > pool.free:  # the contract refuses too; this says it in tokens
        fmt = describe_token(ctx, pool.token).format
        raise ChainError(
            f"pool {pool_id} has {fmt(pool.free)} free (assets {fmt(pool.assets)} minus "
            f"{fmt(pool.locked)} locked by cover sold); cannot withdraw {fmt(amount)}"
        )
    return _send(ctx, ctx.contract(CONTRACT).functions.withdrawFromPool(pool_id, amount))


def claim(ctx: OpsContext, token: str) -> tuple[TxResult, int]:
    """A beneficiary takes payouts whose push failed (credited for ``withdraw(token)``)."""
    result = _send(ctx, ctx.contract(CONTRACT).functions.withdraw(token))
    return result, sum(int(a["amount"]) for a in events_in(ctx, CONTRACT, result.receipt, "Withdrawn"))


def seasons_of_pool(ctx: OpsContext, pool_id: int) -> list[int]:
    """The pool's seasons from its SeasonCreated events (filtered by the indexed pool id on the node)."""
    return [int(e.args["seasonId"]) for e in fetch_logs(ctx, CONTRACT, ("SeasonCreated",), topic2=pool_id)]


# ------------------------------------------------------------------------------------------------ seasons


@dataclass(frozen=True)
class SeasonSpec:
    """Season terms in contract units (see :func:`threshold_units`)."""

    start: int
    end: int
    sale_end: int
    coverage_slack: int
    finalize_delay: int
    index: str  # rain | heat
    threshold: int
    trigger_days: int
    premium_bps: int
    k: int
    region: bytes
    stations: tuple[str, ...]

    def as_tuple(self) -> tuple[Any, ...]:
        return (
            self.start,
            self.end,
            self.sale_end,
            self.coverage_slack,
            self.finalize_delay,
            INDEXES.index(self.index),
            self.threshold,
            self.trigger_days,
            self.premium_bps,
            self.k,
            self.region,
            list(self.stations),
        )


def create_season(ctx: OpsContext, pool_id: int, spec: SeasonSpec) -> tuple[int, TxResult]:
    """Pool owner opens a season; the contract checks the window, the quorum and every station."""
    if spec.index not in INDEXES:
        raise TermsError(f"unknown index {spec.index!r}: use rain or heat")
    if spec.coverage_slack < MIN_COVERAGE_SLACK:
        raise TermsError(
            f"a coverage slack of {spec.coverage_slack} s is less than the contract's minimum of {MIN_COVERAGE_SLACK} s"
        )
    if spec.finalize_delay < MIN_FINALIZE_DELAY:
        raise TermsError(
            f"a finalize delay of {spec.finalize_delay} s is less than the contract's minimum of {MIN_FINALIZE_DELAY} s"
        )
    result = _send(ctx, ctx.contract(CONTRACT).functions.createSeason(pool_id, spec.as_tuple()))
    return int(events_in(ctx, CONTRACT, result.receipt, "SeasonCreated")[0]["seasonId"]), result


def allow_insurer(ctx: OpsContext, station: str, insurer: str, allowed: bool = True) -> TxResult:
    """The station's owner lets ``insurer`` (a pool owner) name the station in new seasons, or stops it
    (``allowed`` false; seasons already created keep the station). Nobody else can take the station's season slots."""
    return _send(ctx, ctx.contract(CONTRACT).functions.allowInsurer(station, insurer, allowed))


def insurer_allowed(ctx: OpsContext, station: str, insurer: str) -> bool:
    return bool(ctx.contract(CONTRACT).functions.insurerAllowed(station, insurer).call())


@dataclass(frozen=True)
class StationFigures:
    """What one station reported inside a season's window, and how it votes (or voted)."""

    station: str
    first_timestamp: int
    first_rainfall: int
    last_timestamp: int
    last_rainfall: int
    hot_days: int
    verdict: str
    measured: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CoverView:
    policy_id: int
    season_id: int
    buyer: str
    beneficiary: str
    cover: int
    premium: int
    status: str

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cover"], out["premium"] = str(self.cover), str(self.premium)
        return out


@dataclass(frozen=True)
class SeasonView:
    season_id: int
    pool_id: int
    token: str
    start: int
    end: int
    sale_end: int
    coverage_slack: int
    finalize_delay: int
    index: str
    threshold: int
    trigger_days: int
    premium_bps: int
    k: int
    region: str
    finalized: bool
    triggered: bool
    trigger_votes: int
    no_trigger_votes: int
    abstentions: int
    policy_count: int
    paid_up_to: int
    cover_sold: int
    stations: tuple[StationFigures, ...] = ()
    policies: tuple[CoverView, ...] = field(default=())

    @property
    def finalizable_at(self) -> int:
        return self.end + self.finalize_delay

    @property
    def threshold_text(self) -> str:
        return threshold_text(INDEXES.index(self.index), self.threshold)

    @property
    def rule(self) -> str:
        """The season's index in one sentence."""
        if self.index == "rain":
            return (
                f"a station votes trigger when it measured less than {self.threshold_text} of rain between "
                f"start and end; {self.k} of {len(self.stations)} trigger votes pay every policy"
            )
        return (
            f"a station votes trigger when it saw at least {days_text(self.trigger_days)} reaching "
            f"{self.threshold_text}; {self.k} of {len(self.stations)} trigger votes pay every policy"
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cover_sold"] = str(self.cover_sold)
        out["stations"] = [s.as_dict() for s in self.stations]
        out["policies"] = [p.as_dict() for p in self.policies]
        out["threshold_text"] = self.threshold_text
        out["finalizable_at"] = self.finalizable_at
        out["rule"] = self.rule
        return out


def _verdicts_logged(ctx: OpsContext, season_id: int) -> dict[str, tuple[str, int]]:
    return {
        e.args["station"]: (state_name(VERDICTS, int(e.args["verdict"])), int(e.args["measured"]))
        for e in fetch_logs(ctx, CONTRACT, ["StationVerdict"], topic1=season_id)
    }


def cover_of(ctx: OpsContext, policy_id: int) -> CoverView:
    crop = ctx.contract(CONTRACT)
    c = named(crop.abi, "coverOf", crop.functions.coverOf(policy_id).call())
    if int(c["status"]) == 0:
        raise ChainError(f"crop policy {policy_id} does not exist")
    return CoverView(
        policy_id,
        int(c["seasonId"]),
        c["buyer"],
        c["beneficiary"],
        int(c["cover"]),
        int(c["premium"]),
        state_name(COVER_STATUSES, int(c["status"])),
    )


def season_of(ctx: OpsContext, season_id: int, *, details: bool = True) -> SeasonView:
    """A season's terms and state; with ``details`` also each station's figures and verdict, and the policies.

    Verdicts of a finalized season come from its StationVerdict events (what was decided); before that from
    ``verdictOf`` (how the station would vote now).
    """
    crop = ctx.contract(CONTRACT)
    s = named(crop.abi, "seasonOf", crop.functions.seasonOf(season_id).call())
    t = s["terms"]
    if int(t["end"]) == 0:
        raise ChainError(f"season {season_id} does not exist on chain {ctx.chain.chain_id}")
    pool = pool_of(ctx, int(s["poolId"]))
    stations: list[StationFigures] = []
    policies: list[CoverView] = []
    if details:
        logged = _verdicts_logged(ctx, season_id) if s["finalized"] else {}
        for station in t["stations"]:
            ss = named(crop.abi, "stationSeason", crop.functions.stationSeason(season_id, station).call())
            if station in logged:
                verdict, measured = logged[station]
            else:
                code, measured = crop.functions.verdictOf(season_id, station).call()
                verdict = state_name(VERDICTS, int(code))
            stations.append(
                StationFigures(
                    station,
                    int(ss["firstTimestamp"]),
                    int(ss["firstRainfall"]),
                    int(ss["lastTimestamp"]),
                    int(ss["lastRainfall"]),
                    int(ss["hotDays"]),
                    verdict,
                    int(measured),
                )
            )
        policies = [cover_of(ctx, int(p)) for p in crop.functions.policiesOf(season_id).call()]
    return SeasonView(
        season_id,
        int(s["poolId"]),
        pool.token,
        int(t["start"]),
        int(t["end"]),
        int(t["saleEnd"]),
        int(t["coverageSlack"]),
        int(t["finalizeDelay"]),
        state_name(INDEXES, int(t["index"])),
        int(t["threshold"]),
        int(t["triggerDays"]),
        int(t["premiumBps"]),
        int(t["k"]),
        region_text(t["region"]),
        bool(s["finalized"]),
        bool(s["triggered"]),
        int(s["triggerVotes"]),
        int(s["noTriggerVotes"]),
        int(s["abstentions"]),
        int(s["policies"]),
        int(s["paidUpTo"]),
        int(s["coverSold"]),
        tuple(stations),
        tuple(policies),
    )


def buy_cover(ctx: OpsContext, season_id: int, cover: int, beneficiary: str | None) -> tuple[int, int, TxResult]:
    """Buy ``cover`` for ``beneficiary`` (default: the sender); returns (policy id, premium paid, tx)."""
    season = season_of(ctx, season_id, details=False)
    premium = premium_for(cover, season.premium_bps)
    pool = pool_of(ctx, season.pool_id)
    token = describe_token(ctx, season.token)
    if cover > pool.free + premium:  # the contract refuses too; this says it in tokens
        raise ChainError(
            f"pool {pool.pool_id} can take on only {token.format(pool.free + premium)} more cover "
            f"(free assets {token.format(pool.free)} plus this premium), not {token.format(cover)}"
        )
    ensure_allowance(ctx, token, CONTRACT, premium)
    zero = "0x0000000000000000000000000000000000000000"
    result = _send(ctx, ctx.contract(CONTRACT).functions.buyCover(season_id, cover, beneficiary or zero))
    bought = events_in(ctx, CONTRACT, result.receipt, "CoverBought")[0]
    return int(bought["policyId"]), int(bought["premium"]), result


# ------------------------------------------------------------------------------------------------ observations


def parse_observations(ctx: OpsContext, text: str) -> list[SignedEvent]:
    return parse_payloads(ctx, text, "weather", CONTRACT, "crop record")


@dataclass(frozen=True)
class ObservationOutcome:
    station: str
    seq: int
    recorded: bool
    reason: str = ""


def packed_observations(events: Sequence[SignedEvent]) -> bytes:
    """The packed batch ``record`` takes (``iotsettle.oracle.protocol.packed``): each observation's signed fields
    in their own widths, then r ‖ vs."""
    items = []
    for event in events:
        *fields, r, vs = event.contract_tuple()
        try:
            items.append(pack_item("weather", fields, r, vs))
        except ValueError as exc:
            raise ProtocolError(f"observation seq {event.seq} cannot be recorded: {exc}") from None
    return b"".join(items)


def record(ctx: OpsContext, events: list[SignedEvent]) -> tuple[TxResult, list[ObservationOutcome]]:
    """Relay signed weather observations in one batch; raises ChainError when none was recorded."""
    for event in events:
        if event.type != "weather":
            raise ProtocolError(f"payload seq {event.seq} is a {event.type}, not a weather observation")
    result = _send(ctx, ctx.contract(CONTRACT).functions.record(packed_observations(events)))
    outcomes = [
        ObservationOutcome(a["station"], int(a["seq"]), True)
        for a in events_in(ctx, CONTRACT, result.receipt, "ObservationRecorded")
    ]
    for a in events_in(ctx, CONTRACT, result.receipt, "ObservationRejected"):
        reason = reason_of(int(a["reason"]))
        text = reason.sentence if reason is not None else f"reason code {a['reason']}"
        if reason is RejectReason.REPLAYED:
            text = "already recorded (seq not above the station's last one)"
        elif reason is RejectReason.SEQUENCE_GAP:
            text = (
                "an earlier observation of the station is not recorded yet (a station's seqs are recorded 1, 2, "
                "3… without gaps): relay it first, then this one again"
            )
        outcomes.append(ObservationOutcome(a["station"], int(a["seq"]), False, text))
    if outcomes and not any(o.recorded for o in outcomes):
        first = outcomes[0]
        raise ChainError(f"no observation recorded: seq {first.seq} of station {first.station}: {first.reason}")
    return result, outcomes


# ------------------------------------------------------------------------------------------------ finalization


@dataclass(frozen=True)
class PayoutReport:
    """What finalize and / or pay-out transactions did."""

    season_id: int
    triggered: bool
    verdicts: tuple[tuple[str, str, int], ...]  # (station, verdict, measured): only in the finalize transaction
    paid: tuple[tuple[int, str, int], ...]  # (policy id, beneficiary, amount)
    credited: tuple[int, ...]  # policy ids whose push failed: the beneficiary claims with `crop claim`
    expired: tuple[int, ...]  # policies of a season the finalize transaction found untriggered
    remaining: int  # policies still to pay with pay-out
    txs: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "seasonId": self.season_id,
            "triggered": self.triggered,
            "verdicts": [{"station": s, "verdict": v, "measured": m} for s, v, m in self.verdicts],
            "paid": [{"policyId": p, "beneficiary": b, "amount": str(a)} for p, b, a in self.paid],
            "credited": list(self.credited),
            "expired": list(self.expired),
            "remaining": self.remaining,
            "txs": list(self.txs),
        }


def _payouts_in(ctx: OpsContext, receipt: dict[str, Any]) -> tuple[list[tuple[int, str, int]], list[int]]:
    """(PayoutSent as (policy, beneficiary, amount), policies whose push failed) in a receipt, in log order: a
    failed push is the base's ``Credited`` of the beneficiary right after the policy's ``PayoutSent``."""
    crop = ctx.contract(CONTRACT)
    sent_event, credited_event = crop.events.PayoutSent(), crop.events.Credited()
    address = ctx.address(CONTRACT).lower()
    paid: list[tuple[int, str, int]] = []
    credited: list[int] = []
    for entry in receipt["logs"]:
        if str(entry["address"]).lower() != address:
            continue
        for handle in (sent_event, credited_event):
            try:
                args = handle.process_log(entry)["args"]
            except (MismatchedABI, LogTopicError):
                continue
            if handle is sent_event:
                paid.append((int(args["policyId"]), args["beneficiary"], int(args["amount"])))
            elif paid and paid[-1][1] == args["account"] and paid[-1][2] == int(args["amount"]):
                credited.append(paid[-1][0])
            break
    return paid, credited


def _report(ctx: OpsContext, season_id: int, results: list[TxResult], *, finalized_now: bool = False) -> PayoutReport:
    verdicts, paid, credited = [], [], []
    for r in results:
        verdicts += [
            (a["station"], state_name(VERDICTS, int(a["verdict"])), int(a["measured"]))
            for a in events_in(ctx, CONTRACT, r.receipt, "StationVerdict")
        ]
        sent, failed = _payouts_in(ctx, r.receipt)
        paid += sent
        credited += failed
    season = season_of(ctx, season_id, details=False)
    expired: list[int] = []
    if finalized_now and not season.triggered:
        expired = [int(p) for p in ctx.contract(CONTRACT).functions.policiesOf(season_id).call()]
    return PayoutReport(
        season_id,
        season.triggered,
        tuple(verdicts),
        tuple(paid),
        tuple(credited),
        tuple(expired),
        season.policy_count - season.paid_up_to,
        tuple(r.tx_hash for r in results),
    )


def finalize(ctx: OpsContext, season_id: int, *, pay_all: bool = True) -> PayoutReport:
    """Anyone, after end + finalizeDelay: count the votes (the pool is booked, no policy is paid yet); with
    ``pay_all`` continue with ``payOut`` until every policy of a triggered season is paid."""
    results = [_send(ctx, ctx.contract(CONTRACT).functions.finalize(season_id))]
    report = _report(ctx, season_id, results, finalized_now=True)
    if pay_all and report.remaining:
        more = pay_out(ctx, season_id, until_done=True)
        return PayoutReport(
            season_id,
            report.triggered,
            report.verdicts,
            report.paid + more.paid,
            report.credited + more.credited,
            report.expired + more.expired,
            more.remaining,
            report.txs + more.txs,
        )
    return report


def pay_out(
    ctx: OpsContext, season_id: int, max_policies: int = DEFAULT_PAYOUT_BATCH, *, until_done: bool = False
) -> PayoutReport:
    """Pay the next policies of a finalized, triggered season, ``max_policies`` per transaction (a page); with
    ``until_done`` page on until every policy is paid."""
    results: list[TxResult] = []
    while True:
        results.append(_send(ctx, ctx.contract(CONTRACT).functions.payOut(season_id, max_policies)))
        season = season_of(ctx, season_id, details=False)
        if not until_done or season.paid_up_to >= season.policy_count:
            break
    return _report(ctx, season_id, results)
