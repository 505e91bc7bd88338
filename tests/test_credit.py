"""`iotsettle credit profile / verify` on a real anvil: a history built through the ordinary operations, profiled
from the chain's logs, exported, verified, and caught when a figure in the file is changed."""

from __future__ import annotations

import json

import pytest

from oracle.device.location import location_bytes32
from oracle.eip712 import DeviceKind
from oracle.ops import credit as ops

from tests.cli_support import Cli, chain_now, delivery, reading, register_device

TOKEN = 10**18
DEST = "u33dc0cr"


@pytest.fixture()
def cli(deployment) -> Cli:
    return Cli(deployment.config)


def _settle(cli: Cli, deployment, w3, meter, agreement_id: int, seq: int, value: int, relayer) -> None:
    signed = reading(meter, w3.eth.chain_id, deployment.address("MeteredBilling"), agreement_id, seq, chain_now(w3),
                     value)
    cli.ok(["agreement", "settle", "-"], relayer, stdin=signed.to_payload().decode())


def _history(cli: Cli, deployment, w3):
    """The subject consumes metered energy (one reading paid on time, one that runs dry, a top-up that resumes) and
    sells a delivery tracked by its own tracker (released)."""
    subject, provider, buyer = cli.user(w3), cli.user(w3), cli.user(w3)
    meter = register_device(deployment.config, provider, DeviceKind.METER)
    agreement_id = int(cli.ok(["agreement", "open", "--consumer", subject.address, "--device", meter.address,
                               "--price", "1", "--start-value", "1000"], provider)["agreementId"])
    cli.ok(["token", "mint", "--to", subject.address, "--amount", "100"], subject)
    cli.ok(["agreement", "accept", hex(agreement_id), "--deposit", "3"], subject)
    _settle(cli, deployment, w3, meter, agreement_id, 1, 1002, provider)  # costs 2 of the 3 prepaid: on time
    _settle(cli, deployment, w3, meter, agreement_id, 2, 1005, provider)  # costs 3, 1 left: suspended, arrears 2
    assert cli.ok(["agreement", "status", hex(agreement_id)])["status"] == "suspended"
    cli.ok(["agreement", "top-up", hex(agreement_id), "--amount", "4"], subject)  # pays the 2 arrears, resumes

    tracker = register_device(deployment.config, subject, DeviceKind.TRACKER)
    cli.ok(["token", "mint", "--to", buyer.address, "--amount", "100"], buyer)
    escrow_id = cli.ok(["escrow", "create", "--seller", subject.address, "--device", tracker.address, "--amount", "25",
                        "--destination", DEST, "--deadline", "+2h"], buyer)["escrowId"]
    signed = delivery(tracker, w3.eth.chain_id, deployment.address("DeliveryEscrow"), escrow_id, 1, chain_now(w3),
                      location_bytes32(DEST))
    cli.ok(["escrow", "confirm", "-"], buyer, stdin=signed.to_payload().decode())
    return subject, agreement_id, escrow_id, tracker


