"""`iotsettle escrow ...`: delivery escrows released by a tracker's signed delivery."""

from __future__ import annotations

from collections.abc import Callable

import click
from rich.table import Table

from iotsettle.cli._common import IotSettleGroup, emit, json_option
from iotsettle.cli._params import (ADDRESS, AMOUNT, DEADLINE, ID, TOKEN, chain_time, ops_context, read_payloads, rpc_option,
                         sender_options, short, when)
from iotsettle.oracle.protocol.location import location_bytes32, location_geohash
from iotsettle.oracle.protocol.errors import ProtocolError
from iotsettle.oracle.ops import escrow as ops
from iotsettle.oracle.ops.amounts import Amount
from iotsettle.oracle.ops.token import describe_token


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
@click.option("--deadline", type=DEADLINE, required=True, help="+2h / 3d from the latest block, a unix time or ISO date.")
@click.option("--temperature-limit", type=float, default=0.0, show_default=True,
              help="Cold chain: highest allowed temperature in °C.")
@click.option("--penalty-bps", type=click.IntRange(0, 10_000), default=0, show_default=True,
              help="Cold chain: share (basis points) returned to the buyer when the limit was exceeded; 0 = no terms.")
@sender_options
@rpc_option
@json_option
@click.pass_context
def create(ctx: click.Context, seller: str, device: str, amount: Amount, token: str, destination: str,
           deadline: tuple[str, int], temperature_limit: float, penalty_bps: int, from_key_env: str | None,
           dev_account: int | None, rpc_url: str | None, as_json: bool) -> None:
    """Create an escrow and fund it in the same transaction (the sender is the buyer).

    For an ERC-20, the escrow contract is approved first when the allowance is short.

    \b
    Example:
      iotsettle escrow create --seller 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 \\
          --device 0xTRACKER --amount 25 --destination u33dc0cr --deadline +2d
    """
    ops_ctx = ops_context(ctx, rpc_url, from_key_env=from_key_env, dev_account=dev_account)
    info = describe_token(ops_ctx, token)
    base = info.to_base(amount)
    created = ops.create(ops_ctx, seller=seller, device=device, token=info, amount=base,
                         destination=_destination(destination), deadline=chain_time(ops_ctx, deadline),
                         temperature_limit=round(temperature_limit * 100), penalty_bps=penalty_bps)
    view = ops.escrow_of(ops_ctx, created.escrow_id)
    data = {"escrowId": created.escrow_id, "tx": created.tx.tx_hash, "block": created.tx.block,
            "gasUsed": created.tx.gas_used, "approveTx": created.approve_tx.tx_hash if created.approve_tx else None,
            "escrow": view.as_dict()}
    emit(data, as_json, f"escrow [bold]{created.escrow_id}[/bold] funded with {info.format(base)} "
                        f"(tx {created.tx.tx_hash}, block {created.tx.block}); deadline {when(view.deadline)}")


@escrow.command()
@click.option("--amount", type=AMOUNT, required=True, help="How much the escrow contract may take.")
@click.option("--token", type=TOKEN, default="TEST", show_default=True, help="TEST or an ERC-20 address.")
@sender_options
@rpc_option
@json_option
@click.pass_context
def fund(ctx: click.Context, amount: Amount, token: str, from_key_env: str | None, dev_account: int | None,
         rpc_url: str | None, as_json: bool) -> None:
    """Approve the escrow contract to take AMOUNT of an ERC-20 ahead of `escrow create`.

    `create` moves the money itself (and approves when needed); use `fund` when the approval must be a separate,
    reviewable step, e.g. from a keystore on another machine.

    \b
    Example:
      iotsettle escrow fund --amount 100 --token TEST
    """
    ops_ctx = ops_context(ctx, rpc_url, from_key_env=from_key_env, dev_account=dev_account)
    info = describe_token(ops_ctx, token)
    base = info.to_base(amount)
    result = ops.approve(ops_ctx, info, base)
    data = {"token": info.address, "amount": str(base), "tx": result.tx_hash if result else None}
    emit(data, as_json, f"the escrow contract may take {info.format(base)}" +
         (f" (tx {result.tx_hash})" if result else " (the allowance was already enough)"))


