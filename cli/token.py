"""`iotsettle token ...`: the worthless TestToken that `iotsettle deploy` puts on local chains."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from iotsettle.cli._common import IotSettleGroup
from iotsettle.cli._lazy import lazy_import
from iotsettle.cli._params import ADDRESS, AMOUNT, TOKEN, CommandContext, with_context
from iotsettle.oracle.ops.amounts import Amount
from rich.table import Table

if TYPE_CHECKING:
    from iotsettle.oracle.ops import token as ops
else:
    ops = lazy_import("iotsettle.oracle.ops.token")


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
@with_context(rpc=True)
def info(cmd: CommandContext, token_name: str) -> None:
    """Address, symbol and decimals of a token.

    \b
    Example:
      iotsettle token info
    """
    described = ops.describe_token(cmd.ops, token_name)
    cmd.emit(
        {"address": described.address, "symbol": described.symbol, "decimals": described.decimals},
        f"{described.symbol} at {described.address}, {described.decimals} decimals",
    )


@token.command()
@click.option("--to", "to", type=ADDRESS, default=None, help="Recipient (default: the sender).")
@click.option("--amount", type=AMOUNT, required=True, help="How much, e.g. 1000 (tokens) or 5wei (base units).")
@with_context(sender=True)
def mint(cmd: CommandContext, to: str | None, amount: Amount) -> None:
    """Mint TEST to an address (local chains only: TestToken is never deployed elsewhere).

    \b
    Example:
      iotsettle token mint --to 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 --amount 1000
    """
    described = ops.describe_token(cmd.ops, "TEST")
    recipient = to or cmd.ops.require_sender().address
    base = described.to_base(amount)
    result = ops.mint(cmd.ops, recipient, base)
    balance = ops.balance_of(cmd.ops, described, recipient)
    cmd.emit(
        {"to": recipient, "amount": str(base), "balance": str(balance), "tx": result.tx_hash, "block": result.block},
        f"minted {described.format(base)} to {recipient}; balance now {described.format(balance)} "
        f"(tx {result.tx_hash})",
    )


@token.command()
@click.argument("addresses", nargs=-1, required=True, type=ADDRESS)
@click.option("--token", "token_name", type=TOKEN, default="TEST", show_default=True, help="ETH, TEST or an ERC-20.")
@with_context(rpc=True)
def balance(cmd: CommandContext, addresses: tuple[str, ...], token_name: str) -> None:
    """Token balance of one or more addresses.

    \b
    Example:
      iotsettle token balance 0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266 --token TEST
    """
    described = ops.describe_token(cmd.ops, token_name)
    rows = [(a, ops.balance_of(cmd.ops, described, a)) for a in addresses]
    table = Table("address", described.symbol)
    for address, amount in rows:
        table.add_row(address, described.format(amount))
    cmd.emit({a: str(v) for a, v in rows}, table)