def test_profile_export_verify_and_a_tampered_figure(cli, deployment, w3, tmp_path) -> None:
    subject, agreement_id, escrow_id, tracker = _history(cli, deployment, w3)
    token = deployment.address("TestToken")
    block = w3.eth.block_number

    first, second = tmp_path / "a.json", tmp_path / "b.json"
    doc = cli.ok(["credit", "profile", subject.address, "--to-block", str(block), "--out", str(first)])
    cli.ok(["credit", "profile", subject.address.lower(), "--to-block", str(block), "--out", str(second)])
    assert first.read_bytes() == second.read_bytes()  # deterministic: same block, same bytes
    assert json.loads(first.read_text()) == doc

    assert (doc["profileVersion"], doc["subject"]) == (ops.PROFILE_VERSION, subject.address)
    assert doc["chain"] == {"chainId": w3.eth.chain_id, "genesisHash": w3.eth.get_block(0)["hash"].to_0x_hex()}
    assert doc["range"]["toBlock"] == block and doc["range"]["toBlockHash"] == w3.eth.get_block(block)["hash"].to_0x_hex()
    assert doc["contracts"]["MeteredBilling"]["address"] == deployment.address("MeteredBilling")

    consumer = doc["figures"]["consumer"]
    assert {k: consumer[k] for k in ("agreements", "accepted", "readings", "readingsPaidOnTime", "paidOnTimeBps",
                                     "suspensions", "resumptions", "suspendedNow", "topUps")} == \
        {"agreements": 1, "accepted": 1, "readings": 2, "readingsPaidOnTime": 1, "paidOnTimeBps": 5_000,
         "suspensions": 1, "resumptions": 1, "suspendedNow": 0, "topUps": 1}
    assert consumer["deposited"] == {token: str(7 * TOKEN)} and consumer["billed"] == {token: str(3 * TOKEN)}
    assert consumer["arrearsIncurred"] == {token: str(2 * TOKEN)} and consumer["arrearsPaid"] == {token: str(2 * TOKEN)}
    assert consumer["suspendedSeconds"] >= 0 and consumer["items"][hex(agreement_id)]["readings"] == 2

    seller = doc["figures"]["seller"]
    assert (seller["escrows"], seller["delivered"], seller["refunded"], seller["onTimeBps"]) == (1, 1, 0, 10_000)
    assert seller["released"] == {token: str(25 * TOKEN)} and seller["items"][str(escrow_id)]["outcome"] == "delivered"

    devices = doc["figures"]["devices"]
    assert devices["count"] == 1 and devices["byKind"] == {"TRACKER": 1}
    item = devices["items"][tracker.address]
    assert item["settled"]["events"] == 1 and item["settled"]["deliveries"] == 1
    assert item["uptime"]["bucket"] == "hour" and item["uptime"]["active"] == 1  # a young device: hours
    assert item["uptime"]["bps"] == 10_000 // item["uptime"]["buckets"]
    assert doc["figures"]["loans"]["taken"] == 0 and doc["figures"]["crop"]["covers"] == 0

    # every cited log is on chain where the file says, emitted by the contract the figure is about
    logs = doc["evidence"]["logs"]
    cited = [logs[i] for i in doc["evidence"]["figures"]["consumer.readings"]]
    assert len(cited) == 2
    for tx_hash, log_index, block_number in cited:
        receipt = w3.eth.get_transaction_receipt(tx_hash)
        entry = next(e for e in receipt["logs"] if e["logIndex"] == log_index)
        assert (receipt["blockNumber"], entry["address"]) == (block_number, deployment.address("MeteredBilling"))

    result = cli.run(["credit", "verify", str(first)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("verified")

    tampered = json.loads(first.read_text())
    tampered["figures"]["consumer"]["billed"][token] = str(30 * TOKEN)
    (tmp_path / "t.json").write_text(json.dumps(tampered))
    result = cli.run(["credit", "verify", str(tmp_path / "t.json")])
    assert result.exit_code == 1
    assert f"figure consumer.billed.{token}: the file says \"{30 * TOKEN}\", the chain gives \"{3 * TOKEN}\"" in result.stdout

    # a log dropped from the evidence of a figure is caught too
    tampered = json.loads(first.read_text())
    tampered["evidence"]["figures"]["consumer.readings"].pop()
    (tmp_path / "e.json").write_text(json.dumps(tampered))
    result = cli.run(["credit", "verify", str(tmp_path / "e.json"), "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout) == {
        "verified": False, "difference": "evidence of figure consumer.readings: the logs cited differ from the chain's"}


def test_profile_of_a_stranger_is_empty_and_a_future_block_is_refused(cli, deployment, w3) -> None:
    stranger = cli.user(w3)
    doc = cli.ok(["credit", "profile", stranger.address])
    assert doc["figures"]["devices"]["count"] == 0 and doc["figures"]["consumer"]["paidOnTimeBps"] is None
    assert doc["evidence"] == {"logs": [], "figures": {}}
    error = cli.fails(["credit", "profile", stranger.address, "--to-block", str(w3.eth.block_number + 100)])
    assert error.startswith(f"block {w3.eth.block_number + 100} is not mined yet")
