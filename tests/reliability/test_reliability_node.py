"""The chain node goes away under a running daemon (docs/RELIABILITY.md, items 13 and 16), on an anvil of the
test's own that keeps its chain in a state file (``--state``: written on SIGTERM, read at start), so a restart
brings back the same chain.

- outage: anvil stopped for a while (3 s by default, 30 s with ``--runslow``) — the daemon stays up, backs off,
  reports "degraded" on /health, keeps taking in, storing and acknowledging events; when the node is back the
  backlog drains, every agreement is paid in full, no transaction is duplicated and the nonces have no gap.
- a different chain behind the same URL (a fresh anvil: other genesis, no contract code) — the daemon must not
  settle there.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from iotsettle.oracle.chain.compiler import ensure_compiled
from iotsettle.oracle.chain.connection import connect, load_sender
from iotsettle.oracle.chain.deploy import deploy_all
from iotsettle.oracle.chain.node import find_binary, free_port, rpc_ready
from iotsettle.oracle.testing.devices import Publisher
from iotsettle.oracle.testing.stack import Deployment
from iotsettle.oracle.testing.wait import wait_for

from tests.kit.reliability import Fleet, daemon, fund_relayer, nonce_report, store_statuses, summary
from tests.kit.stack import make_config

#: anvil's sixth default account (the standard test mnemonic); iotsettle.oracle.chain.connection lists the first five
DEV_KEY_5 = "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba"


@dataclass
class OwnAnvil:
    """anvil on a fixed port with its chain in ``state``; ``stop()`` lets it write the file, ``start()`` reads it."""

    binary: str
    port: int
    state: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, fresh: bool = False) -> None:
        command = [self.binary, "--host", "127.0.0.1", "--port", str(self.port), "--chain-id", "31337", "--silent"]
        if not fresh:
            command += ["--state", str(self.state)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(lambda: rpc_ready(self.url) == 31337, 30, "anvil to answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


@pytest.fixture
def own_chain(tmp_path: Path, deployment: Any, mosquitto: Any) -> Iterator[tuple[OwnAnvil, Deployment]]:
    port = free_port()
    config = make_config(tmp_path / "chain", port, mosquitto.port)
    node = OwnAnvil(find_binary(config, "anvil"), port, tmp_path / "anvil-state.json", tmp_path / "anvil.log")
    node.start()
    try:
        chain = connect(config)
        ensure_compiled(config)
        manifest = deploy_all(config, chain, load_sender(config, chain))
        yield node, Deployment(config, chain, manifest)
    finally:
        node.stop()


def _health(process: Any) -> dict[str, Any]:
    report = process.health()
    return report or {}


def _settlement(process: Any) -> str:
    return str(_health(process).get("checks", {}).get("settlement", {}).get("status"))


@pytest.mark.parametrize("outage", [pytest.param(3.0, id="3s"), pytest.param(30.0, id="30s", marks=pytest.mark.slow)])
def test_a_node_outage_degrades_then_drains_with_no_duplicate_transaction(
    outage: float,
    own_chain: tuple[OwnAnvil, Deployment],
    tmp_path: Path,
    mosquitto: Any,
) -> None:
    node, chain_deployment = own_chain
    fleet = Fleet(chain_deployment, 4)
    key = fund_relayer(chain_deployment)
    process = daemon(tmp_path / "oracle", chain_deployment, mosquitto, key)
    publisher = Publisher(mosquitto.host, mosquitto.port, chain_deployment.chain.chain_id)
    degraded_seen = alive_throughout = False
    try:
        process.start().wait_ready()
        publisher.publish_many(fleet.readings(1, timestamp=fleet.started + 1))
        fleet.wait_paid(30)

        node.stop()
        down_at = time.monotonic()
        # intake does not need the node: round 2 is stored and acknowledged during the outage
        publisher.publish_many(fleet.readings(2, timestamp=fleet.started + 2))
        replies = publisher.collect(len(fleet.meters) * 2, timeout=20)  # round 1's and round 2's answers
        assert sorted(body["status"] for _, body in replies).count("accepted") == 2 * len(fleet.meters)
        wait_for(lambda: _settlement(process) == "degraded", 20, "health to report settlement degraded")
        degraded_seen = True
        assert _health(process)["status"] == "degraded"
        while time.monotonic() - down_at < outage:
            assert process.proc is not None and process.proc.poll() is None, "the daemon crashed during the outage"
            time.sleep(0.5)
        alive_throughout = True
        unsettled_during = store_statuses(process.db)["pending"] + store_statuses(process.db)["claimed"]

        node.start()
        ledger = fleet.wait_paid(60)
        wait_for(lambda: _settlement(process) == "ok", 20, "health back to ok")
    finally:
        publisher.close()
        process.kill()
    nonces = nonce_report(process.db, chain_deployment.chain.w3, key)
    assert ledger.clean, ledger
    assert nonces.gapless, f"no duplicate and no skipped nonce: {nonces}"
    summary(
        "node-outage",
        outage_s=outage,
        events=ledger.events_sent,
        queued_during_outage=unsettled_during,
        degraded_seen=int(degraded_seen),
        daemon_up=int(alive_throughout),
        txs=len(nonces.nonces),
        lost=ledger.lost,
        double=ledger.double,
    )


def test_a_fresh_node_behind_the_same_url_gets_no_settlement(
    own_chain: tuple[OwnAnvil, Deployment],
    tmp_path: Path,
    mosquitto: Any,
) -> None:
    node, chain_deployment = own_chain
    fleet = Fleet(chain_deployment, 2)
    key = DEV_KEY_5  # funded on every fresh anvil too: only the daemon's own checks can hold it back
    process = daemon(tmp_path / "oracle", chain_deployment, mosquitto, key)
    publisher = Publisher(mosquitto.host, mosquitto.port, chain_deployment.chain.chain_id)
    try:
        process.start().wait_ready()
        publisher.publish_many(fleet.readings(1, timestamp=fleet.started + 1))
        fleet.wait_paid(30)
        node.stop()
        node.start(fresh=True)  # same URL, chain id 31337, other genesis, no contracts
        publisher.publish_many(fleet.readings(2, timestamp=fleet.started + 2))
        time.sleep(5.0)
        relayer = chain_deployment.chain.w3.eth.account.from_key(key).address
        relayer_txs_on_fresh_chain = chain_deployment.chain.w3.eth.get_transaction_count(relayer)
        health = _health(process)
    finally:
        publisher.close()
        process.kill()
    summary(
        "fresh-node",
        relayer_txs_on_fresh_chain=relayer_txs_on_fresh_chain,
        settlement=health.get("checks", {}).get("settlement", {}).get("status"),
    )
    assert relayer_txs_on_fresh_chain == 0, "the daemon sent settlement transactions to a chain it was not deployed on"
    assert health.get("checks", {}).get("settlement", {}).get("status") != "ok"