def _geohash(destination: str) -> str:
    """A destination as its geohash when it is one (the usual case), else the raw bytes32."""
    try:
        return location_geohash(bytes.fromhex(destination[2:]))
    except (ValueError, ProtocolError):
        return destination


def _status_table(view: ops.EscrowView, fmt: Callable[[int], str], refundable_from: int) -> Table:
    table = Table(show_header=False, title=f"escrow {view.escrow_id}")
    rows = [("state", view.state), ("buyer", view.buyer), ("seller", view.seller), ("tracker", view.device),
            ("amount", fmt(view.amount)),
            ("destination", _geohash(view.destination)), ("created", when(view.created_at)), ("deadline", when(view.deadline))]
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
@rpc_option
@json_option
@click.pass_context
def status(ctx: click.Context, escrow_id: int, rpc_url: str | None, as_json: bool) -> None:
    """Show one escrow: parties, tracker, amount, deadline and state.

    \b
    Example:
      iotsettle escrow status 7
    """
    ops_ctx = ops_context(ctx, rpc_url, send=False)
    view = ops.escrow_of(ops_ctx, escrow_id)
    info = describe_token(ops_ctx, view.token)
    emit(view.as_dict(), as_json, _status_table(view, info.format, ops.refundable_from(ops_ctx, view)))


@escrow.command("list")
@click.option("--party", type=ADDRESS, default=None, help="Only escrows where ADDRESS is buyer or seller.")
@click.option("--device", type=ADDRESS, default=None, help="Only escrows released by this tracker.")
@click.option("--state", "state_filter", type=click.Choice(["funded", "released", "refunded", "cancelled"]),
              default=None, help="Only escrows in this state.")
@rpc_option
@json_option
@click.pass_context
def list_cmd(ctx: click.Context, party: str | None, device: str | None, state_filter: str | None,
             rpc_url: str | None, as_json: bool) -> None:
    """List escrows of this deployment (from the contract's EscrowCreated events).

    \b
    Example:
      iotsettle escrow list --party 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 --state funded
    """
    ops_ctx = ops_context(ctx, rpc_url, send=False)
    views = [v for v in ops.list_escrows(ops_ctx, party=party, device=device) if not state_filter or v.state == state_filter]
    table = Table("id", "state", "buyer", "seller", "tracker", "amount", "deadline", title=f"{len(views)} escrows")
    for v in views:
        table.add_row(str(v.escrow_id), v.state, short(v.buyer), short(v.seller), short(v.device),
                      describe_token(ops_ctx, v.token).format(v.amount), when(v.deadline))
    emit([v.as_dict() for v in views], as_json, table)


@escrow.command()
@click.argument("source", default="-", metavar="[FILE|-]")
@sender_options
@rpc_option
@json_option
@click.pass_context
def confirm(ctx: click.Context, source: str, from_key_env: str | None, dev_account: int | None,
            rpc_url: str | None, as_json: bool) -> None:
    """Relay device-signed deliveries (the JSON wire payload of docs/PROTOCOL.md) from FILE or stdin.

    Anyone may relay: the contract checks the tracker's signature itself. One payload is sent alone and a refusal
    is an error with its reason; several (one JSON object per line) go in one batch where refused items are listed.

    \b
    Example:
      iotsettle escrow confirm delivery.json
      mosquitto_sub -t 'iotsettle/v1/31337/+/events' -C 1 | iotsettle escrow confirm -
    """
    text = read_payloads(source)
    ops_ctx = ops_context(ctx, rpc_url, from_key_env=from_key_env, dev_account=dev_account)
    events = ops.parse_deliveries(ops_ctx, text)
    result, outcomes = ops.confirm(ops_ctx, events)
    data = {"tx": result.tx_hash, "block": result.block, "gasUsed": result.gas_used,
            "results": [{"escrowId": o.escrow_id, "seq": o.seq, "confirmed": o.confirmed, "reason": o.reason or None,
                         "toSeller": str(o.to_seller), "toBuyer": str(o.to_buyer)} for o in outcomes]}
    table = Table("escrow", "seq", "result", "seller credited", "buyer credited",
                  title=f"relayed in block {result.block}, gas {result.gas_used:,}")
    for o in outcomes:
        fmt = describe_token(ops_ctx, ops.escrow_of(ops_ctx, o.escrow_id).token).format
        table.add_row(str(o.escrow_id), str(o.seq), "released" if o.confirmed else f"rejected: {o.reason}",
                      fmt(o.to_seller) if o.confirmed else "", fmt(o.to_buyer) if o.confirmed else "")
    emit(data, as_json, table)
    if not as_json:
        emit(None, False, f"tx {result.tx_hash}")


