"""`iotsettle token ...`: the worthless TestToken that `iotsettle deploy` puts on local chains."""

from __future__ import annotations

import click
from rich.table import Table

from iotsettle.cli._common import IotSettleGroup, emit, json_option
from iotsettle.cli._params import ADDRESS, AMOUNT, TOKEN, ops_context, rpc_option, sender_options
from iotsettle.oracle.ops import token as ops
from iotsettle.oracle.ops.amounts import Amount


@click.group(cls=IotSettleGroup)
def token() -> None:
    """The local test ERC-20 (symbol TEST, 18 decimals; anyone may mint it, so it is worth nothing).

    \b
    Example:
      iotsettle token mint --to 0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266 --amount 1000
      iotsettle token balance 0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266
    """


@token.command()
@click.option("--token", "token_name", type=TOKEN, default="TEST", show_default=True, help="Token to describe.")
@rpc_option
@json_option
@click.pass_context
def info(ctx: click.Context, token_name: str, rpc_url: str | None, as_json: bool) -> None:
    """Address, symbol and decimals of a token.

    \b
    Example:
      iotsettle token info
    """
    ops_ctx = ops_context(ctx, rpc_url, send=False)
    described = ops.describe_token(ops_ctx, token_name)
    emit({"address": described.address, "symbol": described.symbol, "decimals": described.decimals}, as_json,
         f"{described.symbol} at {described.address}, {described.decimals} decimals")


@token.command()
@click.option("--to", "to", type=ADDRESS, default=None, help="Recipient (default: the sender).")
@click.option("--amount", type=AMOUNT, required=True, help="How much, e.g. 1000 (tokens) or 5wei (base units).")
@sender_options
@rpc_option
@json_option
@click.pass_context
def mint(ctx: click.Context, to: str | None, amount: Amount, from_key_env: str | None, dev_account: int | None,
         rpc_url: str | None, as_json: bool) -> None:
    """Mint TEST to an address (local chains only: TestToken is never deployed elsewhere).

    \b
    Example:
      iotsettle token mint --to 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 --amount 1000
    """
    ops_ctx = ops_context(ctx, rpc_url, from_key_env=from_key_env, dev_account=dev_account)
    described = ops.describe_token(ops_ctx, "TEST")
    recipient = to or ops_ctx.require_sender().address
    base = described.to_base(amount)
    result = ops.mint(ops_ctx, recipient, base)
    balance = ops.balance_of(ops_ctx, described, recipient)
    emit({"to": recipient, "amount": str(base), "balance": str(balance), "tx": result.tx_hash, "block": result.block},
         as_json, f"minted {described.format(base)} to {recipient}; balance now {described.format(balance)} "
                  f"(tx {result.tx_hash})")


@token.command()
@click.argument("addresses", nargs=-1, required=True, type=ADDRESS)
@click.option("--token", "token_name", type=TOKEN, default="TEST", show_default=True, help="ETH, TEST or an ERC-20.")
@rpc_option
@json_option
@click.pass_context
def balance(ctx: click.Context, addresses: tuple[str, ...], token_name: str, rpc_url: str | None, as_json: bool) -> None:
    """Token balance of one or more addresses.

    \b
    Example:
      iotsettle token balance 0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266 --token TEST
    """
    ops_ctx = ops_context(ctx, rpc_url, send=False)
    described = ops.describe_token(ops_ctx, token_name)
    rows = [(a, ops.balance_of(ops_ctx, described, a)) for a in addresses]
    table = Table("address", described.symbol)
    for address, amount in rows:
        table.add_row(address, described.format(amount))
    emit({a: str(v) for a, v in rows}, as_json, table)
