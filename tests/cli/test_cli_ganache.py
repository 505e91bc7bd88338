"""The CLI's end-to-end flows against ganache (chain id 1337) as well as anvil.

Differences found and handled: ganache takes ~8 s to start; it reports a revert during gas estimation as
``{"result": "0x…"}`` instead of a hex string (``iotsettle.oracle.chain.send`` reads both, so errors are the same
sentences); it funds anvil's development accounts only when started with anvil's mnemonic, as here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from eth_account import Account
from iotsettle.oracle.chain.compiler import ensure_compiled
from iotsettle.oracle.chain.connection import ANVIL_DEV_KEYS, connect, load_sender
from iotsettle.oracle.chain.deploy import deploy_all
from iotsettle.oracle.chain.node import free_port, rpc_ready
from iotsettle.oracle.chain.send import send
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.errors import ChainError
from iotsettle.oracle.protocol.location import location_bytes32
from iotsettle.oracle.testing.stack import Deployment

from tests.kit.cli import Cli, register_device
from tests.kit.nonces import racing_chain
from tests.kit.products import chain_now, delivery, reading, token_balance
from tests.kit.stack import REPO, make_config

GANACHE = REPO / "node_modules" / ".bin" / "ganache"
MNEMONIC = "test test test test test test test test test test test junk"
TOKEN = 10**18

pytestmark = pytest.mark.skipif(
    not GANACHE.exists() or shutil.which("node") is None, reason="ganache is not installed (scripts/setup installs it)"
)


@pytest.fixture(scope="module")
def ganache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    state = tmp_path_factory.mktemp("ganache")
    port = free_port()
    config = make_config(state, port, free_port())
    with open(state / "ganache.log", "wb") as log:
        process = subprocess.Popen(
            [
                str(GANACHE),
                "--chain.chainId",
                "1337",
                "--wallet.mnemonic",
                MNEMONIC,
                "--server.host",
                "127.0.0.1",
                "--server.port",
                str(port),
                "--logging.quiet",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while rpc_ready(config.chain.rpc_url) != 1337:
            assert process.poll() is None, (state / "ganache.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "ganache did not start within 60 s"
            time.sleep(0.2)
        ensure_compiled(config)
        chain = connect(config)
        yield Deployment(config, chain, deploy_all(config, chain, load_sender(config, chain)))
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_escrow_on_ganache(ganache) -> None:
    cli, w3 = Cli(ganache.config), ganache.chain.w3
    assert w3.eth.chain_id == 1337
    buyer, seller = cli.user(w3), cli.user(w3)
    tracker = register_device(ganache.config, buyer, DeviceKind.TRACKER)
    cli.ok(["token", "mint", "--amount", "30"], buyer)
    escrow_id = cli.ok(
        [
            "escrow",
            "create",
            "--seller",
            seller.address,
            "--device",
            tracker.address,
            "--amount",
            "30",
            "--destination",
            "u33dbfc",
            "--deadline",
            "+1h",
        ],
        buyer,
    )["escrowId"]
    signed = delivery(
        tracker, 1337, ganache.address("DeliveryEscrow"), escrow_id, 1, chain_now(w3), location_bytes32("u33dbfc")
    )
    confirmed = cli.ok(["escrow", "confirm", "-"], seller, stdin=signed.to_payload().decode())
    assert confirmed["results"][0]["confirmed"] is True
    again = cli.fails(["escrow", "confirm", "-"], seller, stdin=signed.to_payload().decode())
    assert again == f"escrow {escrow_id} was already released on block {confirmed['block']}"
    cli.ok(["escrow", "withdraw"], seller)
    assert token_balance(ganache, seller.address) == 30 * TOKEN
    assert [e["event"] for e in cli.ok(["audit", "escrow", str(escrow_id)])["entries"]] == [
        "EscrowCreated",
        "DeliveryConfirmed",
    ]


@pytest.mark.slow  # the escrow flow above is the default-run check; this one and the next with --runslow
def test_refund_after_deadline_on_ganache(ganache) -> None:
    cli, w3 = Cli(ganache.config), ganache.chain.w3
    buyer, seller = cli.user(w3), cli.user(w3)
    tracker = register_device(ganache.config, buyer, DeviceKind.TRACKER)
    cli.ok(["token", "mint", "--amount", "4"], buyer)
    escrow_id = cli.ok(
        [
            "escrow",
            "create",
            "--seller",
            seller.address,
            "--device",
            tracker.address,
            "--amount",
            "4",
            "--destination",
            "u33dbfc",
            "--deadline",
            "+10m",
        ],
        buyer,
    )["escrowId"]
    assert f"escrow {escrow_id} can be refunded from " in cli.fails(["escrow", "refund", str(escrow_id)], buyer)
    w3.provider.make_request("evm_increaseTime", [601 + 3600])  # the deadline, then the settlement grace
    w3.provider.make_request("evm_mine", [])
    cli.ok(["escrow", "refund", str(escrow_id)], buyer)
    cli.ok(["escrow", "withdraw"], buyer)
    assert token_balance(ganache, buyer.address) == 4 * TOKEN


@pytest.mark.slow
def test_agreement_on_ganache(ganache) -> None:
    cli, w3 = Cli(ganache.config), ganache.chain.w3
    provider, consumer = cli.user(w3), cli.user(w3)
    meter = register_device(ganache.config, provider, DeviceKind.METER)
    agreement_id = int(
        cli.ok(
            [
                "agreement",
                "open",
                "--consumer",
                consumer.address,
                "--device",
                meter.address,
                "--price",
                "0.5",
                "--start-value",
                "100",
            ],
            provider,
        )["agreementId"]
    )
    cli.ok(["token", "mint", "--amount", "10"], consumer)
    cli.ok(["agreement", "accept", str(agreement_id), "--deposit", "10"], consumer)
    contract, now = ganache.address("MeteredBilling"), chain_now(w3)
    batch = "\n".join(
        reading(meter, 1337, contract, agreement_id, seq, now, value).to_payload().decode()
        for seq, value in [(1, 104), (2, 90)]
    )
    out = cli.ok(["agreement", "settle", "-"], provider, stdin=batch)
    assert [(r["settled"], r["reason"]) for r in out["results"]] == [(True, None), (False, "CounterRollback")]
    assert cli.ok(["agreement", "withdraw", str(agreement_id)], provider)["amount"] == str(2 * TOKEN)
    final = reading(meter, 1337, contract, agreement_id, 3, chain_now(w3), 104).to_payload().decode()
    ended = cli.ok(["agreement", "close", str(agreement_id), "--reading", "-"], consumer, stdin=final)
    assert (ended["closed"], ended["refund"]) == (False, "0"), "the refund waits for the grace"
    w3.provider.make_request("evm_increaseTime", [3601])
    w3.provider.make_request("evm_mine", [])
    closed = cli.ok(["agreement", "close", str(agreement_id)], consumer)
    assert closed["closed"] is True and closed["refund"] == str(8 * TOKEN)
    assert token_balance(ganache, consumer.address) == 8 * TOKEN


def test_a_short_demo_completes_on_ganache_after_earlier_use(ganache, mosquitto, tmp_path) -> None:
    """Issue 15: the demo on ganache stopped with "cover for season 1 was on sale until …" (the sale window passed
    while ganache was busy) and, run again on the same node, with ganache's raw "doesn't have the correct nonce"
    stack. This node already holds a deployment and transactions of the tests above, as a second run would."""
    config = ganache.config
    env = {
        **os.environ,
        "IOTSETTLE_CONFIG": str(REPO / "tests" / "empty.toml"),
        "IOTSETTLE_CHAIN_PRIVATE_KEY": "",
        "IOTSETTLE_PATHS_DEPLOYMENTS_DIR": str(config.path(config.paths.deployments_dir)),
        "IOTSETTLE_NODE_STATE_DIR": str(tmp_path / "state"),
        "COLUMNS": "120",
    }
    args = ["--rpc", config.chain.rpc_url, "--broker", f"127.0.0.1:{mosquitto.port}", "--duration", "5"]
    args += ["--devices", "3", "--rate", "6", "--season", "5", "--faults", "", "--workdir", str(tmp_path / "work")]
    done = subprocess.run(
        [sys.executable, "-c", "from iotsettle.cli.main import main; main()", "demo", *args, "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stack" not in done.stderr and "RuntimeError" not in done.stderr
    summary = json.loads(done.stdout)
    assert summary["chainId"] == 1337
    assert summary["oracle"]["backlog"] == 0
    assert summary["chain"]["readingsSettled"] > 0
    crop = summary["crop"]
    assert len(crop["covers"]) == 3, "every farmer bought cover inside the sale window"
    assert crop["votes"]["abstain"] == 0, crop["stations"]


def test_a_nonce_taken_on_ganache_is_sent_again_and_a_refusal_is_one_sentence(ganache) -> None:
    """ganache refuses a taken nonce with "the tx doesn't have the correct nonce" and its JavaScript stack."""
    chain, sender = ganache.chain, Account.from_key(ANVIL_DEV_KEYS[1])
    racing, node = racing_chain(chain, sender)
    receipt = send(racing, sender, {"to": sender.address, "value": 0})
    assert racing.w3.eth.get_transaction(receipt["transactionHash"])["nonce"] == node.taken[0] + 1
    stale = chain.w3.eth.get_transaction_count(sender.address) - 1
    with pytest.raises(ChainError) as refused:
        send(chain, sender, {"to": sender.address, "value": 0, "nonce": stale})  # a nonce its caller chose
    message = str(refused.value)
    assert message == "sending the transaction failed: the tx doesn't have the correct nonce", message