@escrow.command()
@click.argument("escrow_id", type=ID)
@sender_options
@rpc_option
@json_option
@click.pass_context
def refund(ctx: click.Context, escrow_id: int, from_key_env: str | None, dev_account: int | None,
           rpc_url: str | None, as_json: bool) -> None:
    """Buyer: credit an undelivered escrow back to yourself (then `escrow withdraw`).

    Possible from one hour after the deadline (the settlement grace): a delivery the tracker signed by the
    deadline still releases the escrow to the seller if it is relayed within that hour, or at any time before
    the refund.

    \b
    Example:
      iotsettle escrow refund 7 && iotsettle escrow withdraw
    """
    ops_ctx = ops_context(ctx, rpc_url, from_key_env=from_key_env, dev_account=dev_account)
    result = ops.refund(ops_ctx, escrow_id)
    view = ops.escrow_of(ops_ctx, escrow_id)
    emit({"escrowId": escrow_id, "tx": result.tx_hash, "block": result.block, "amount": str(view.amount)}, as_json,
         f"escrow {escrow_id} refunded: {describe_token(ops_ctx, view.token).format(view.amount)} credited to the buyer "
         f"(tx {result.tx_hash}); run `iotsettle escrow withdraw` to receive it")


@escrow.command()
@click.argument("escrow_id", type=ID)
@sender_options
@rpc_option
@json_option
@click.pass_context
def cancel(ctx: click.Context, escrow_id: int, from_key_env: str | None, dev_account: int | None,
           rpc_url: str | None, as_json: bool) -> None:
    """Seller: give up a funded escrow; the buyer is credited the whole amount.

    \b
    Example:
      iotsettle escrow cancel 7 --dev-account 1
    """
    ops_ctx = ops_context(ctx, rpc_url, from_key_env=from_key_env, dev_account=dev_account)
    result = ops.cancel(ops_ctx, escrow_id)
    emit({"escrowId": escrow_id, "tx": result.tx_hash, "block": result.block}, as_json,
         f"escrow {escrow_id} cancelled; the buyer can withdraw the amount (tx {result.tx_hash})")


@escrow.command()
@click.option("--token", type=TOKEN, default="TEST", show_default=True, help="Which credited balance to withdraw.")
@sender_options
@rpc_option
@json_option
@click.pass_context
def withdraw(ctx: click.Context, token: str, from_key_env: str | None, dev_account: int | None,
             rpc_url: str | None, as_json: bool) -> None:
    """Receive everything the escrow contract credited to you in TOKEN (payments, refunds, cancellations).

    \b
    Example:
      iotsettle escrow withdraw --token TEST --dev-account 1
    """
    ops_ctx = ops_context(ctx, rpc_url, from_key_env=from_key_env, dev_account=dev_account)
    info = describe_token(ops_ctx, token)
    result, paid = ops.withdraw(ops_ctx, info)
    who = ops_ctx.require_sender().address
    emit({"account": who, "token": info.address, "amount": str(paid), "tx": result.tx_hash, "block": result.block},
         as_json, f"{who} received {info.format(paid)} (tx {result.tx_hash})")
