"""`iotsettle balances ADDRESS...`: what each address holds and what the contracts owe it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from iotsettle.cli._lazy import lazy_import
from iotsettle.cli._params import ADDRESS, CommandContext, with_context
from rich.table import Table

if TYPE_CHECKING:
    from iotsettle.oracle.ops import billing, escrow
    from iotsettle.oracle.ops import token as token_ops
else:
    billing = lazy_import("iotsettle.oracle.ops.billing")
    escrow = lazy_import("iotsettle.oracle.ops.escrow")
    token_ops = lazy_import("iotsettle.oracle.ops.token")


@click.command()
@click.argument("addresses", nargs=-1, required=True, type=ADDRESS)
@with_context(rpc=True)
def balances(cmd: CommandContext, addresses: tuple[str, ...]) -> None:
    """Wallet balances (ETH, TEST) and what the contracts owe each ADDRESS.

    "escrow credit" is what `iotsettle escrow withdraw` would pay now (releases, refunds, cancellations);
    "earnings" is what `iotsettle agreement withdraw` would pay now, summed over the address's agreements
    as provider.

    \b
    Example:
      iotsettle balances 0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266 0x70997970C51812dc3A010C7d01b50e0d17dc79C8
    """
    tokens = [token_ops.describe_token(cmd.ops, token_ops.ETH)] + (
        [token_ops.describe_token(cmd.ops, token_ops.TEST)] if cmd.ops.has("TestToken") else []
    )
    agreements = billing.list_agreements(cmd.ops) if cmd.ops.has("MeteredBilling") else []
    data: dict[str, dict[str, str]] = {}
    table = Table("address", *(t.symbol for t in tokens), "escrow credit", "earnings", "prepaid")
    for address in addresses:
        wallet = [token_ops.balance_of(cmd.ops, t, address) for t in tokens]
        credit = (
            [escrow.withdrawable(cmd.ops, t, address) for t in tokens]
            if cmd.ops.has("DeliveryEscrow")
            else [0] * len(tokens)
        )
        earnings: dict[str, int] = {}  # by token address
        prepaid: dict[str, int] = {}
        for view in agreements:
            if view.provider == address:
                earnings[view.token] = earnings.get(view.token, 0) + view.earnings
            if view.consumer == address and view.status in ("active", "suspended"):
                prepaid[view.token] = prepaid.get(view.token, 0) + view.prepaid
        info = {t: token_ops.describe_token(cmd.ops, t) for t in set(earnings) | set(prepaid)}
        data[address] = {
            **{t.symbol: str(v) for t, v in zip(tokens, wallet, strict=True)},
            **{f"escrowCredit{t.symbol}": str(v) for t, v in zip(tokens, credit, strict=True)},
            **{f"earnings{info[t].symbol}": str(v) for t, v in earnings.items()},
            **{f"prepaid{info[t].symbol}": str(v) for t, v in prepaid.items()},
        }

        def joined(amounts: list[str]) -> str:
            return ", ".join(amounts) or "0"

        table.add_row(
            address,
            *(t.format_short(v) for t, v in zip(tokens, wallet, strict=True)),
            joined([t.format_short(v) for t, v in zip(tokens, credit, strict=True) if v]),
            joined([info[t].format_short(v) for t, v in earnings.items() if v]),
            joined([info[t].format_short(v) for t, v in prepaid.items() if v]),
        )
    cmd.emit(data, table)
