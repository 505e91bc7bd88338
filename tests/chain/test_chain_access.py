"""The chain floor's one RPC client, one log scanner and one sending path, against anvil."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from eth_account import Account
from iotsettle.oracle.chain import logs
from iotsettle.oracle.chain.connection import load_sender
from iotsettle.oracle.chain.revert import ErrorDecoder
from iotsettle.oracle.chain.rpc import NodeRefused, RpcClient, one_sentence
from iotsettle.oracle.chain.send import send, send_call, would_revert
from iotsettle.oracle.protocol.errors import ChainError


class _CappedNode:
    """The real anvil behind a provider that refuses eth_getLogs over more than ``max_span`` blocks."""

    def __init__(self, inner: Any, max_span: int) -> None:
        self.inner, self.max_span, self.refused = inner, max_span, 0

    def make_request(self, method: str, params: list[Any]) -> dict[str, Any]:
        if method == "eth_getLogs" and int(params[0]["toBlock"], 16) - int(params[0]["fromBlock"], 16) >= self.max_span:
            self.refused += 1
            return {"jsonrpc": "2.0", "id": 1, "error": {"code": -32005, "message": "block range too large. Try less"}}
        return dict(self.inner.make_request(method, params))


@pytest.fixture()
def minted(deployment) -> tuple[str, int, int, list[str]]:
    """Five TestToken mints, one block each, to fresh accounts: (token, first block, last block, recipients)."""
    chain = deployment.chain
    sender = load_sender(deployment.config, chain)
    token = deployment.contract("TestToken")
    recipients = [Account.create().address for _ in range(5)]
    blocks = [int(send_call(chain, sender, token.functions.mint(to, 10**18))["blockNumber"]) for to in recipients]
    return token.address, blocks[0], blocks[-1], recipients


def _transfer_topic(deployment) -> str:
    abi = next(e for e in deployment.contract("TestToken").abi if e.get("type") == "event" and e["name"] == "Transfer")
    return logs.topic0(abi)


def test_a_refused_range_is_read_in_halves(deployment, minted) -> None:
    token, first, last, recipients = minted
    topics = [_transfer_topic(deployment)]
    direct = logs.scan(RpcClient(deployment.chain.w3), token, first, last, topics)
    capped = _CappedNode(deployment.chain.w3.provider, max_span=1)
    halved = logs.scan(RpcClient(SimpleNamespace(provider=capped)), token, first, last, topics)
    assert capped.refused > 0
    assert halved == direct
    assert [logs.id_topic(r).lower() for r in recipients] == [entry["topics"][2] for entry in halved]


def test_chunks_cover_the_range_once(deployment, minted) -> None:
    token, first, last, _ = minted
    spans = [(a, b) for a, b, _ in logs.scan_chunks(RpcClient(deployment.chain.w3), token, first, last, chunk=2)]
    assert spans[0][0] == first and spans[-1][1] == last
    assert all(b - a < 2 for a, b in spans) and all(spans[i][1] + 1 == spans[i + 1][0] for i in range(len(spans) - 1))


def test_a_refusal_is_one_sentence_and_block_times_batch(deployment, minted) -> None:
    _, first, last, _ = minted
    capped = RpcClient(SimpleNamespace(provider=_CappedNode(deployment.chain.w3.provider, max_span=0)))
    with pytest.raises(NodeRefused, match=r"^eth_getLogs refused: block range too large$"):
        capped.get_logs(deployment.address("TestToken"), first, first, [])
    assert one_sentence("execution reverted. More text\nand a second line") == "execution reverted"
    rpc = RpcClient(deployment.chain.w3)
    times = rpc.block_times(range(first, last + 1))
    assert times == {n: int(deployment.chain.w3.eth.get_block(n)["timestamp"]) for n in range(first, last + 1)}


def test_a_revert_is_decoded_by_the_decoder_passed_in(deployment) -> None:
    chain = deployment.chain
    sender = load_sender(deployment.config, chain)
    registry = deployment.contract("DeviceRegistry")
    stranger = Account.create().address
    data = registry.encode_abi("revoke", args=[stranger])
    with pytest.raises(ChainError, match=r"^the transaction would revert: custom error 0x"):
        send(chain, sender, {"to": registry.address, "data": data})
    with pytest.raises(ChainError, match=rf"^the transaction would revert: \w+\(.*{stranger}"):
        send(chain, sender, {"to": registry.address, "data": data}, decode=would_revert(ErrorDecoder([registry.abi])))
