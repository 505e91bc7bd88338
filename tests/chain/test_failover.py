"""RPC failover (``[chain] rpc_urls``): the session's anvil behind two URLs — the first through a proxy the test stops
or freezes — and two anvils of their own whose heads drift apart. Reads, web3 calls and the one sending path all
move to the next endpoint; a stale endpoint is left; the switch is logged without the URL's path."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from iotsettle.oracle.chain.connection import ANVIL_DEV_KEYS, connect, endpoints_of
from iotsettle.oracle.chain.endpoints import Endpoints
from iotsettle.oracle.chain.node import Anvil, free_port
from iotsettle.oracle.chain.rpc import RpcClient
from iotsettle.oracle.chain.send import send
from iotsettle.oracle.config import Config, load_config
from iotsettle.oracle.protocol.errors import ChainError, ConfigError

from tests.kit.proxy import Proxy
from tests.kit.stack import make_config

#: a development account no other chain test sends from
SENDER = Account.from_key(ANVIL_DEV_KEYS[3])


@pytest.fixture
def proxy(anvil: Anvil) -> Iterator[Proxy]:
    front = Proxy(("127.0.0.1", anvil.port)).start()
    yield front
    front.stop()


def failover_config(test_config: Config, *urls: str, **env: str) -> Config:
    values = {"IOTSETTLE_CHAIN_RPC_URLS": ",".join(urls), "IOTSETTLE_CHAIN_TIMEOUT": "1.5", **env}
    return load_config(env=values, read_files=False)


def test_a_request_goes_to_the_next_endpoint_when_the_first_is_down(
    anvil: Anvil, proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    pool = Endpoints([proxy.url + "/?apikey=SECRETKEY", anvil.endpoint])
    rpc = RpcClient(endpoints=pool, timeout=2.0)
    before = rpc.block_number()
    assert pool.index == 0 and pool.switches == 0
    proxy.stop()
    with caplog.at_level(logging.WARNING):
        assert rpc.block_number() >= before
    assert pool.index == 1 and pool.switches == 1
    assert "switching to #2" in caplog.text and "SECRETKEY" not in caplog.text


def test_a_frozen_endpoint_is_left_by_web3_and_the_sending_path(
    anvil: Anvil, proxy: Proxy, test_config: Config
) -> None:
    chain = connect(failover_config(test_config, proxy.url, anvil.endpoint))
    pool = endpoints_of(chain.w3)
    assert pool is not None and pool.index == 0
    nonce = chain.w3.eth.get_transaction_count(SENDER.address)
    proxy.freeze()
    started = time.monotonic()
    receipt = send(chain, SENDER, {"to": Account.create().address, "value": 1})
    assert receipt["status"] == 1 and pool.index == 1 and pool.switches == 1
    assert time.monotonic() - started < 30  # one timeout, not one per call
    assert chain.w3.eth.get_transaction(receipt["transactionHash"])["nonce"] == nonce
    assert chain.w3.eth.get_transaction_count(SENDER.address) == nonce + 1


def test_every_endpoint_down_is_one_sentence(proxy: Proxy, test_config: Config) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    proxy.stop()
    with pytest.raises(ChainError, match=r"^cannot reach the RPC endpoint .*is the node running") as caught:
        connect(failover_config(test_config, proxy.url, down))
    assert "\n" not in str(caught.value)


@pytest.fixture
def two_anvils(tmp_path: Path, test_config: Config) -> Iterator[tuple[Anvil, Anvil]]:
    nodes = []
    for name in ("a", "b"):
        config = make_config(tmp_path / name, free_port(), free_port())
        node = Anvil(config)
        node.start()
        nodes.append(node)
    try:
        yield nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.stop()


def test_an_endpoint_behind_the_others_is_stale_and_left(two_anvils: tuple[Anvil, Anvil]) -> None:
    behind, ahead = two_anvils
    pool = Endpoints([behind.endpoint, ahead.endpoint], max_lag=3, stall=60)
    rpc = RpcClient(endpoints=pool, timeout=2.0)
    rpc.check_heads()
    assert pool.index == 0, "equal heads: the first endpoint stays"
    RpcClient(url=ahead.endpoint).call("anvil_mine", [hex(4)])
    rpc.check_heads()
    assert pool.index == 1 and pool.switches == 1
    assert "blocks behind" in pool.status()["endpoints"][0]["stale"]
    assert rpc.block_number() >= 4  # reads now come from the fresh node


def test_a_head_that_stops_advancing_while_another_moves_is_stale(two_anvils: tuple[Anvil, Anvil]) -> None:
    frozen, moving = two_anvils
    pool = Endpoints([frozen.endpoint, moving.endpoint], max_lag=1000, stall=1.0)
    rpc = RpcClient(endpoints=pool, timeout=2.0)
    miner = RpcClient(url=moving.endpoint)
    rpc.check_heads()
    deadline = time.monotonic() + 20
    while pool.index == 0 and time.monotonic() < deadline:
        miner.call("anvil_mine", ["0x1"])
        time.sleep(0.3)
        rpc.check_heads()
    assert pool.index == 1, pool.status()
    assert "has not advanced" in pool.status()["endpoints"][0]["stale"]


def test_rpc_url_stays_a_one_element_list_and_rpc_urls_names_the_first() -> None:
    single = load_config(env={"IOTSETTLE_CHAIN_RPC_URL": "http://127.0.0.1:9"}, read_files=False)
    assert single.chain.endpoints == ("http://127.0.0.1:9",)
    several = load_config(env={"IOTSETTLE_CHAIN_RPC_URLS": "http://a:1, https://b/k"}, read_files=False)
    assert several.chain.endpoints == ("http://a:1", "https://b/k") and several.chain.rpc_url == "http://a:1"
    with pytest.raises(ConfigError, match="endpoint 2 must start with http"):
        load_config(env={"IOTSETTLE_CHAIN_RPC_URLS": "http://a:1,ws://b:2"}, read_files=False)
