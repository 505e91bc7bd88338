"""`iotsettle agreement ...`: prepaid metered billing settled from a meter's signed cumulative register."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

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
from iotsettle.oracle.ops.amounts import Amount
from iotsettle.oracle.protocol.errors import ChainError
from rich.table import Table

if TYPE_CHECKING:
    from iotsettle.oracle.ops import billing as ops
    from iotsettle.oracle.ops import token as token_ops
    from iotsettle.oracle.ops import views
else:
    ops = lazy_import("iotsettle.oracle.ops.billing")
    token_ops = lazy_import("iotsettle.oracle.ops.token")
    views = lazy_import("iotsettle.oracle.ops.views")


@click.group(cls=IotSettleGroup)
def agreement() -> None:
    """Metered billing: a provider offers, the consumer prepays, each signed meter reading bills the delta.

    \b
    Life of an agreement:
      iotsettle agreement open --consumer 0x7099… --device 0xMETER --price 0.01      # provider offers
      iotsettle agreement accept 0xAGREEMENT --deposit 50 --expect-start-value 1200 --dev-account 1
                                                                                    # consumer prepays
      iotsettle agreement settle readings.jsonl                                     # anyone relays readings
      iotsettle agreement withdraw 0xAGREEMENT                                      # provider takes earnings
      iotsettle agreement close 0xAGREEMENT --dev-account 1                         # consumer gets the rest back

    Closing: `close` requests it (closeAt = now + notice) and pays the rest strictly after closeAt + 1 h: readings
    signed by closeAt keep settling until then, later ones are refused. `close --reading final.json` settles a
    fresh signed final reading and ends the agreement now, without the notice; the refund still follows the grace.

    Amounts are whole tokens scaled by the token's decimals ("1.5"), or base units with a wei suffix ("1500wei").
    """


@agreement.command("open")
@click.option("--consumer", type=ADDRESS, required=True, help="Who pays (accepts with a deposit).")
@click.option("--device", type=ADDRESS, required=True, help="The registered meter or vehicle whose readings bill.")
@click.option("--price", type=AMOUNT, default=None, help="Flat price per unit (creates a one-block tariff).")
@click.option("--tariff", "tariff_id", type=click.IntRange(1), default=None, help="Use an existing tariff id instead.")
@click.option("--token", type=TOKEN, default="TEST", show_default=True, help="ETH, TEST or an ERC-20 address.")
@click.option(
    "--start-value",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="The meter's register now; consumption is counted from here.",
)
@click.option("--notice", type=DURATION, default="0", show_default=True, help="Notice period before a close (e.g. 7d).")
@click.option(
    "--mode",
    type=click.Choice(["direct", "optimistic"]),
    default="direct",
    show_default=True,
    help="direct: every reading's signature is checked on chain (MeteredBilling, paid in seconds). optimistic: "
    "readings are committed in bonded batches and claimed after the challenge window (OptimisticBilling, "
    "≈ 2,000 gas a reading instead of ≈ 15,000; docs/OPTIMISTIC.md). Chosen once: the id says which.",
)
@with_context(sender=True)
def open_cmd(
    cmd: CommandContext,
    consumer: str,
    device: str,
    price: Amount | None,
    tariff_id: int | None,
    token: str,
    start_value: int,
    notice: int,
    mode: str,
) -> None:
    """Provider: offer CONSUMER an agreement for a meter, at --price per unit or an existing --tariff.

    The consumer then accepts it with a deposit (`agreement accept`). Every other `agreement` command takes either
    mode's ids; an optimistic agreement's readings are relayed by `iotsettle oracle run` with [optimistic] enabled.

    \b
    Examples:
      iotsettle agreement open --consumer 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 \\
          --device 0xMETER --price 0.01 --start-value 1200 --notice 1d
      iotsettle agreement open --consumer 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 \\
          --device 0xMETER --tariff 1 --mode optimistic
    """
    if (price is None) == (tariff_id is None):
        raise click.UsageError("give exactly one of --price or --tariff")
    info = token_ops.describe_token(cmd.ops, token)
    tariff_tx = None
    if price is not None:
        tariff_id, tariff_tx = ops.create_flat_tariff(cmd.ops, info.to_base(price))
    assert tariff_id is not None
    agreement_id, result = ops.offer(
        cmd.ops,
        consumer=consumer,
        device=device,
        tariff_id=tariff_id,
        token=info,
        start_value=start_value,
        notice_period=notice,
        mode=mode,
    )
    data = {
        "agreementId": str(agreement_id),
        "mode": mode,
        "agreementIdHex": hex(agreement_id),
        "tariffId": tariff_id,
        "tariffTx": tariff_tx.tx_hash if tariff_tx else None,
        "tx": result.tx_hash,
        "block": result.block,
    }
    cmd.emit(
        data,
        f"{'optimistic ' if mode == 'optimistic' else ''}agreement [bold]{hex(agreement_id)}[/bold] offered to "
        f"{consumer} with tariff {tariff_id} "
        f"(tx {result.tx_hash})\nnext, the consumer: iotsettle agreement accept {hex(agreement_id)} "
        "--deposit AMOUNT",
    )


@agreement.command()
@click.argument("agreement_id", type=ID)
@click.option("--deposit", type=AMOUNT, required=True, help="Prepaid amount, e.g. 50.")
@click.option(
    "--expect-start-value",
    "expected_start",
    type=click.IntRange(0),
    default=None,
    help="The meter register you agree billing starts from; refused if the offer names another. "
    "Without it the offer's start value is accepted and shown.",
)
@with_context(sender=True)
def accept(cmd: CommandContext, agreement_id: int, deposit: Amount, expected_start: int | None) -> None:
    """Consumer: accept an offered agreement and prepay DEPOSIT (ERC-20s are approved first when needed).

    The acceptance names the meter's start value it accepts: consumption is billed from there. Read it off your
    meter and pass it with --expect-start-value; otherwise the offer's value is used and shown.

    \b
    Example:
      iotsettle agreement accept 0x5fbd…0001 --deposit 50 --expect-start-value 1200 --dev-account 1
    """
    view = ops.agreement_of(cmd.ops, agreement_id)
    info = token_ops.describe_token(cmd.ops, view.token)
    base = info.to_base(deposit)
    start = view.start_value if expected_start is None else expected_start
    result = ops.accept(cmd.ops, agreement_id, base, start)
    cmd.emit(
        {
            "agreementId": str(agreement_id),
            "deposit": str(base),
            "startValue": start,
            "tx": result.tx_hash,
            "block": result.block,
        },
        f"agreement {hex(agreement_id)} active with {info.format(base)} prepaid, billing the meter from register "
        f"{start} (tx {result.tx_hash})",
    )


@agreement.command("top-up")
@click.argument("agreement_id", type=ID)
@click.option("--amount", type=AMOUNT, required=True, help="How much to add, e.g. 20.")
@with_context(sender=True)
def top_up(cmd: CommandContext, agreement_id: int, amount: Amount) -> None:
    """Add to an agreement's prepaid balance; arrears are paid first and a suspended agreement resumes.

    \b
    Example:
      iotsettle agreement top-up 0x5fbd…0001 --amount 20 --dev-account 1
    """
    info = token_ops.describe_token(cmd.ops, ops.agreement_of(cmd.ops, agreement_id).token)
    base = info.to_base(amount)
    result = ops.top_up(cmd.ops, agreement_id, base)
    view = ops.agreement_of(cmd.ops, agreement_id)
    cmd.emit(
        {
            "agreementId": str(agreement_id),
            "amount": str(base),
            "tx": result.tx_hash,
            "block": result.block,
            "agreement": view.as_dict(),
        },
        f"agreement {hex(agreement_id)} topped up by {info.format(base)}: prepaid {info.format(view.prepaid)}, "
        f"status {view.status} (tx {result.tx_hash})",
    )


def _status_table(view: ops.AgreementView, fmt: Callable[[int], str], delay: int, mode: str) -> Table:
    table = Table(show_header=False, title=f"agreement {hex(view.agreement_id)}")
    f = fmt
    rows = [
        ("status", view.status),
        ("mode", f"{mode} ({'OptimisticBilling' if mode == 'optimistic' else 'MeteredBilling'})"),
        ("provider", view.provider),
        ("consumer", view.consumer),
        ("meter", view.device),
        ("tariff", str(view.tariff_id)),
        ("register", f"{view.last_value} (started at {view.start_value})"),
        ("last seq", str(view.last_seq)),
        ("last reading", when(view.last_timestamp)),
        ("prepaid", f(view.prepaid)),
        ("billed", f(view.billed)),
        ("earnings to withdraw", f(view.earnings)),
        ("withdrawn", f(view.withdrawn)),
    ]
    if view.arrears:
        rows.append(("arrears", f(view.arrears)))
    if view.notice_period or view.close_at:
        rows.append(
            (
                "notice",
                f"{view.notice_period} s"
                + (
                    f", readings until {when(view.close_at)}, close from {when(view.close_at + delay + 1)}"
                    if view.close_at
                    else ""
                ),
            )
        )
    for key, value in rows:
        table.add_row(key, value)
    return table


@agreement.command()
@click.argument("agreement_id", type=ID)
@with_context(rpc=True)
def status(cmd: CommandContext, agreement_id: int) -> None:
    """Show one agreement: parties, meter, register, prepaid balance, billed and withdrawable earnings.

    \b
    Example:
      iotsettle agreement status 0x5fbd…0001
    """
    shown = views.agreement_status(cmd.reads, agreement_id)
    cmd.emit(
        {**shown.agreement.as_dict(), "mode": shown.mode},
        _status_table(shown.agreement, shown.token.format, shown.close_delay, shown.mode),
    )


@agreement.command("list")
@click.option("--party", type=ADDRESS, default=None, help="Only agreements where ADDRESS is provider or consumer.")
@click.option("--device", type=ADDRESS, default=None, help="Only agreements of this meter.")
@click.option(
    "--status",
    "status_filter",
    type=click.Choice(["offered", "active", "suspended", "closed", "cancelled"]),
    default=None,
)
@with_context(rpc=True)
def list_cmd(cmd: CommandContext, party: str | None, device: str | None, status_filter: str | None) -> None:
    """List agreements of this deployment (from the contract's AgreementOffered events).

    \b
    Example:
      iotsettle agreement list --status active
    """
    views = [
        v
        for v in ops.list_agreements(cmd.ops, party=party, device=device)
        if not status_filter or v.status == status_filter
    ]
    table = Table(
        "id",
        "status",
        "provider",
        "consumer",
        "meter",
        "register",
        "prepaid",
        "billed",
        title=f"{len(views)} agreements",
    )
    for v in views:
        fmt = token_ops.describe_token(cmd.ops, v.token).format
        table.add_row(
            short_id(v.agreement_id),
            v.status,
            short(v.provider),
            short(v.consumer),
            short(v.device),
            str(v.last_value),
            fmt(v.prepaid),
            fmt(v.billed),
        )
    cmd.emit([v.as_dict() for v in views], table)


@agreement.command()
@click.argument("source", default="-", metavar="[FILE|-]")
@with_context(sender=True)
def settle(cmd: CommandContext, source: str) -> None:
    """Relay meter-signed readings (JSON wire payloads, one per line) from FILE or stdin; the oracle daemon does
    this continuously, this is for manual relaying.

    Only the newest reading per agreement needs to go on chain: the meter signs its cumulative register.

    \b
    Example:
      iotsettle agreement settle readings.jsonl
    """
    text = read_payloads(source)
    events = ops.parse_readings(cmd.ops, text)
    result, outcomes = ops.settle(cmd.ops, events)
    data = {
        "tx": result.tx_hash,
        "block": result.block,
        "gasUsed": result.gas_used,
        "results": [
            {
                "agreementId": str(o.agreement_id),
                "seq": o.seq,
                "settled": o.settled,
                "reason": o.reason or None,
                "amount": str(o.amount),
            }
            for o in outcomes
        ],
    }
    table = Table(
        "agreement", "seq", "result", "billed", title=f"relayed in block {result.block}, gas {result.gas_used:,}"
    )
    for o in outcomes:
        fmt = token_ops.describe_token(cmd.ops, ops.agreement_of(cmd.ops, o.agreement_id).token).format
        table.add_row(
            short_id(o.agreement_id),
            str(o.seq),
            "settled" if o.settled else f"rejected: {o.reason}",
            fmt(o.amount) if o.settled else "",
        )
    cmd.emit(data, table)
    if not cmd.as_json:
        emit(None, False, f"tx {result.tx_hash}")


@agreement.command()
@click.argument("agreement_id", type=ID)
@with_context(sender=True)
def withdraw(cmd: CommandContext, agreement_id: int) -> None:
    """Provider: receive everything billed and not yet withdrawn.

    \b
    Example:
      iotsettle agreement withdraw 0x5fbd…0001
    """
    info = token_ops.describe_token(cmd.ops, ops.agreement_of(cmd.ops, agreement_id).token)
    result, paid = ops.withdraw_earnings(cmd.ops, agreement_id)
    cmd.emit(
        {"agreementId": str(agreement_id), "amount": str(paid), "tx": result.tx_hash, "block": result.block},
        f"provider received {info.format(paid)} from agreement {hex(agreement_id)} (tx {result.tx_hash})",
    )


@agreement.command()
@click.argument("agreement_id", type=ID)
@click.option(
    "--reading",
    "reading_source",
    default=None,
    metavar="FILE",
    help="End now, without the notice, on this fresh signed final reading (a wire payload; - reads "
    "stdin); the refund follows with `agreement close` after the grace.",
)
@with_context(sender=True)
def close(cmd: CommandContext, agreement_id: int, reading_source: str | None) -> None:
    """Consumer: close the agreement and get the unbilled prepaid balance back.

    The first call requests the close: closeAt = now + the notice period. Readings signed by closeAt keep
    settling for a settlement grace of 1 hour after it, so run the command again from closeAt + 1 h + 1 s to be
    paid (an optimistic agreement waits the grace, its challenge window and one more grace: the command and
    `agreement status` say from when). With --reading (direct agreements only), a fresh signed final reading of
    the meter settles and the agreement ends now, without the notice period; newer readings signed by then still
    settle during the grace, and the refund is claimed by running the command again (without --reading) from
    closeAt + 1 h + 1 s.

    \b
    Examples:
      iotsettle agreement close 0x5fbd…0001 --dev-account 1
      iotsettle agreement close 0x5fbd…0001 --reading final.json --dev-account 1
    """
    if reading_source is not None and ops.contract_of(agreement_id) == ops.OPTIMISTIC:
        raise click.BadParameter(
            f"agreement {hex(agreement_id)} is optimistic: it ends with its notice (its readings reach the chain in "
            "batches, not one by one)",
            param_hint="--reading",
        )
    info = token_ops.describe_token(cmd.ops, ops.agreement_of(cmd.ops, agreement_id).token)
    if reading_source is not None:
        events = ops.parse_readings(cmd.ops, read_payloads(reading_source))
        if len(events) != 1 or events[0].target_id != agreement_id:
            raise click.BadParameter(
                f"give exactly one reading of agreement {hex(agreement_id)}", param_hint="--reading"
            )
        outcome = ops.close_with_reading(cmd.ops, events[0])
    else:
        outcome = ops.close(cmd.ops, agreement_id)
    data = {
        "agreementId": str(agreement_id),
        "closed": outcome.closed,
        "closeAt": outcome.close_at,
        "closableFrom": outcome.closable_from,
        "refund": str(outcome.refund),
        "txs": [t.tx_hash for t in outcome.txs],
    }
    if outcome.closed:
        human = f"agreement {hex(agreement_id)} closed; {info.format(outcome.refund)} refunded to the consumer"
    elif reading_source is not None:
        human = (
            f"final reading settled; agreement {hex(agreement_id)} ends at {when(outcome.close_at)} (readings "
            f"signed until then still bill); claim the refund from {when(outcome.closable_from)} with: "
            f"iotsettle agreement close {hex(agreement_id)}"
        )
    else:
        human = (
            f"close requested: readings signed until {when(outcome.close_at)} still bill; agreement "
            f"{hex(agreement_id)} can be closed from {when(outcome.closable_from)}: run this command again then"
        )
    cmd.emit(data, human)


@agreement.command("cancel")
@click.argument("agreement_id", type=ID)
@with_context(sender=True)
def cancel_cmd(cmd: CommandContext, agreement_id: int) -> None:
    """Provider withdraws, or consumer declines, an offer not yet accepted.

    \b
    Example:
      iotsettle agreement cancel 0x5fbd…0001
    """
    result = ops.cancel_offer(cmd.ops, agreement_id)
    cmd.emit(
        {"agreementId": str(agreement_id), "tx": result.tx_hash},
        f"offer {hex(agreement_id)} cancelled (tx {result.tx_hash})",
    )


@agreement.command()
@click.argument("tariff_id", type=click.IntRange(1))
@click.option("--token", type=TOKEN, default="TEST", show_default=True, help="Token to show the prices in.")
@with_context(rpc=True)
def tariff(cmd: CommandContext, tariff_id: int, token: str) -> None:
    """Show a tariff's blocks (units, price per unit).

    \b
    Example:
      iotsettle agreement tariff 1
    """
    blocks = ops.tariff_of(cmd.ops, tariff_id)
    if not blocks:
        raise ChainError(f"tariff {tariff_id} does not exist")
    fmt = token_ops.describe_token(cmd.ops, token).format
    table = Table("block", "units", "price per unit", title=f"tariff {tariff_id}")
    for n, (units, price) in enumerate(blocks, 1):
        table.add_row(str(n), str(units) if units else "the rest", fmt(price))
    cmd.emit([{"units": u, "price": str(p)} for u, p in blocks], table)
