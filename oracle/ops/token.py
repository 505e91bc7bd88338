"""Token transactions: minting the local test token and approving a spender.

What a token is (``ETH``, ``TEST`` or an ERC-20 address, its decimals, balances) is read in
``iotsettle.oracle.ops.token_info``; its names are importable from here too, for callers that name the module
``token``.
"""

from __future__ import annotations

import logging

from iotsettle.oracle.ops.context import OpsContext
from iotsettle.oracle.ops.token_info import (
    ETH,
    TEST,
    ZERO_ADDRESS,
    TokenInfo,
    balance_of,
    check_eth,
    describe_token,
    resolve_token,
)
from iotsettle.oracle.ops.tx import TxResult, transact
from iotsettle.oracle.protocol.errors import ChainError

__all__ = [
    "ETH",
    "TEST",
    "ZERO_ADDRESS",
    "TokenInfo",
    "balance_of",
    "check_eth",
    "describe_token",
    "ensure_allowance",
    "mint",
    "resolve_token",
]

log = logging.getLogger(__name__)


def mint(ctx: OpsContext, to: str, amount: int) -> TxResult:
    """Mint TestToken (open to anyone: it is worthless by design)."""
    token = ctx.contract("TestToken")
    return transact(ctx, token.functions.mint(to, amount), "TestToken")


def ensure_allowance(ctx: OpsContext, token: TokenInfo, spender_name: str, amount: int) -> TxResult | None:
    """Approve ``spender_name`` for ``amount`` when the sender's allowance is short; also checks the balance first."""
    if token.is_eth:
        return None
    owner = ctx.require_sender().address
    erc20 = ctx.at("TestToken", token.address)
    balance = int(erc20.functions.balanceOf(owner).call())
    if balance < amount:
        raise ChainError(
            f"{owner} holds {token.format(balance)} but this needs {token.format(amount)}"
            + (" (mint some with `iotsettle token mint`)" if token.symbol == TEST else "")
        )
    spender = ctx.address(spender_name)
    if int(erc20.functions.allowance(owner, spender).call()) >= amount:
        return None
    log.info("approving %s for %s of %s", spender_name, amount, token.symbol)
    return transact(ctx, erc20.functions.approve(spender, amount), "TestToken")
