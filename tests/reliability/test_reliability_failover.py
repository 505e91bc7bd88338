"""RPC failover under a running daemon (docs/RELIABILITY.md): the session's anvil behind two URLs, the first through a
proxy the test freezes (a hung node: connections open, no answer).

While mining is paused the daemon's settlement transactions sit in the node's pool; then the first endpoint freezes
and the node forgets its pool (``anvil_dropAllTransactions``), so the second endpoint is a node that never saw them.
The daemon must move to it, send its open transactions again as signed (same nonce, same bytes) and go on: every
agreement paid in full, nothing paid twice, no nonce gap, no transaction re-signed, the switch in /metrics and
/health.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eth_account import Account
from iotsettle.oracle.chain.node import Anvil
from iotsettle.oracle.chain.rpc import RpcClient
from iotsettle.oracle.daemon.store import Store
from iotsettle.oracle.daemon.txstore import TxStore
from iotsettle.oracle.testing.devices import Publisher
from iotsettle.oracle.testing.wait import wait_for

from tests.kit.proxy import Proxy
from tests.kit.reliability import Fleet, daemon, fund_relayer, nonce_report, summary


def _attempts(db: Path) -> dict[int, int]:
    """Signed attempts per nonce, as the daemon stored them."""
    store = Store.open(db)
    try:
        txstore = TxStore(store)
        return {tx.nonce: len(txstore.attempts(tx.tx_key)) for tx in txstore.all()}
    finally:
        store.close()


def test_a_frozen_endpoint_is_left_and_pending_transactions_are_resent_as_signed(
    deployment: Any, anvil: Anvil, mosquitto: Any, tmp_path: Path
) -> None:
    proxy = Proxy(("127.0.0.1", anvil.port)).start()
    direct = RpcClient(url=anvil.endpoint)
    fleet = Fleet(deployment, 4)
    key = fund_relayer(deployment)
    relayer = Account.from_key(key).address
    process = daemon(
        tmp_path / "oracle",
        deployment,
        mosquitto,
        key,
        IOTSETTLE_CHAIN_RPC_URLS=f"{proxy.url},{anvil.endpoint}",
        IOTSETTLE_CHAIN_TIMEOUT="2",
        IOTSETTLE_CHAIN_HEAD_CHECK="1",
    )
    publisher = Publisher(mosquitto.host, mosquitto.port, deployment.chain.chain_id)

    def in_pool() -> int:
        pending = int(direct.call("eth_getTransactionCount", [relayer, "pending"]), 16)
        return pending - int(direct.call("eth_getTransactionCount", [relayer, "latest"]), 16)

    try:
        process.start().wait_ready()
        publisher.publish_many(fleet.readings(1, timestamp=fleet.started + 1))
        fleet.wait_paid(30)
        assert process.metric("iotsettle_oracle_rpc_endpoint") == 1
        assert process.metric("iotsettle_oracle_rpc_switches_total") == 0

        direct.call("evm_setAutomine", [False])
        try:
            publisher.publish_many(fleet.readings(2, timestamp=fleet.started + 2))
            wait_for(lambda: in_pool() > 0, 30, "round 2's transaction(s) in the node's pool")
            proxy.freeze()
            forgotten = in_pool()
            direct.call("anvil_dropAllTransactions", [])
            assert in_pool() == 0, "the node must have forgotten the daemon's pending transactions"
        finally:
            direct.call("evm_setAutomine", [True])
        ledger = fleet.wait_paid(60)
        health = process.health() or {}
        switches = process.metric("iotsettle_oracle_rpc_switches_total")
        endpoint = process.metric("iotsettle_oracle_rpc_endpoint")
    finally:
        publisher.close()
        process.kill()
        proxy.stop()
    nonces = nonce_report(process.db, deployment.chain.w3, key)
    attempts = _attempts(process.db)
    log = process.log.read_text()
    summary(
        "rpc-failover",
        events=ledger.events_sent,
        forgotten_txs=forgotten,
        switches=int(switches),
        txs=len(nonces.nonces),
        lost=ledger.lost,
        double=ledger.double,
    )
    assert ledger.clean, ledger
    assert nonces.gapless, f"no duplicate and no skipped nonce: {nonces}"
    assert set(attempts.values()) == {1}, f"re-sent as signed, never re-signed: {attempts}"
    assert switches >= 1 and endpoint == 2
    rpc = health["checks"]["rpc"]
    assert rpc["status"] == "ok" and rpc["detail"].startswith("#2 http://127.0.0.1:"), rpc
    assert "re-sent" in log and "as signed" in log, log[-3000:]
    assert key[2:].lower() not in log.lower(), "the relayer key must never reach the log"
