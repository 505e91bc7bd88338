"""`iotsettle escrow ...`: delivery escrows released by a tracker's signed delivery."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import click
from iotsettle.cli._common import IotSettleGroup, emit
from iotsettle.cli._lazy import lazy_import
from iotsettle.cli._params import (
    ADDRESS,
    AMOUNT,
    DEADLINE,
    ID,
    TOKEN,
    CommandContext,
    read_payloads,
    short,
    when,
    with_context,
)
from iotsettle.cli.guard import approval_option, submit_approval
from iotsettle.oracle.ops.amounts import Amount
from iotsettle.oracle.protocol.errors import ProtocolError
from iotsettle.oracle.protocol.location import location_bytes32, location_geohash
from rich.table import Table

if TYPE_CHECKING:
    from iotsettle.oracle.ops import escrow as ops
    from iotsettle.oracle.ops import token as token_ops
    from iotsettle.oracle.ops import views
else:
    ops = lazy_import("iotsettle.oracle.ops.escrow")
    token_ops = lazy_import("iotsettle.oracle.ops.token")
    views = lazy_import("iotsettle.oracle.ops.views")


@click.group(cls=IotSettleGroup)
def escrow() -> None:
    """Delivery escrows: the buyer locks the price, the tracker's signed delivery at the destination pays the seller.

    \b
    Life of an escrow:
      iotsettle escrow create --seller 0x7099… --device 0xTRACKER --amount 25 --destination u33dc0cr --deadline +2d
      iotsettle escrow confirm delivery.json      # anyone relays the tracker's signed delivery
      iotsettle escrow withdraw --dev-account 1   # the seller takes the money
      iotsettle escrow refund 7                   # or: the buyer, 1 h after the deadline

    Amounts are whole tokens scaled by the token's decimals ("1.5"), or base units with a wei suffix ("1500wei").
    """


def _destination(text: str) -> bytes:
    if text.startswith("0x"):
        try:
            raw = bytes.fromhex(text[2:])
        except ValueError:
            raise click.BadParameter(f"{text!r} is not hex") from None
        if len(raw) != 32:
            raise click.BadParameter(f"{text!r} is not 32 bytes")
        return raw
    try:
        return location_bytes32(text)
    except (ValueError, ProtocolError) as exc:
        raise click.BadParameter(f"{text!r} is not a geohash: {exc}") from None


@escrow.command()
@click.option("--seller", type=ADDRESS, required=True, help="Who is paid on delivery.")
@click.option("--device", type=ADDRESS, required=True, help="The registered tracker whose signed delivery releases it.")
@click.option("--amount", type=AMOUNT, required=True, help="Price, e.g. 25 (tokens) or 25000wei (base units).")
@click.option("--token", type=TOKEN, default="TEST", show_default=True, help="ETH, TEST or an ERC-20 address.")
@click.option("--destination", required=True, help="Geohash of the destination cell (e.g. u33dc0cr) or a 0x bytes32.")
@click.option(
    "--deadline", type=DEADLINE, required=True, help="+2h / 3d from the latest block, a unix time or ISO date."
)
@click.option(
    "--temperature-limit",
    type=float,
    default=0.0,
    show_default=True,
    help="Cold chain: highest allowed temperature in °C.",
)
@click.option(
    "--penalty-bps",
    type=click.IntRange(0, 10_000),
    default=0,
    show_default=True,
    help="Cold chain: share (basis points) returned to the buyer when the limit was exceeded; 0 = no terms.",
)
@with_context(sender=True)
def create(
    cmd: CommandContext,
    seller: str,
    device: str,
    amount: Amount,
    token: str,
    destination: str,
    deadline: tuple[str, int],
    temperature_limit: float,
    penalty_bps: int,
) -> None:
    """Create an escrow and fund it in the same transaction (the sender is the buyer).

    For an ERC-20, the escrow contract is approved first when the allowance is short.

    \b
    Example:
      iotsettle escrow create --seller 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 \\
          --device 0xTRACKER --amount 25 --destination u33dc0cr --deadline +2d
    """
    info = token_ops.describe_token(cmd.ops, token)
    base = info.to_base(amount)
    created = ops.create(
        cmd.ops,
        seller=seller,
        device=device,
        token=info,
        amount=base,
        destination=_destination(destination),
        deadline=cmd.chain_time(deadline),
        temperature_limit=round(temperature_limit * 100),
        penalty_bps=penalty_bps,
    )
    view = ops.escrow_of(cmd.ops, created.escrow_id)
    data = {
        "escrowId": created.escrow_id,
        "tx": created.tx.tx_hash,
        "block": created.tx.block,
        "gasUsed": created.tx.gas_used,
        "approveTx": created.approve_tx.tx_hash if created.approve_tx else None,
        "escrow": view.as_dict(),
    }
    cmd.emit(
        data,
        f"escrow [bold]{created.escrow_id}[/bold] funded with {info.format(base)} "
        f"(tx {created.tx.tx_hash}, block {created.tx.block}); deadline {when(view.deadline)}",
    )


@escrow.command()
@click.option("--amount", type=AMOUNT, required=True, help="How much the escrow contract may take.")
@click.option("--token", type=TOKEN, default="TEST", show_default=True, help="TEST or an ERC-20 address.")
@with_context(sender=True)
def fund(cmd: CommandContext, amount: Amount, token: str) -> None:
    """Approve the escrow contract to take AMOUNT of an ERC-20 ahead of `escrow create`.

    `create` moves the money itself (and approves when needed); use `fund` when the approval must be a separate,
    reviewable step, e.g. from a keystore on another machine.

    \b
    Example:
      iotsettle escrow fund --amount 100 --token TEST
    """
    info = token_ops.describe_token(cmd.ops, token)
    base = info.to_base(amount)
    result = ops.approve(cmd.ops, info, base)
    data = {"token": info.address, "amount": str(base), "tx": result.tx_hash if result else None}
    cmd.emit(
        data,
        f"the escrow contract may take {info.format(base)}"
        + (f" (tx {result.tx_hash})" if result else " (the allowance was already enough)"),
    )


def _geohash(destination: str) -> str:
    """A destination as its geohash when it is one (the usual case), else the raw bytes32."""
    try:
        return location_geohash(bytes.fromhex(destination[2:]))
    except (ValueError, ProtocolError):
        return destination


def _status_table(view: ops.EscrowView, fmt: Callable[[int], str], refundable_from: int) -> Table:
    table = Table(show_header=False, title=f"escrow {view.escrow_id}")
    rows = [
        ("state", view.state),
        ("buyer", view.buyer),
        ("seller", view.seller),
        ("tracker", view.device),
        ("amount", fmt(view.amount)),
        ("destination", _geohash(view.destination)),
        ("created", when(view.created_at)),
        ("deadline", when(view.deadline)),
    ]
    if view.state == "funded":
        rows.append(("refundable from", f"{when(refundable_from)} if no delivery signed by the deadline arrives"))
    if view.penalty_bps:
        rows.append(("cold chain", f"{view.temperature_limit / 100:g} °C limit, {view.penalty_bps / 100:g} % penalty"))
    if view.delivery_seq:
        rows.append(("delivery seq", str(view.delivery_seq)))
    for key, value in rows:
        table.add_row(key, value)
    return table


@escrow.command()
@click.argument("escrow_id", type=ID)
@with_context(rpc=True)
def status(cmd: CommandContext, escrow_id: int) -> None:
    """Show one escrow: parties, tracker, amount, deadline and state.

    \b
    Example:
      iotsettle escrow status 7
    """
    shown = views.escrow_status(cmd.reads, escrow_id)
    cmd.emit(shown.escrow.as_dict(), _status_table(shown.escrow, shown.token.format, shown.refundable_from))


@escrow.command("list")
@click.option("--party", type=ADDRESS, default=None, help="Only escrows where ADDRESS is buyer or seller.")
@click.option("--device", type=ADDRESS, default=None, help="Only escrows released by this tracker.")
@click.option(
    "--state",
    "state_filter",
    type=click.Choice(["funded", "released", "refunded", "cancelled"]),
    default=None,
    help="Only escrows in this state.",
)
@with_context(rpc=True)
def list_cmd(cmd: CommandContext, party: str | None, device: str | None, state_filter: str | None) -> None:
    """List escrows of this deployment (from the contract's EscrowCreated events).

    \b
    Example:
      iotsettle escrow list --party 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 --state funded
    """
    views = [
        v for v in ops.list_escrows(cmd.ops, party=party, device=device) if not state_filter or v.state == state_filter
    ]
    table = Table("id", "state", "buyer", "seller", "tracker", "amount", "deadline", title=f"{len(views)} escrows")
    for v in views:
        table.add_row(
            str(v.escrow_id),
            v.state,
            short(v.buyer),
            short(v.seller),
            short(v.device),
            token_ops.describe_token(cmd.ops, v.token).format(v.amount),
            when(v.deadline),
        )
    cmd.emit([v.as_dict() for v in views], table)


@escrow.command()
@click.argument("source", default="-", metavar="[FILE|-]")
@with_context(sender=True)
def confirm(cmd: CommandContext, source: str) -> None:
    """Relay device-signed deliveries (the JSON wire payload of docs/PROTOCOL.md) from FILE or stdin.

    Anyone may relay: the contract checks the tracker's signature itself. One payload is sent alone and a refusal
    is an error with its reason; several (one JSON object per line) go in one batch where refused items are listed.

    \b
    Example:
      iotsettle escrow confirm delivery.json
      mosquitto_sub -t 'iotsettle/v1/31337/+/events' -C 1 | iotsettle escrow confirm -
    """
    text = read_payloads(source)
    events = ops.parse_deliveries(cmd.ops, text)
    result, outcomes = ops.confirm(cmd.ops, events)
    data = {
        "tx": result.tx_hash,
        "block": result.block,
        "gasUsed": result.gas_used,
        "results": [
            {
                "escrowId": o.escrow_id,
                "seq": o.seq,
                "confirmed": o.confirmed,
                "reason": o.reason or None,
                "toSeller": str(o.to_seller),
                "toBuyer": str(o.to_buyer),
            }
            for o in outcomes
        ],
    }
    table = Table(
        "escrow",
        "seq",
        "result",
        "seller credited",
        "buyer credited",
        title=f"relayed in block {result.block}, gas {result.gas_used:,}",
    )
    for o in outcomes:
        fmt = token_ops.describe_token(cmd.ops, ops.escrow_of(cmd.ops, o.escrow_id).token).format
        table.add_row(
            str(o.escrow_id),
            str(o.seq),
            "released" if o.confirmed else f"rejected: {o.reason}",
            fmt(o.to_seller) if o.confirmed else "",
            fmt(o.to_buyer) if o.confirmed else "",
        )
    cmd.emit(data, table)
    if not cmd.as_json:
        emit(None, False, f"tx {result.tx_hash}")


@escrow.command()
@click.argument("escrow_id", type=ID)
@with_context(sender=True)
def refund(cmd: CommandContext, escrow_id: int) -> None:
    """Buyer: credit an undelivered escrow back to yourself (then `escrow withdraw`).

    Possible from one hour after the deadline (the settlement grace): a delivery the tracker signed by the
    deadline still releases the escrow to the seller if it is relayed within that hour, or at any time before
    the refund.

    \b
    Example:
      iotsettle escrow refund 7 && iotsettle escrow withdraw
    """
    result = ops.refund(cmd.ops, escrow_id)
    view = ops.escrow_of(cmd.ops, escrow_id)
    amount = token_ops.describe_token(cmd.ops, view.token).format(view.amount)
    cmd.emit(
        {"escrowId": escrow_id, "tx": result.tx_hash, "block": result.block, "amount": str(view.amount)},
        f"escrow {escrow_id} refunded: {amount} credited to the buyer "
        f"(tx {result.tx_hash}); run `iotsettle escrow withdraw` to receive it",
    )


@escrow.command()
@click.argument("escrow_id", type=ID)
@with_context(sender=True)
def cancel(cmd: CommandContext, escrow_id: int) -> None:
    """Seller: give up a funded escrow; the buyer is credited the whole amount.

    \b
    Example:
      iotsettle escrow cancel 7 --dev-account 1
    """
    result = ops.cancel(cmd.ops, escrow_id)
    cmd.emit(
        {"escrowId": escrow_id, "tx": result.tx_hash, "block": result.block},
        f"escrow {escrow_id} cancelled; the buyer can withdraw the amount (tx {result.tx_hash})",
    )


@escrow.command()
@click.option("--token", type=TOKEN, default="TEST", show_default=True, help="Which credited balance to withdraw.")
@approval_option
@with_context(sender=True)
def withdraw(cmd: CommandContext, token: str, approval_file: str | None) -> None:
    """Receive everything the escrow contract credited to you in TOKEN (payments, refunds, cancellations).

    Above your withdrawal guard's threshold (`iotsettle guard`), pass your device's approval.

    \b
    Examples:
      iotsettle escrow withdraw --token TEST --dev-account 1
      iotsettle escrow withdraw --token TEST --approval approval.json --dev-account 1
    """
    info = token_ops.describe_token(cmd.ops, token)
    submit_approval(cmd, approval_file, ops.CONTRACT)
    result, paid = ops.withdraw(cmd.ops, info)
    who = cmd.ops.require_sender().address
    cmd.emit(
        {"account": who, "token": info.address, "amount": str(paid), "tx": result.tx_hash, "block": result.block},
        f"{who} received {info.format(paid)} (tx {result.tx_hash})",
    )
