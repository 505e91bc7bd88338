"""The one sending path against anvil when another sender of the same account takes the nonce in between: signed
again at the next nonce once, then a one-sentence error (issue 15: `agreement open` while the daemon settles)."""

from __future__ import annotations

from eth_account import Account
from iotsettle.oracle.chain.connection import ANVIL_DEV_KEYS
from iotsettle.oracle.chain.rpc import node_message
from iotsettle.oracle.chain.send import send, send_call, send_many
from iotsettle.oracle.protocol.errors import ChainError
from web3.exceptions import Web3RPCError

from tests.kit.nonces import racing_chain

#: a development account no other test sends from (the daemon's default relayer is account 9)
SENDER = Account.from_key(ANVIL_DEV_KEYS[1])


def test_a_taken_nonce_is_signed_again_at_the_next_one(deployment) -> None:
    chain, node = racing_chain(deployment.chain, SENDER)
    receipt = send(chain, SENDER, {"to": Account.create().address, "value": 1})
    assert receipt["status"] == 1
    sent = chain.w3.eth.get_transaction(receipt["transactionHash"])
    assert sent["nonce"] == node.taken[0] + 1


def test_a_contract_call_and_a_bulk_send_survive_a_taken_nonce(deployment) -> None:
    token = deployment.contract("TestToken")
    chain, node = racing_chain(deployment.chain, SENDER)
    assert send_call(chain, SENDER, token.functions.mint(SENDER.address, 1))["status"] == 1
    node.races = 1
    receipts = send_many(chain, SENDER, [token.functions.mint(SENDER.address, 1) for _ in range(3)], gas=100_000)
    nonces = [chain.w3.eth.get_transaction(r["transactionHash"])["nonce"] for r in receipts]
    assert nonces == [node.taken[1] + 1, node.taken[1] + 2, node.taken[1] + 3]


def test_a_nonce_taken_twice_is_one_sentence(deployment) -> None:
    chain, _ = racing_chain(deployment.chain, SENDER, races=2)
    try:
        send(chain, SENDER, {"to": Account.create().address, "value": 1})
    except ChainError as exc:
        message = str(exc)
    else:
        raise AssertionError("a nonce taken on the retry too must fail")
    assert message.startswith("sending the transaction failed: ") and "nonce" in message
    assert "\n" not in message and "{" not in message, message


def test_the_node_message_drops_ganaches_stack() -> None:
    """ganache's error member as it arrived in issue 15: a message and a JavaScript stack."""
    error = {
        "message": "VM Exception while processing transaction: the tx doesn't have the correct nonce. account has "
        "nonce of: 7 tx has nonce of: 6",
        "stack": "RuntimeError: VM Exception while processing transaction: the tx doesn't have the correct nonce.\n"
        "    at Miner.<anonymous> (/x/node_modules/ganache/dist/node/1.js:2:176352)",
        "code": -32000,
    }
    with_response = Web3RPCError(str(error), rpc_response={"jsonrpc": "2.0", "id": 1, "error": error})
    without = Web3RPCError(str(error))
    expected = "VM Exception while processing transaction: the tx doesn't have the correct nonce"
    assert node_message(with_response) == node_message(without) == expected
