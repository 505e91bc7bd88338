"""`iotsettle crop ...`: parametric crop insurance paid from a pool on the verdict of k of n weather stations."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import click
from iotsettle.cli._common import IotSettleGroup, emit
from iotsettle.cli._lazy import lazy_import
from iotsettle.cli._params import (
    ADDRESS,
    AMOUNT,
    DEADLINE,
    DURATION,
    ID,
    TOKEN,
    CommandContext,
    read_payloads,
    short,
    when,
    with_context,
)
from iotsettle.oracle.ops.amounts import Amount
from iotsettle.oracle.ops.vocabulary import DEFAULT_PAYOUT_BATCH, INDEXES
from rich.table import Table

if TYPE_CHECKING:
    from iotsettle.oracle.ops import crop as ops
    from iotsettle.oracle.ops import token as token_ops
else:
    ops = lazy_import("iotsettle.oracle.ops.crop")
    token_ops = lazy_import("iotsettle.oracle.ops.token")


class PercentType(click.ParamType):
    """A premium rate: "5%" or "5" (percent of the cover), or basis points: "500bps"."""

    name = "PERCENT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        try:
            bps = Decimal(text[:-3]) if text.endswith("bps") else Decimal(text.removesuffix("%")) * 100
        except InvalidOperation:
            self.fail(f"{value!r} is not a percentage (examples: 5%, 2.5, 250bps)", param, ctx)
        if bps != bps.to_integral_value():
            self.fail(f"{value!r} is finer than a basis point (0.01 %)", param, ctx)
        if not 0 < bps <= 10_000:
            self.fail(f"{value!r} is not within 0.01 % … 100 %", param, ctx)
        return int(bps)


PERCENT = PercentType()


@click.group(cls=IotSettleGroup)
def crop() -> None:
    """Parametric crop insurance: an insurer's pool pays every policy of a season when k of n weather stations
    measure the trigger (too little rain, or too many hot days). No claim: anyone finalizes after the season and
    pays the policies out.

    \b
    Life of a season:
      iotsettle crop allow-insurer 0xS1 --insurer 0xINSURER              # each station's owner, once
      iotsettle crop pool-create                                         # insurer: a pool in TEST
      iotsettle crop pool-deposit 1 --amount 1000
      iotsettle crop season-create --pool 1 --station 0xS1 --station 0xS2 --station 0xS3 --k 2 \\
          --index rain --threshold 120mm --start +1h --end +90d --premium 5%
      iotsettle crop buy 1 --cover 200 --dev-account 1                   # farmer: pays 5 % of the cover
      iotsettle crop record observations.jsonl                           # anyone relays (the oracle does this)
      iotsettle crop season 1                                            # stations' figures, verdicts, policies
      iotsettle crop finalize 1                                          # after end + finalize delay: payouts

    A station that did not report within the coverage slack of the start and of the end, or whose first
    observation after the end is not on chain when the season is finalized, abstains. k is at least 2 and at most
    n − 1, so one faulty or hostile station can neither trigger nor block a payout.
    """


@crop.command("allow-insurer")
@click.argument("station", type=ADDRESS)
@click.option("--insurer", type=ADDRESS, required=True, help="The pool owner that may name the station in seasons.")
@click.option("--revoke", is_flag=True, help="Stop allowing it (seasons it already opened keep the station).")
@with_context(sender=True)
def allow_insurer(cmd: CommandContext, station: str, insurer: str, revoke: bool) -> None:
    """Station owner: allow an insurer to name STATION in its seasons, or stop allowing it with --revoke.

    A station serves at most 8 unfinalized seasons; only insurers its owner allowed can take those slots.

    \b
    Examples:
      iotsettle crop allow-insurer 0xS1 --insurer 0xINSURER
      iotsettle crop allow-insurer 0xS1 --insurer 0xINSURER --revoke --json
    """
    result = ops.allow_insurer(cmd.ops, station, insurer, not revoke)
    cmd.emit(
        {"station": station, "insurer": insurer, "allowed": not revoke, "tx": result.tx_hash, "block": result.block},
        f"{insurer} {'may no longer' if revoke else 'may now'} name station {station} in new seasons "
        f"(tx {result.tx_hash})",
    )


@crop.command("pool-create")
@click.option("--token", type=TOKEN, default="TEST", show_default=True, help="TEST or an ERC-20 address.")
@with_context(sender=True)
def pool_create(cmd: CommandContext, token: str) -> None:
    """Insurer: open a pool (owned by the sender) that seasons sell cover from.

    \b
    Example:
      iotsettle crop pool-create --token TEST
    """
    pool_id, result = ops.create_pool(cmd.ops, token_ops.describe_token(cmd.ops, token))
    cmd.emit(
        {"poolId": pool_id, "tx": result.tx_hash, "block": result.block},
        f"pool [bold]{pool_id}[/bold] created (tx {result.tx_hash})\nnext: iotsettle crop pool-deposit {pool_id} "
        "--amount AMOUNT",
    )


@crop.command("pool-deposit")
@click.argument("pool_id", type=ID)
@click.option("--amount", type=AMOUNT, required=True, help="How much to add, e.g. 1000.")
@with_context(sender=True)
def pool_deposit(cmd: CommandContext, pool_id: int, amount: Amount) -> None:
    """Pool owner: add AMOUNT to the pool (the token is approved first when needed).

    \b
    Example:
      iotsettle crop pool-deposit 1 --amount 1000
    """
    info = token_ops.describe_token(cmd.ops, ops.pool_of(cmd.ops, pool_id).token)
    base = info.to_base(amount)
    result = ops.deposit_to_pool(cmd.ops, pool_id, base)
    pool = ops.pool_of(cmd.ops, pool_id)
    cmd.emit(
        {"poolId": pool_id, "amount": str(base), "tx": result.tx_hash, "pool": pool.as_dict()},
        f"pool {pool_id} holds {info.format(pool.assets)}, {info.format(pool.free)} free (tx {result.tx_hash})",
    )


@crop.command("pool-withdraw")
@click.argument("pool_id", type=ID)
@click.option("--amount", type=AMOUNT, required=True, help="How much to take out, e.g. 100.")
@with_context(sender=True)
def pool_withdraw(cmd: CommandContext, pool_id: int, amount: Amount) -> None:
    """Pool owner: take AMOUNT out of the pool's free assets (what is not locked by cover sold).

    \b
    Example:
      iotsettle crop pool-withdraw 1 --amount 100
    """
    info = token_ops.describe_token(cmd.ops, ops.pool_of(cmd.ops, pool_id).token)
    base = info.to_base(amount)
    result = ops.withdraw_from_pool(cmd.ops, pool_id, base)
    pool = ops.pool_of(cmd.ops, pool_id)
    cmd.emit(
        {"poolId": pool_id, "amount": str(base), "tx": result.tx_hash, "pool": pool.as_dict()},
        f"{info.format(base)} withdrawn from pool {pool_id}; it holds {info.format(pool.assets)}, "
        f"{info.format(pool.free)} free (tx {result.tx_hash})",
    )


@crop.command()
@click.argument("pool_id", type=ID)
@with_context(rpc=True)
def pool(cmd: CommandContext, pool_id: int) -> None:
    """Show a pool: owner, assets, cover locked, free assets, and its seasons.

    \b
    Example:
      iotsettle crop pool 1
    """
    view = ops.pool_of(cmd.ops, pool_id)
    fmt = token_ops.describe_token(cmd.ops, view.token).format
    seasons = ops.seasons_of_pool(cmd.ops, pool_id)
    table = Table(show_header=False, title=f"pool {pool_id}")
    for key, value in (
        ("owner", view.owner),
        ("token", view.token),
        ("assets", fmt(view.assets)),
        ("locked by cover sold", fmt(view.locked)),
        ("free", fmt(view.free)),
        ("seasons", ", ".join(map(str, seasons)) or "—"),
    ):
        table.add_row(key, value)
    cmd.emit({**view.as_dict(), "seasons": seasons}, table)


@crop.command("season-create")
@click.option("--pool", "pool_id", type=ID, required=True, help="The pool that sells the cover.")
@click.option(
    "--station",
    "stations",
    type=ADDRESS,
    multiple=True,
    required=True,
    help="A registered weather station (repeat: 3 to 7 stations).",
)
@click.option(
    "--k", type=click.IntRange(2, 6), required=True, help="Trigger votes needed (2 ≤ k ≤ number of stations − 1)."
)
@click.option(
    "--index",
    type=click.Choice(INDEXES),
    required=True,
    help="rain: trigger when rain is below the threshold; heat: when hot days reach --days.",
)
@click.option(
    "--threshold",
    required=True,
    help='rain: total rainfall in mm ("120mm"); heat: the temperature of a hot day in °C ("35C").',
)
@click.option(
    "--days",
    type=click.IntRange(0, 0xFFFF),
    default=0,
    show_default=True,
    help="heat: how many hot days trigger the payout.",
)
@click.option("--start", type=DEADLINE, required=True, help="Season start: +1h, 7d, a unix time or ISO date-time.")
@click.option("--end", type=DEADLINE, required=True, help="Season end (same forms; + durations count from now).")
@click.option("--sale-end", type=DEADLINE, default=None, help="Last moment to buy cover (default: the start).")
@click.option("--premium", type=PERCENT, required=True, help="Premium as a share of the cover, e.g. 5%.")
@click.option(
    "--coverage-slack",
    type=DURATION,
    default="1d",
    show_default=True,
    help="How close to the start and to the end a station must report, or it abstains (at least 10s).",
)
@click.option(
    "--finalize-delay",
    type=DURATION,
    default="1h",
    show_default=True,
    help="Wait after the end before anyone may finalize: the time relayers have to bring the last "
    "observations, and one after the end, on chain (at least 10s).",
)
@click.option("--region", default="", help="Where the season applies: a name or geohash (≤ 32 bytes) or 0x bytes32.")
@with_context(sender=True)
def season_create(
    cmd: CommandContext,
    pool_id: int,
    stations: tuple[str, ...],
    k: int,
    index: str,
    threshold: str,
    days: int,
    start: tuple[str, int],
    end: tuple[str, int],
    sale_end: tuple[str, int] | None,
    premium: int,
    coverage_slack: int,
    finalize_delay: int,
    region: str,
) -> None:
    """Pool owner: open a season on a pool over 3 to 7 weather stations, k of which must agree.

    \b
    Examples:
      iotsettle crop season-create --pool 1 --station 0xS1 --station 0xS2 --station 0xS3 --k 2 \\
          --index rain --threshold 120mm --start +1h --end +90d --premium 5% --region u0yjj
      iotsettle crop season-create --pool 1 --station 0xS1 --station 0xS2 --station 0xS3 --k 2 \\
          --index heat --threshold 35C --days 10 --start 2027-06-01T00:00:00+00:00 \\
          --end 2027-08-31T00:00:00+00:00 --premium 250bps --finalize-delay 1d
    """
    units = ops.threshold_units(index, threshold)
    region_raw = ops.region_bytes(region)
    start_ts = cmd.chain_time(start)
    spec = ops.SeasonSpec(
        start_ts,
        cmd.chain_time(end),
        cmd.chain_time(sale_end) if sale_end else start_ts,
        coverage_slack,
        finalize_delay,
        index,
        units,
        days,
        premium,
        k,
        region_raw,
        stations,
    )
    season_id, result = ops.create_season(cmd.ops, pool_id, spec)
    view = ops.season_of(cmd.ops, season_id)
    cmd.emit(
        {"seasonId": season_id, "tx": result.tx_hash, "block": result.block, "season": view.as_dict()},
        f"season [bold]{season_id}[/bold] on pool {pool_id}: {when(view.start)} → {when(view.end)}, cover on sale "
        f"until {when(view.sale_end)}\n{view.rule} (tx {result.tx_hash})",
    )


@crop.command()
@click.argument("season_id", type=ID)
@click.option("--cover", type=AMOUNT, required=True, help="The amount paid out if the season triggers, e.g. 200.")
@click.option(
    "--beneficiary",
    type=ADDRESS,
    default=None,
    help="Who receives the payout (default: the sender); e.g. a loan's payout account.",
)
@with_context(sender=True)
def buy(cmd: CommandContext, season_id: int, cover: Amount, beneficiary: str | None) -> None:
    """Farmer: buy COVER for a season before its sale ends; the premium is the season's share of the cover.

    \b
    Example:
      iotsettle crop buy 1 --cover 200 --dev-account 1
      iotsettle crop buy 1 --cover 200 --beneficiary "$(iotsettle loan show 1 --json | jq -r .account)"
    """
    season = ops.season_of(cmd.ops, season_id, details=False)
    info = token_ops.describe_token(cmd.ops, season.token)
    base = info.to_base(cover)
    policy_id, premium, result = ops.buy_cover(cmd.ops, season_id, base, beneficiary)
    view = ops.cover_of(cmd.ops, policy_id)
    cmd.emit(
        {
            "policyId": policy_id,
            "seasonId": season_id,
            "cover": str(base),
            "premium": str(premium),
            "beneficiary": view.beneficiary,
            "tx": result.tx_hash,
        },
        f"crop policy [bold]{policy_id}[/bold]: {info.format(base)} cover in season {season_id} for "
        f"{view.beneficiary}, premium {info.format(premium)} paid (tx {result.tx_hash})",
    )


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _station_rows(view: ops.SeasonView) -> Table:
    figure = "rain (mm)" if view.index == "rain" else "hot days"
    table = Table(
        "station",
        "first report",
        "last report",
        figure,
        "verdict",
        title=("verdicts" if view.finalized else "stations (verdict if finalized now)"),
    )
    for s in view.stations:
        if not s.first_timestamp:
            value = "—"
        elif view.index == "rain":
            value = f"{Decimal(s.last_rainfall - s.first_rainfall) / ops.RAIN_UNITS_PER_MM:f}"
        else:
            value = str(s.hot_days)
        table.add_row(short(s.station), when(s.first_timestamp), when(s.last_timestamp), value, s.verdict)
    return table


@crop.command()
@click.argument("season_id", type=ID)
@with_context(rpc=True)
def season(cmd: CommandContext, season_id: int) -> None:
    """Show a season: terms, each station's accumulated figures and verdict, the outcome and the policies.

    \b
    Example:
      iotsettle crop season 1
    """
    view = ops.season_of(cmd.ops, season_id)
    if cmd.as_json:
        cmd.emit(view.as_dict())
        return
    fmt = token_ops.describe_token(cmd.ops, view.token).format
    terms = Table(show_header=False, title=f"season {season_id} (pool {view.pool_id})")
    outcome = "open"
    if view.finalized:
        outcome = (
            f"{'TRIGGERED' if view.triggered else 'not triggered'}: {view.trigger_votes} trigger, "
            f"{view.no_trigger_votes} no trigger, {view.abstentions} abstained; "
            f"{view.paid_up_to} of {view.policy_count} policies processed"
        )
    for key, value in (
        ("window", f"{when(view.start)} → {when(view.end)}"),
        ("sale ends", when(view.sale_end)),
        ("index", view.rule),
        ("premium", f"{Decimal(view.premium_bps) / 100:f} % of the cover"),
        (
            "coverage slack",
            f"{_duration(view.coverage_slack)}: a station must report this close to "
            "the start and to the end, or it abstains",
        ),
        ("finalizable from", when(view.finalizable_at)),
        ("region", view.region or "—"),
        ("cover sold", fmt(view.cover_sold)),
        ("outcome", outcome),
    ):
        terms.add_row(key, value)
    emit(None, False, terms)
    emit(None, False, _station_rows(view))
    policies = Table("policy", "buyer", "beneficiary", "cover", "premium", "status", title="policies")
    for p in view.policies:
        policies.add_row(str(p.policy_id), short(p.buyer), p.beneficiary, fmt(p.cover), fmt(p.premium), p.status)
    emit(None, False, policies)


@crop.command()
@click.argument("source", default="-", metavar="[FILE|-]")
@with_context(sender=True)
def record(cmd: CommandContext, source: str) -> None:
    """Relay station-signed weather observations (JSON wire payloads, one per line) from FILE or stdin; the oracle
    daemon does this continuously. Fails when no observation could be recorded.

    \b
    Example:
      iotsettle crop record observations.jsonl
    """
    text = read_payloads(source)
    result, outcomes = ops.record(cmd.ops, ops.parse_observations(cmd.ops, text))
    table = Table("station", "seq", "result", title=f"relayed in block {result.block}, gas {result.gas_used:,}")
    for o in outcomes:
        table.add_row(o.station, str(o.seq), "recorded" if o.recorded else f"rejected: {o.reason}")
    cmd.emit(
        {
            "tx": result.tx_hash,
            "block": result.block,
            "gasUsed": result.gas_used,
            "results": [
                {"station": o.station, "seq": o.seq, "recorded": o.recorded, "reason": o.reason or None}
                for o in outcomes
            ],
        },
        table,
    )


def _payout_summary(ops_ctx: Any, report: ops.PayoutReport) -> str:
    season = ops.season_of(ops_ctx, report.season_id, details=False)
    fmt = token_ops.describe_token(ops_ctx, season.token).format
    lines = []
    if report.verdicts:
        lines.append(
            f"season {report.season_id} {'TRIGGERED' if report.triggered else 'not triggered'} "
            f"({season.trigger_votes} trigger, {season.no_trigger_votes} no trigger, "
            f"{season.abstentions} abstained; k = {season.k})"
        )
        for station, verdict, measured in report.verdicts:
            figure = (
                f"{Decimal(measured) / ops.RAIN_UNITS_PER_MM:f} mm"
                if season.index == "rain"
                else f"{ops.days_text(measured)} hot"
            )
            lines.append(f"  {station}: {verdict}" + ("" if verdict == "abstain" else f" ({figure})"))
    for policy_id, beneficiary, amount in report.paid:
        credited = " (push failed: credited, claim with `iotsettle crop claim`)" if policy_id in report.credited else ""
        lines.append(f"  policy {policy_id}: {fmt(amount)} paid to {beneficiary}{credited}")
    if report.expired:
        lines.append(f"  {len(report.expired)} policies expired without payout; their cover is free again in the pool")
    if report.remaining:
        lines.append(f"{report.remaining} policies still to pay: iotsettle crop pay-out {report.season_id}")
    return "\n".join(lines)


@crop.command()
@click.argument("season_id", type=ID)
@click.option(
    "--first-batch-only",
    is_flag=True,
    help="Stop after the finalize transaction (it decides the verdict and pays nobody yet); use pay-out "
    "for the payouts.",
)
@with_context(sender=True)
def finalize(cmd: CommandContext, season_id: int, first_batch_only: bool) -> None:
    """Anyone, after end + finalize delay: count the stations' votes, then pay every policy its cover (pay-out
    pages) if the season triggered; otherwise every policy expires.

    \b
    Example:
      iotsettle crop finalize 1
    """
    report = ops.finalize(cmd.ops, season_id, pay_all=not first_batch_only)
    cmd.emit(report.as_dict(), _payout_summary(cmd.ops, report))


@crop.command("pay-out")
@click.argument("season_id", type=ID)
@click.option(
    "--batch",
    type=click.IntRange(1, 1000),
    default=DEFAULT_PAYOUT_BATCH,
    show_default=True,
    help="Policies per transaction.",
)
@with_context(sender=True)
def pay_out(cmd: CommandContext, season_id: int, batch: int) -> None:
    """Anyone: pay the policies of a finalized, triggered season, BATCH per transaction, until every one is paid.

    \b
    Example:
      iotsettle crop pay-out 1 --batch 100
    """
    report = ops.pay_out(cmd.ops, season_id, batch, until_done=True)
    cmd.emit(report.as_dict(), _payout_summary(cmd.ops, report) or f"season {season_id}: nothing left to pay")


@crop.command()
@click.option("--token", type=TOKEN, default="TEST", show_default=True, help="The pool token of the payouts.")
@with_context(sender=True)
def claim(cmd: CommandContext, token: str) -> None:
    """Beneficiary: take payouts whose automatic transfer failed (they wait in the contract as a credit).

    \b
    Example:
      iotsettle crop claim --token TEST --dev-account 1
    """
    info = token_ops.describe_token(cmd.ops, token)
    result, amount = ops.claim(cmd.ops, info.address)
    cmd.emit({"amount": str(amount), "tx": result.tx_hash}, f"received {info.format(amount)} (tx {result.tx_hash})")
