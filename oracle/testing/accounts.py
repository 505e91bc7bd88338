"""The node's development accounts (funded at genesis), and fresh accounts funded from them.

A test that sends from a fresh account of its own never shares a nonce sequence with another test, the deployer or
the oracle's relayer.
"""

from __future__ import annotations

from eth_account import Account
from eth_account.signers.local import LocalAccount
from iotsettle.oracle.chain.connection import ANVIL_DEV_KEYS, Chain
from iotsettle.oracle.chain.send import send

ETHER = 10**18

#: anvil's (and the project's ganache mnemonic's) ten development accounts; account 0 deploys the contracts
DEV_ACCOUNTS: tuple[LocalAccount, ...] = tuple(Account.from_key(key) for key in ANVIL_DEV_KEYS)
#: the account fresh accounts are funded from
FUNDER = DEV_ACCOUNTS[0]


def fund(chain: Chain, address: str, wei: int, funder: LocalAccount = FUNDER) -> None:
    """Send ``wei`` to ``address`` and wait for the receipt."""
    send(chain, funder, {"to": address, "value": wei, "gas": 21_000})


def funded_account(chain: Chain, wei: int = 10 * ETHER, funder: LocalAccount = FUNDER) -> LocalAccount:
    """A new account holding ``wei`` (none sent when 0)."""
    account: LocalAccount = Account.create()
    if wei:
        fund(chain, account.address, wei, funder)
    return account
