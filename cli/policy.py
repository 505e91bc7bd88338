"""`iotsettle policy ...`: usage-based motor insurance priced per km from a vehicle's signed telematics."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import click
from iotsettle.cli._common import IotSettleGroup, emit
from iotsettle.cli._lazy import lazy_import
from iotsettle.cli._params import (
    ADDRESS,
    AMOUNT,
    DURATION,
    ID,
    TOKEN,
    CommandContext,
    read_payloads,
    short,
    short_id,
    when,
    with_context,
)
from iotsettle.cli.guard import approval_option, submit_approval
from iotsettle.cli.policy_health import health
from iotsettle.oracle.ops.amounts import Amount
from iotsettle.oracle.ops.vocabulary import POLICY_STATUSES
from rich.table import Table

if TYPE_CHECKING:
    from iotsettle.oracle.ops import motor as ops
    from iotsettle.oracle.ops import token as token_ops
else:
    ops = lazy_import("iotsettle.oracle.ops.motor")
    token_ops = lazy_import("iotsettle.oracle.ops.token")


class FactorType(click.ParamType):
    """A rate factor: "0.9" or "×0.9" (= 9000 basis points), or basis points with a suffix: "9000bps"."""

    name = "FACTOR"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lstrip("×xX")
        try:
            bps = int(text[:-3]) if text.endswith("bps") else Decimal(text) * ops.BPS
        except (ValueError, InvalidOperation):
            self.fail(f"{value!r} is not a factor (examples: 0.9, 1.5, 9000bps)", param, ctx)
        if bps != int(bps):
            self.fail(f"{value!r} has more precision than a basis point (0.0001)", param, ctx)
        if not 0 <= bps <= 0xFFFF:
            self.fail(f"{value!r} is outside 0 … 6.5535", param, ctx)
        return int(bps)


FACTOR = FactorType()


@click.group(cls=IotSettleGroup)
def policy() -> None:
    """Motor insurance: a per-km premium from the vehicle's signed odometer, moved by a behaviour factor.

    The insurer fixes a rate per km and factor bounds at the offer. The premium is km × rate × factor on the
    totals since the offer, where the factor starts at the minimum (full discount) and every harsh-braking or
    speeding event per 100 km adds the step, up to the maximum; each settled report charges how much that
    premium grew, so it does not matter which reports were relayed. `policy history` shows why each rate applied.

    \b
    Life of a policy:
      iotsettle policy offer --holder 0x7099… --vehicle 0xVEHICLE --rate 0.05 \\
          --min-factor 0.9 --max-factor 1.5 --step 0.1                   # the insurer offers
      iotsettle policy accept 0xPOLICY --deposit 20 --dev-account 1      # the holder checks the start, prepays
      iotsettle policy settle reports.jsonl                              # anyone relays (the oracle does this)
      iotsettle policy history 0xPOLICY                                  # km, events, factor, rate, amount, why
      iotsettle policy withdraw 0xPOLICY                                 # the insurer takes earned premiums
      iotsettle policy request-close 0xPOLICY --dev-account 1          # reports signed until the end settle
      iotsettle policy close 0xPOLICY                                    # from an hour after the end

    Health cover priced by a wearable's activity tiers: `iotsettle policy health --help`.

    Amounts are whole tokens scaled by the token's decimals ("1.5"), or base units with a wei suffix ("1500wei").
    """


policy.add_command(health)


def _token_of(ops_ctx: Any, policy_id: int) -> Any:
    return token_ops.describe_token(ops_ctx, ops.policy_of(ops_ctx, policy_id).token)


@policy.command("offer")
@click.option("--holder", type=ADDRESS, required=True, help="The policyholder (accepts with a deposit).")
@click.option("--vehicle", type=ADDRESS, required=True, help="The registered vehicle whose reports price the policy.")
@click.option("--rate", type=AMOUNT, required=True, help="Premium per km at factor ×1.00, e.g. 0.05.")
@click.option(
    "--min-factor",
    type=FACTOR,
    default="1",
    show_default=True,
    help="Factor with no harsh events (the best discount), e.g. 0.9.",
)
@click.option("--max-factor", type=FACTOR, default="1", show_default=True, help="Cap of the factor, e.g. 1.5 (≤ 5).")
@click.option(
    "--step",
    type=FACTOR,
    default="0",
    show_default=True,
    help="Factor added per harsh-braking or speeding event per 100 km, e.g. 0.1.",
)
@click.option("--token", type=TOKEN, default="TEST", show_default=True, help="TEST or an ERC-20 address.")
@click.option(
    "--start-odometer",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="The vehicle's odometer now, in metres; distance is counted from here.",
)
@click.option(
    "--start-harsh",
    type=click.IntRange(0, 2**32 - 1),
    default=0,
    show_default=True,
    help="The unit's harsh-braking count now (cumulative since installation); events are counted from here.",
)
@click.option(
    "--start-speeding",
    type=click.IntRange(0, 2**32 - 1),
    default=0,
    show_default=True,
    help="The unit's speeding count now (cumulative since installation); events are counted from here.",
)
@click.option("--notice", type=DURATION, default="0", show_default=True, help="Notice period before a close (e.g. 7d).")
@click.option(
    "--mode",
    type=click.Choice(["direct", "optimistic"]),
    default="direct",
    show_default=True,
    help="direct: every report's signature is checked on chain (MotorInsurance, charged in seconds). optimistic: "
    "reports are committed in bonded batches and claimed after the challenge window (OptimisticMotor, ≈ 2,100 gas "
    "a report instead of ≈ 19,500; docs/OPTIMISTIC.md). Chosen once: the id says which.",
)
@with_context(sender=True)
def offer_cmd(
    cmd: CommandContext,
    holder: str,
    vehicle: str,
    rate: Amount,
    min_factor: int,
    max_factor: int,
    step: int,
    token: str,
    start_odometer: int,
    start_harsh: int,
    start_speeding: int,
    notice: int,
    mode: str,
) -> None:
    """Insurer: offer HOLDER a pay-per-km policy for a registered vehicle.

    The unit's registers now (odometer, harsh-braking and speeding counts: all cumulative since it was
    installed) are fixed by the offer, so the first period pays only for what happens after it; a report
    below them is refused as a counter rollback. Every other `policy` command takes either mode's ids; an
    optimistic policy's reports are relayed by `iotsettle oracle run` with [optimistic] enabled.

    \b
    Example (0.05 TEST per km; ×0.90 for a calm driver, +0.10 per event per 100 km, at most ×1.50):
      iotsettle policy offer --holder 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 \\
          --vehicle 0xVEHICLE --rate 0.05 --min-factor 0.9 --max-factor 1.5 --step 0.1 --notice 1d \\
          --start-odometer 1000000 --start-harsh 500 --start-speeding 200
    """
    info = token_ops.describe_token(cmd.ops, token)
    terms = ops.Terms(
        holder,
        vehicle,
        info,
        info.to_base(rate),
        min_factor,
        max_factor,
        step,
        start_odometer,
        notice,
        start_harsh,
        start_speeding,
    )
    policy_id, result = ops.offer(cmd.ops, terms, mode)
    cmd.emit(
        {
            "policyId": str(policy_id),
            "policyIdHex": hex(policy_id),
            "mode": mode,
            "tx": result.tx_hash,
            "block": result.block,
        },
        f"{'optimistic ' if mode == 'optimistic' else ''}policy [bold]{hex(policy_id)}[/bold] offered to {holder}: "
        f"{info.format(terms.rate_per_km)} per km, "
        f"factor {ops.factor_text(min_factor)} … {ops.factor_text(max_factor)} (tx {result.tx_hash})\n"
        f"next, the holder: iotsettle policy accept {hex(policy_id)} --deposit AMOUNT",
    )


def _start_text(start: ops.StartRegisters) -> str:
    return f"odometer {start.odometer:,} m, {start.harsh} harsh braking, {start.speeding} speeding"


@policy.command()
@click.argument("policy_id", type=ID)
@click.option("--deposit", type=AMOUNT, required=True, help="Prepaid amount, e.g. 20.")
@click.option(
    "--expect-start-odometer",
    type=click.IntRange(0, 2**64 - 1),
    default=None,
    help="The odometer (metres) you agree the policy counts from; default: the offer's, as shown.",
)
@click.option(
    "--expect-start-harsh",
    type=click.IntRange(0, 2**32 - 1),
    default=None,
    help="The harsh-braking count you agree events are counted from; default: the offer's.",
)
@click.option(
    "--expect-start-speeding",
    type=click.IntRange(0, 2**32 - 1),
    default=None,
    help="The speeding count you agree events are counted from; default: the offer's.",
)
@with_context(sender=True)
def accept(
    cmd: CommandContext,
    policy_id: int,
    deposit: Amount,
    expect_start_odometer: int | None,
    expect_start_harsh: int | None,
    expect_start_speeding: int | None,
) -> None:
    """Holder: accept an offered policy and prepay DEPOSIT (the token is approved first when needed).

    The acceptance names the unit's registers the premium is counted from (the offer's odometer, harsh-braking
    and speeding counts, read from the chain and shown); the contract refuses it if they differ. State them with
    --expect-start-* to accept only the values you read off the vehicle.

    \b
    Example:
      iotsettle policy accept 0x5fbd…0001 --deposit 20 --expect-start-odometer 1000000 --dev-account 1
    """
    view = ops.policy_of(cmd.ops, policy_id)
    info = token_ops.describe_token(cmd.ops, view.token)
    offered = ops.start_registers(view)
    start = ops.StartRegisters(
        offered.odometer if expect_start_odometer is None else expect_start_odometer,
        offered.harsh if expect_start_harsh is None else expect_start_harsh,
        offered.speeding if expect_start_speeding is None else expect_start_speeding,
    )
    base = info.to_base(deposit)
    result = ops.accept(cmd.ops, policy_id, base, start)
    cmd.emit(
        {
            "policyId": str(policy_id),
            "deposit": str(base),
            "startOdometer": start.odometer,
            "startHarsh": start.harsh,
            "startSpeeding": start.speeding,
            "tx": result.tx_hash,
            "block": result.block,
        },
        f"policy {hex(policy_id)} active with {info.format(base)} prepaid, counted from "
        f"{_start_text(start)} (tx {result.tx_hash})",
    )


@policy.command("top-up")
@click.argument("policy_id", type=ID)
@click.option("--amount", type=AMOUNT, required=True, help="How much to add, e.g. 10.")
@with_context(sender=True)
def top_up(cmd: CommandContext, policy_id: int, amount: Amount) -> None:
    """Anyone: add to a policy's prepaid balance; arrears are paid first and a lapsed policy is reinstated.

    \b
    Example:
      iotsettle policy top-up 0x5fbd…0001 --amount 10 --dev-account 1
    """
    info = _token_of(cmd.ops, policy_id)
    base = info.to_base(amount)
    result, arrears_paid = ops.top_up(cmd.ops, policy_id, base)
    view = ops.policy_of(cmd.ops, policy_id)
    paid = f", {info.format(arrears_paid)} of it paid arrears" if arrears_paid else ""
    cmd.emit(
        {
            "policyId": str(policy_id),
            "amount": str(base),
            "arrearsPaid": str(arrears_paid),
            "tx": result.tx_hash,
            "block": result.block,
            "policy": view.as_dict(),
        },
        f"policy {hex(policy_id)} topped up by {info.format(base)}{paid}: prepaid {info.format(view.prepaid)}, "
        f"status {view.status} (tx {result.tx_hash})",
    )


def _show_table(view: ops.PolicyView, fmt: Any) -> Table:
    table = Table(show_header=False, title=f"policy {hex(view.policy_id)}")
    rows = [
        ("status", view.status),
        ("insurer", view.insurer),
        ("holder", view.holder),
        ("vehicle", view.vehicle),
        ("rate", f"{fmt(view.rate_per_km)} per km at ×1.00"),
        (
            "factor bounds",
            f"{ops.factor_text(view.min_factor_bps)} (no events) … "
            f"{ops.factor_text(view.max_factor_bps)} (cap); "
            f"+{ops.factor_text(view.step_bps).lstrip('×')} per event per 100 km",
        ),
        ("current factor", f"{ops.factor_text(view.last_factor_bps)} = {fmt(view.current_rate)} per km"),
        (
            "odometer",
            f"{view.last_odometer:,} m ({(view.last_odometer - view.start_odometer) / 1000:,.1f} km insured so far)",
        ),
        (
            "events so far",
            f"{view.harsh_since_offer} harsh braking, {view.speeding_since_offer} speeding since the "
            f"offer (device counters {view.last_harsh} / {view.last_speeding}, from "
            f"{view.start_harsh} / {view.start_speeding} at the offer)",
        ),
        ("last report", f"seq {view.last_seq}, {when(view.last_timestamp)}"),
        ("prepaid", fmt(view.prepaid)),
        ("arrears", fmt(view.arrears)),
        ("premiums charged", fmt(view.charged)),
        ("earnings to withdraw", fmt(view.earnings_to_withdraw)),
    ]
    if view.notice_period or view.close_at:
        rows.append(
            ("notice", f"{view.notice_period} s" + (f", close from {when(view.close_at)}" if view.close_at else ""))
        )
    for key, value in rows:
        table.add_row(key, value)
    return table


@policy.command()
@click.argument("policy_id", type=ID)
@with_context(rpc=True)
def show(cmd: CommandContext, policy_id: int) -> None:
    """Show one policy: terms, status, prepaid balance and arrears, the factor now in force.

    \b
    Example:
      iotsettle policy show 0x5fbd…0001
    """
    view = ops.policy_of(cmd.ops, policy_id)
    cmd.emit(view.as_dict(), _show_table(view, token_ops.describe_token(cmd.ops, view.token).format))


@policy.command()
@click.argument("policy_id", type=ID)
@click.option("--all", "show_all", is_flag=True, help="Also list top-ups, lapses and other changes of status.")
@with_context(rpc=True)
def history(cmd: CommandContext, policy_id: int, show_all: bool) -> None:
    """Every charged period of a policy and why its rate applied; rejected reports with the reason.

    Each period shows the km driven and the harsh-braking and speeding events counted by the vehicle since the
    previous settled report, the factor of the totals since the offer, the resulting rate per km and what the
    period added to the premium, and a sentence that derives the factor from the totals, e.g.
    "totals since the offer: 3 events in 12.4 km = 24.2 per 100 km → ×1.50 (cap)".

    \b
    Example:
      iotsettle policy history 0x5fbd…0001 --all
    """
    view, entries = ops.history(cmd.ops, policy_id)
    fmt = token_ops.describe_token(cmd.ops, view.token).format_short
    shown = [e for e in entries if show_all or e.kind in ("charged", "rejected")]
    table = Table(
        "seq",
        "km",
        "harsh",
        "speeding",
        "factor",
        "rate/km",
        "amount",
        title=f"policy {short_id(policy_id)}: {len(shown)} entries",
    )
    why: list[str] = []
    for e in shown:
        if e.kind == "charged":
            table.add_row(
                str(e.seq),
                f"{e.metres / 1000:,.1f}",
                str(e.harsh_braking),
                str(e.speeding),
                ops.factor_text(e.factor_bps),
                fmt(e.rate_per_km),
                fmt(e.amount),
            )
            why.append(f"seq {e.seq}: {e.explanation}")
        elif e.kind == "rejected":
            table.add_row(str(e.seq), "", "", "", "", "", "[red]rejected[/red]")
            why.append(f"seq {e.seq}: [red]rejected[/red], {e.explanation}")
        else:
            table.add_row("", "", "", "", "", "", f"[dim]{e.kind}[/dim]")
            why.append(f"{e.kind}: {e.explanation}")
    if cmd.as_json:
        cmd.emit({"policy": view.as_dict(), "entries": [e.as_dict() for e in shown]})
        return
    emit(None, False, table)
    if why:
        emit(None, False, "why:\n" + "\n".join(f"  {line}" for line in why))


@policy.command("request-close")
@click.argument("policy_id", type=ID)
@with_context(sender=True)
def request_close(cmd: CommandContext, policy_id: int) -> None:
    """Holder or insurer: start the notice period; reports signed until its end keep settling until `policy close`,
    which opens a grace period after the end (so reports on their way still count).

    \b
    Example:
      iotsettle policy request-close 0x5fbd…0001 --dev-account 1
    """
    result, close_at = ops.request_close(cmd.ops, policy_id)
    close_from = close_at + ops.close_delay(cmd.ops, policy_id) + 1
    cmd.emit(
        {"policyId": str(policy_id), "closeAt": close_at, "closeFrom": close_from, "tx": result.tx_hash},
        f"policy {hex(policy_id)} ends at {when(close_at)} and can be closed from {when(close_from)}: "
        f"iotsettle policy close {hex(policy_id)}",
    )


@policy.command()
@click.argument("policy_id", type=ID)
@with_context(sender=True)
def close(cmd: CommandContext, policy_id: int) -> None:
    """Anyone, once the notice and the grace after it are over: end the policy; the unused prepaid balance goes
    back to the holder (credited for `policy withdraw-refund` if the transfer fails).

    \b
    Example:
      iotsettle policy close 0x5fbd…0001
    """
    info = _token_of(cmd.ops, policy_id)
    result, refund, credited = ops.close(cmd.ops, policy_id)
    how = "credited to the holder (iotsettle policy withdraw-refund)" if credited else "refunded to the holder"
    cmd.emit(
        {"policyId": str(policy_id), "refund": str(refund), "credited": credited, "tx": result.tx_hash},
        f"policy {hex(policy_id)} closed; {info.format(refund)} {how} (tx {result.tx_hash})",
    )


@policy.command()
@click.argument("policy_id", type=ID)
@with_context(sender=True)
def withdraw(cmd: CommandContext, policy_id: int) -> None:
    """Insurer: receive the premiums earned on a policy and not yet withdrawn.

    \b
    Example:
      iotsettle policy withdraw 0x5fbd…0001
    """
    info = _token_of(cmd.ops, policy_id)
    result, paid = ops.withdraw_earnings(cmd.ops, policy_id)
    cmd.emit(
        {"policyId": str(policy_id), "amount": str(paid), "tx": result.tx_hash},
        f"insurer received {info.format(paid)} of premiums from policy {hex(policy_id)} (tx {result.tx_hash})",
    )


@policy.command("withdraw-refund")
@click.option("--token", type=TOKEN, default="TEST", show_default=True, help="TEST or an ERC-20 address.")
@approval_option
@with_context(sender=True)
def withdraw_refund(cmd: CommandContext, token: str, approval_file: str | None) -> None:
    """Holder: take the refunds credited to you when a transfer at close failed.

    Above your withdrawal guard's threshold (`iotsettle guard`), pass your device's approval.

    \b
    Examples:
      iotsettle policy withdraw-refund --dev-account 1
      iotsettle policy withdraw-refund --approval approval.json --dev-account 1
    """
    info = token_ops.describe_token(cmd.ops, token)
    submit_approval(cmd, approval_file, ops.CONTRACT)
    result, paid = ops.withdraw_refund(cmd.ops, info)
    cmd.emit(
        {"token": info.address, "amount": str(paid), "tx": result.tx_hash},
        f"received {info.format(paid)} of refunds credited by the motor policies (tx {result.tx_hash})",
    )


@policy.command("cancel")
@click.argument("policy_id", type=ID)
@with_context(sender=True)
def cancel_cmd(cmd: CommandContext, policy_id: int) -> None:
    """Insurer withdraws, or holder declines, an offer not yet accepted.

    \b
    Example:
      iotsettle policy cancel 0x5fbd…0001
    """
    result = ops.cancel_offer(cmd.ops, policy_id)
    cmd.emit(
        {"policyId": str(policy_id), "tx": result.tx_hash}, f"offer {hex(policy_id)} cancelled (tx {result.tx_hash})"
    )


@policy.command("list")
@click.option("--party", type=ADDRESS, default=None, help="Only policies where ADDRESS is insurer or holder.")
@click.option("--vehicle", type=ADDRESS, default=None, help="Only policies of this vehicle.")
@click.option("--status", "status_filter", type=click.Choice(list(POLICY_STATUSES[1:])), default=None)
@with_context(rpc=True)
def list_cmd(cmd: CommandContext, party: str | None, vehicle: str | None, status_filter: str | None) -> None:
    """List the policies of this deployment.

    \b
    Example:
      iotsettle policy list --status active
    """
    views = [
        v
        for v in ops.list_policies(cmd.ops, party=party, vehicle=vehicle)
        if not status_filter or v.status == status_filter
    ]
    table = Table(
        "id",
        "status",
        "insurer",
        "holder",
        "vehicle",
        "km",
        "factor",
        "prepaid",
        "arrears",
        title=f"{len(views)} policies",
    )
    for v in views:
        fmt = token_ops.describe_token(cmd.ops, v.token).format_short
        table.add_row(
            short_id(v.policy_id),
            v.status,
            short(v.insurer),
            short(v.holder),
            short(v.vehicle),
            f"{(v.last_odometer - v.start_odometer) / 1000:,.1f}",
            ops.factor_text(v.last_factor_bps),
            fmt(v.prepaid),
            fmt(v.arrears),
        )
    cmd.emit([v.as_dict() for v in views], table)


@policy.command()
@click.argument("source", default="-", metavar="[FILE|-]")
@with_context(sender=True)
def settle(cmd: CommandContext, source: str) -> None:
    """Relay vehicle-signed telematics reports (JSON wire payloads, one per line) from FILE or stdin; the oracle
    daemon does this continuously, this is for manual relaying. Fails when no report could be settled.

    \b
    Example:
      iotsettle policy settle reports.jsonl
    """
    text = read_payloads(source)
    result, outcomes = ops.settle(cmd.ops, ops.parse_telematics(cmd.ops, text))
    data = {
        "tx": result.tx_hash,
        "block": result.block,
        "gasUsed": result.gas_used,
        "results": [
            {
                "policyId": str(o.policy_id),
                "seq": o.seq,
                "settled": o.settled,
                "reason": o.reason or None,
                "amount": str(o.amount),
                "factor": ops.factor_text(o.factor_bps) if o.settled else None,
            }
            for o in outcomes
        ],
    }
    table = Table(
        "policy",
        "seq",
        "result",
        "factor",
        "premium",
        title=f"relayed in block {result.block}, gas {result.gas_used:,}",
    )
    for o in outcomes:
        premium = _token_of(cmd.ops, o.policy_id).format(o.amount) if o.settled else ""
        table.add_row(
            short_id(o.policy_id),
            str(o.seq),
            "settled" if o.settled else f"rejected: {o.reason}",
            ops.factor_text(o.factor_bps) if o.settled else "",
            premium,
        )
    cmd.emit(data, table)
