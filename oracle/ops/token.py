"""Tokens: which token a name means, its decimals, balances, minting the local test token, allowances.

A token is named on the command line as ``ETH`` (native ether, address zero in the contracts), ``TEST`` (the
worthless TestToken ``iotsettle deploy`` puts on local chains) or any ERC-20 address.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from eth_utils import is_address, to_checksum_address
from web3.exceptions import ContractLogicError, Web3Exception

from iotsettle.oracle.protocol.errors import ChainError, DeploymentError
from iotsettle.oracle.ops.amounts import Amount, format_amount
from iotsettle.oracle.ops.context import OpsContext
from iotsettle.oracle.ops.tx import TxResult, transact

log = logging.getLogger(__name__)

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
ETH = "ETH"
TEST = "TEST"


@dataclass(frozen=True)
class TokenInfo:
    address: str  # ZERO_ADDRESS for ETH
    symbol: str
    decimals: int

    @property
    def is_eth(self) -> bool:
        return self.address == ZERO_ADDRESS

    def format(self, base: int) -> str:
        return format_amount(base, self.decimals, self.symbol)

    def format_short(self, base: int) -> str:
        """For tables: at most 4 decimals, ``~`` when rounded."""
        return format_amount(base, self.decimals, self.symbol, max_decimals=4)

    def to_base(self, amount: Amount) -> int:
        return amount.to_base(self.decimals, self.symbol)


_ETH_INFO = TokenInfo(ZERO_ADDRESS, ETH, 18)


def resolve_token(ctx: OpsContext, name: str) -> str:
    """``ETH`` → zero address, ``TEST`` → the deployed TestToken, an address → itself (checksummed)."""
    upper = name.strip().upper()
    if upper == ETH or name == ZERO_ADDRESS:
        return ZERO_ADDRESS
    if upper == TEST:
        if not ctx.has("TestToken"):
            raise DeploymentError(f"no TestToken is deployed on chain {ctx.chain.chain_id} (it exists on local chains "
                                  "only); name an ERC-20 by address")
        return ctx.address("TestToken")
    if not is_address(name):
        raise ChainError(f"{name!r} is not a token: use ETH, TEST or an ERC-20 address")
    return to_checksum_address(name)


_cache: dict[tuple[int, str], TokenInfo] = {}


def describe_token(ctx: OpsContext, token: str) -> TokenInfo:
    """Symbol and decimals of ``token`` (a name or an address), read once per chain and address."""
    address = resolve_token(ctx, token)
    if address == ZERO_ADDRESS:
        return _ETH_INFO
    key = (ctx.chain.chain_id, address)
    if key not in _cache:
        erc20 = ctx.at("TestToken", address)
        try:
            symbol = erc20.functions.symbol().call()
            decimals = int(erc20.functions.decimals().call())
        except (ContractLogicError, Web3Exception, ValueError, OverflowError):
            raise ChainError(f"{address} is not an ERC-20 token on chain {ctx.chain.chain_id}") from None
        _cache[key] = TokenInfo(address, symbol, decimals)
    return _cache[key]


def balance_of(ctx: OpsContext, token: TokenInfo, account: str) -> int:
    if token.is_eth:
        return int(ctx.w3.eth.get_balance(account))
    return int(ctx.at("TestToken", token.address).functions.balanceOf(account).call())


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
        raise ChainError(f"{owner} holds {token.format(balance)} but this needs {token.format(amount)}"
                         + (" (mint some with `iotsettle token mint`)" if token.symbol == TEST else ""))
    spender = ctx.address(spender_name)
    if int(erc20.functions.allowance(owner, spender).call()) >= amount:
        return None
    log.info("approving %s for %s of %s", spender_name, amount, token.symbol)
    return transact(ctx, erc20.functions.approve(spender, amount), "TestToken")


def check_eth(ctx: OpsContext, value: int) -> None:
    """Refuse early, in one line, when the sender cannot pay ``value`` wei plus gas."""
    owner = ctx.require_sender().address
    balance = int(ctx.w3.eth.get_balance(owner))
    if balance < value:
        raise ChainError(f"{owner} holds {format_amount(balance, 18, ETH)} but this needs {format_amount(value, 18, ETH)}")
