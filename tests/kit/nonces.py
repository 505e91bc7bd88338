"""A second sender of the same account, timed to take the nonce a transaction was just signed with: what the
daemon, the keeper or another shell does to a CLI command sending from the same account, made deterministic."""

from __future__ import annotations

from typing import Any

from eth_account.signers.local import LocalAccount
from iotsettle.oracle.chain.connection import Chain
from web3 import HTTPProvider, Web3


class RacingNode(HTTPProvider):
    """The real node, reached over HTTP; before each of the next ``races`` eth_sendRawTransaction calls it forwards,
    another sender of ``account`` sends a transaction at the account's next nonce and waits until it is mined."""

    def __init__(self, url: str, account: LocalAccount, races: int = 1) -> None:
        super().__init__(url)
        self.account, self.races, self.taken = account, races, []
        self._other = Web3(HTTPProvider(url))

    def make_request(self, method: Any, params: Any) -> Any:
        if method == "eth_sendRawTransaction" and self.races > 0:
            self.races -= 1
            self._take_next_nonce()
        return super().make_request(method, params)

    def _take_next_nonce(self) -> None:
        w3 = self._other
        nonce = w3.eth.get_transaction_count(self.account.address, "pending")
        base = int(w3.eth.get_block("latest").get("baseFeePerGas", 0))
        tx = {
            "to": self.account.address,
            "value": 0,
            "gas": 21_000,
            "nonce": nonce,
            "chainId": w3.eth.chain_id,
            "maxFeePerGas": 3 * base + 10**9,
            "maxPriorityFeePerGas": 10**9,
        }
        tx_hash = w3.eth.send_raw_transaction(self.account.sign_transaction(tx).raw_transaction)
        w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
        self.taken.append(nonce)


def racing_chain(chain: Chain, account: LocalAccount, races: int = 1) -> tuple[Chain, RacingNode]:
    """``chain`` reached through a ``RacingNode`` for ``account``."""
    node = RacingNode(chain.rpc_url, account, races)
    return Chain(Web3(node), chain.chain_id, chain.rpc_url), node
