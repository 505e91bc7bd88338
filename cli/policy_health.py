"""`iotsettle policy health ...`: health cover priced per period by a wearable's signed activity tier."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from iotsettle.cli._common import IotSettleGroup
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
from iotsettle.oracle.device.activity import Thresholds
from iotsettle.oracle.ops.amounts import Amount
from iotsettle.oracle.ops.vocabulary import HEALTH_POLICY_STATUSES
from rich.console import Group
from rich.table import Table

if TYPE_CHECKING:
    from iotsettle.oracle.ops import health as ops
    from iotsettle.oracle.ops import token as token_ops
else:
    ops = lazy_import("iotsettle.oracle.ops.health")
    token_ops = lazy_import("iotsettle.oracle.ops.token")


def _three(text: str, what: str, limit: int) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: {what} are three integers, e.g. 35000,56000,84000") from None
    if len(values) != 3 or not all(0 <= v <= limit for v in values):
        raise click.BadParameter(f"{text!r}: {what} are three integers between 0 and {limit}")
    return values[0], values[1], values[2]


def _tier_text(tier: int | None) -> str:
    return "—" if tier is None else f"tier {tier}"


@click.group(cls=IotSettleGroup)
def health() -> None:
    """Health cover: each period costs a base rate less the discount of the wearable's signed activity tier.

    The wearable counts steps and active minutes over each period and signs only the tier (0–3) they reach
    against thresholds fixed in the policy: the data itself never leaves it. A period with no summary costs the
    base rate; a summary that arrives later, even after the close, gives its discount back.

    \b
    Life of a policy:
      iotsettle policy health offer --holder 0x7099… --wearable 0xWEARABLE --rate 10 --period 7d --periods 52
      iotsettle policy health accept 0xPOLICY --deposit 520 --dev-account 1     # period 0 starts now
      iotsettle policy health settle summaries.jsonl                          # anyone relays (the oracle does)
      iotsettle policy health show 0xPOLICY                                   # tiers and premium per period
      iotsettle policy health withdraw 0xPOLICY                               # the insurer takes what is final
      iotsettle policy health close 0xPOLICY                                  # anyone, after the last period
    """


def _token_of(ops_ctx: Any, policy_id: int) -> Any:
    return token_ops.describe_token(ops_ctx, ops.policy_of(ops_ctx, policy_id).token)


@health.command("offer")
@click.option("--holder", type=ADDRESS, required=True, help="The policyholder (accepts with a deposit).")
@click.option("--wearable", type=ADDRESS, required=True, help="The holder's registered wearable.")
@click.option("--rate", type=AMOUNT, required=True, help="Premium of one period with no discount, e.g. 10.")
@click.option("--period", type=DURATION, default="7d", show_default=True, help="Length of one period, e.g. 7d.")
@click.option("--periods", type=click.IntRange(1, 1008), default=52, show_default=True, help="Periods of cover.")
@click.option(
    "--discounts",
    default="0,10,20,35",
    show_default=True,
    help="Percent off the rate at tiers 0,1,2,3 (not falling, at most 100).",
)
@click.option(
    "--min-steps",
    default="35000,56000,84000",
    show_default=True,
    help="Steps per period that tiers 1,2,3 need.",
)
@click.option(
    "--min-active-minutes",
    default="150,210,300",
    show_default=True,
    help="Active minutes per period that tiers 1,2,3 need.",
)
@click.option("--token", type=TOKEN, default="TEST", show_default=True, help="TEST or an ERC-20 address.")
@with_context(sender=True)
def offer_cmd(
    cmd: CommandContext,
    holder: str,
    wearable: str,
    rate: Amount,
    period: int,
    periods: int,
    discounts: str,
    min_steps: str,
    min_active_minutes: str,
    token: str,
) -> None:
    """Insurer: offer HOLDER health cover priced by a registered wearable's activity tiers.

    \b
    Example (10 TEST a week for a year; 10 %, 20 %, 35 % off at tiers 1–3):
      iotsettle policy health offer --holder 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 \\
          --wearable 0xWEARABLE --rate 10 --period 7d --periods 52 --discounts 0,10,20,35 \\
          --min-steps 35000,56000,84000 --min-active-minutes 150,210,300
    """
    parts = discounts.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() and int(p) <= 100 for p in parts):
        raise click.BadParameter(f"{discounts!r}: four percentages for tiers 0,1,2,3, e.g. 0,10,20,35")
    bps = (int(parts[0]) * 100, int(parts[1]) * 100, int(parts[2]) * 100, int(parts[3]) * 100)
    thresholds = Thresholds(
        _three(min_steps, "step thresholds", 2**32 - 1), _three(min_active_minutes, "minute thresholds", 2**16 - 1)
    )
    info = token_ops.describe_token(cmd.ops, token)
    terms = ops.Terms(holder, wearable, info, info.to_base(rate), period, periods, bps, thresholds)
    policy_id, result = ops.offer(cmd.ops, terms)
    cmd.emit(
        {"policyId": str(policy_id), "policyIdHex": hex(policy_id), "tx": result.tx_hash, "block": result.block},
        f"health policy [bold]{hex(policy_id)}[/bold] offered to {holder}: {info.format(terms.base_rate)} per "
        f"{period} s period, {periods} periods (tx {result.tx_hash})\n"
        f"next, the holder: iotsettle policy health accept {hex(policy_id)} --deposit AMOUNT",
    )


@health.command()
@click.argument("policy_id", type=ID)
@click.option("--deposit", type=AMOUNT, required=True, help="Prepaid amount, e.g. 520.")
@with_context(sender=True)
def accept(cmd: CommandContext, policy_id: int, deposit: Amount) -> None:
    """Holder: accept an offered health policy and prepay DEPOSIT; its first period starts now.

    \b
    Example:
      iotsettle policy health accept 0x5fbd…0001 --deposit 520 --dev-account 1
    """
    info = _token_of(cmd.ops, policy_id)
    base = info.to_base(deposit)
    result = ops.accept(cmd.ops, policy_id, base)
    view = ops.policy_of(cmd.ops, policy_id)
    cmd.emit(
        {"policyId": str(policy_id), "deposit": str(base), "start": view.start, "tx": result.tx_hash},
        f"health policy {hex(policy_id)} active from {when(view.start)} with {info.format(base)} prepaid "
        f"(tx {result.tx_hash})",
    )


@health.command("top-up")
@click.argument("policy_id", type=ID)
@click.option("--amount", type=AMOUNT, required=True, help="How much to add, e.g. 10.")
@with_context(sender=True)
def top_up(cmd: CommandContext, policy_id: int, amount: Amount) -> None:
    """Anyone: add to an active health policy's deposit.

    \b
    Example:
      iotsettle policy health top-up 0x5fbd…0001 --amount 10 --dev-account 1
    """
    info = _token_of(cmd.ops, policy_id)
    base = info.to_base(amount)
    result = ops.top_up(cmd.ops, policy_id, base)
    view = ops.policy_of(cmd.ops, policy_id)
    cmd.emit(
        {"policyId": str(policy_id), "amount": str(base), "tx": result.tx_hash, "policy": view.as_dict()},
        f"health policy {hex(policy_id)} topped up by {info.format(base)}: prepaid {info.format(view.prepaid)}",
    )


@health.command()
@click.argument("policy_id", type=ID)
@with_context(rpc=True)
def show(cmd: CommandContext, policy_id: int) -> None:
    """Show one health policy: terms, money, and every period's best tier and cost so far.

    \b
    Example:
      iotsettle policy health show 0x5fbd…0001 --json
    """
    view = ops.policy_of(cmd.ops, policy_id)
    fmt = token_ops.describe_token(cmd.ops, view.token).format
    periods = ops.tiers(cmd.ops, policy_id, view)
    summary = Table(show_header=False, title=f"health policy {hex(policy_id)}")
    steps, minutes = view.min_steps, view.min_active_minutes
    rows = [
        ("status", view.status),
        ("holder", view.holder),
        ("wearable", view.wearable),
        ("rate", f"{fmt(view.base_rate)} per period of {view.period_length} s, {view.periods} periods"),
        ("discounts", ", ".join(f"tier {t}: {d / 100:g} %" for t, d in enumerate(view.discount_bps))),
        ("thresholds", ", ".join(f"tier {t + 1}: {steps[t]} steps + {minutes[t]} min" for t in range(3))),
        ("periods over", f"{view.due_periods} ({view.summarised} summarised)"),
        ("premium so far", fmt(view.premium)),
        ("prepaid", fmt(view.prepaid)),
        ("arrears", fmt(view.arrears)),
        ("refunded", fmt(view.refunded)),
        ("insurer can withdraw", fmt(view.earnings)),
    ]
    for key, value in rows:
        summary.add_row(key, value)
    table = Table("period", "from", "tier", "cost", title="periods")
    for p in periods:
        table.add_row(str(p.period), when(p.start), _tier_text(p.tier), fmt(p.cost) if p.due else "running")
    cmd.emit({**view.as_dict(), "periodTiers": [p.as_dict() for p in periods]}, Group(summary, table))


@health.command("list")
@click.option("--party", type=ADDRESS, default=None, help="Only policies where ADDRESS is insurer or holder.")
@click.option("--wearable", type=ADDRESS, default=None, help="Only policies of this wearable.")
@click.option("--status", "status_filter", type=click.Choice(list(HEALTH_POLICY_STATUSES[1:])), default=None)
@with_context(rpc=True)
def list_cmd(cmd: CommandContext, party: str | None, wearable: str | None, status_filter: str | None) -> None:
    """List the health policies of this deployment, with each holder's tiers and premium.

    \b
    Example:
      iotsettle policy health list --status active
    """
    views = [
        v
        for v in ops.list_policies(cmd.ops, party=party, wearable=wearable)
        if status_filter is None or v.status == status_filter
    ]
    table = Table("policy", "holder", "status", "periods over", "tiers 0/1/2/3", "premium", "prepaid")
    for v in views:
        fmt = token_ops.describe_token(cmd.ops, v.token).format
        table.add_row(
            short_id(v.policy_id),
            short(v.holder),
            v.status,
            f"{v.due_periods}/{v.periods}",
            "/".join(str(n) for n in v.tier_counts),
            fmt(v.premium),
            fmt(v.prepaid),
        )
    cmd.emit([v.as_dict() for v in views], table)


@health.command()
@click.argument("source", default="-", metavar="[FILE|-]")
@with_context(sender=True)
def settle(cmd: CommandContext, source: str) -> None:
    """Relay wearable-signed activity summaries (JSON wire payloads, one per line) from FILE or stdin; the oracle
    daemon does this continuously. Fails when no summary could be settled.

    \b
    Example:
      iotsettle policy health settle summaries.jsonl --json
    """
    result, outcomes = ops.settle(cmd.ops, ops.parse_summaries(cmd.ops, read_payloads(source)))
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
                "period": o.period if o.settled else None,
                "tier": o.tier if o.settled else None,
            }
            for o in outcomes
        ],
    }
    table = Table("policy", "seq", "result", "period", "tier", title=f"relayed in block {result.block}")
    for o in outcomes:
        table.add_row(
            short_id(o.policy_id),
            str(o.seq),
            "settled" if o.settled else f"rejected: {o.reason}",
            str(o.period) if o.settled else "",
            str(o.tier) if o.settled else "",
        )
    cmd.emit(data, table)


@health.command()
@click.argument("policy_id", type=ID)
@with_context(sender=True)
def close(cmd: CommandContext, policy_id: int) -> None:
    """Anyone, once the last period is over: end the policy and refund the unused deposit to the holder.

    \b
    Example:
      iotsettle policy health close 0x5fbd…0001
    """
    info = _token_of(cmd.ops, policy_id)
    result, refund, credited = ops.close(cmd.ops, policy_id)
    how = "credited (withdraw-credit)" if credited else "sent"
    cmd.emit(
        {"policyId": str(policy_id), "refund": str(refund), "credited": credited, "tx": result.tx_hash},
        f"health policy {hex(policy_id)} closed: {info.format(refund)} {how} to the holder (tx {result.tx_hash})",
    )


@health.command()
@click.argument("policy_id", type=ID)
@with_context(sender=True)
def withdraw(cmd: CommandContext, policy_id: int) -> None:
    """Insurer: take the premium no later summary can take back (each period over, at the best tier's price).

    \b
    Example:
      iotsettle policy health withdraw 0x5fbd…0001
    """
    info = _token_of(cmd.ops, policy_id)
    result, amount = ops.withdraw_earnings(cmd.ops, policy_id)
    cmd.emit(
        {"policyId": str(policy_id), "amount": str(amount), "tx": result.tx_hash},
        f"{info.format(amount)} withdrawn from health policy {hex(policy_id)} (tx {result.tx_hash})",
    )


@health.command("withdraw-credit")
@click.option("--token", type=TOKEN, default="TEST", show_default=True, help="TEST or an ERC-20 address.")
@with_context(sender=True)
def withdraw_credit(cmd: CommandContext, token: str) -> None:
    """Holder: take what the health policies credited you (discounts of summaries settled after a close).

    \b
    Example:
      iotsettle policy health withdraw-credit --dev-account 1
    """
    info = token_ops.describe_token(cmd.ops, token)
    result, amount = ops.withdraw_credit(cmd.ops, info)
    cmd.emit(
        {"token": info.address, "amount": str(amount), "tx": result.tx_hash},
        f"{info.format(amount)} withdrawn (tx {result.tx_hash})",
    )
