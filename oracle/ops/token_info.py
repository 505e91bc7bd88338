"""What a token is: which token a name means, its symbol and decimals, and balances — reads only.

A token is named on the command line as ``ETH`` (native ether, address zero in the contracts), ``TEST`` (the
worthless TestToken ``iotsettle deploy`` puts on local chains) or any ERC-20 address.
"""

from __future__ import annotations

from eth_utils import is_address, to_checksum_address
from iotsettle.oracle.ops.amounts import ETH, TEST, ZERO_ADDRESS, TokenInfo, format_amount
from iotsettle.oracle.ops.context import OpsContext
from iotsettle.oracle.protocol.errors import ChainError, DeploymentError
from web3.exceptions import ContractLogicError, Web3Exception

_ETH_INFO = TokenInfo(ZERO_ADDRESS, ETH, 18)


def resolve_token(ctx: OpsContext, name: str) -> str:
    """``ETH`` → zero address, ``TEST`` → the deployed TestToken, an address → itself (checksummed)."""
    upper = name.strip().upper()
    if upper == ETH or name == ZERO_ADDRESS:
        return ZERO_ADDRESS
    if upper == TEST:
        if not ctx.has("TestToken"):
            raise DeploymentError(
                f"no TestToken is deployed on chain {ctx.chain.chain_id} (it exists on local chains "
                "only); name an ERC-20 by address"
            )
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


def check_eth(ctx: OpsContext, value: int) -> None:
    """Refuse early, in one line, when the sender cannot pay ``value`` wei plus gas."""
    owner = ctx.require_sender().address
    balance = int(ctx.w3.eth.get_balance(owner))
    if balance < value:
        raise ChainError(
            f"{owner} holds {format_amount(balance, 18, ETH)} but this needs {format_amount(value, 18, ETH)}"
        )
