"""The web3-free reads (`ops.views` over `chain.calls`) return what the web3 operations return, and refuse a
deployment that is not on this chain the way a sending context does."""

from __future__ import annotations

import json

import pytest
from iotsettle.oracle.chain.calls import ContractReader
from iotsettle.oracle.chain.connection import connect
from iotsettle.oracle.ops import billing, escrow, token_info
from iotsettle.oracle.ops.context import open_context
from iotsettle.oracle.ops.views import agreement_status, escrow_status, open_reads
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.errors import ChainError, DeploymentError

from tests.kit.cli import Cli, register_device


def _agreement(deployment, w3) -> int:
    cli = Cli(deployment.config)
    provider, consumer = cli.user(w3), cli.user(w3)
    meter = register_device(deployment.config, provider, DeviceKind.METER)
    opened = cli.ok(
        ["agreement", "open", "--consumer", consumer.address, "--device", meter.address, "--price", "0.25"], provider
    )
    return int(opened["agreementId"])


def test_an_agreement_reads_the_same_with_and_without_web3(deployment, w3) -> None:
    agreement_id = _agreement(deployment, w3)
    ops = open_context(deployment.config)
    shown = agreement_status(open_reads(deployment.config), agreement_id)
    assert shown.agreement == billing.agreement_of(ops, agreement_id)
    assert shown.token == token_info.describe_token(ops, shown.agreement.token)
    assert shown.close_delay == billing.settlement_grace(ops)
    assert shown.mode == "direct"

    raw = ContractReader(
        open_reads(deployment.config).rpc, deployment.address("MeteredBilling"), ops.abis["MeteredBilling"]
    )
    assert raw.call("agreementOf", agreement_id) == tuple(
        deployment.contract("MeteredBilling").functions.agreementOf(agreement_id).call()
    ), "a struct comes back as web3 returns it: a tuple, addresses checksummed"


def test_an_escrow_reads_the_same_with_and_without_web3(deployment, w3) -> None:
    cli = Cli(deployment.config)
    buyer, seller = cli.user(w3), cli.user(w3)
    tracker = register_device(deployment.config, buyer, DeviceKind.TRACKER)
    created = cli.ok(
        [
            "escrow",
            "create",
            "--seller",
            seller.address,
            "--device",
            tracker.address,
            "--amount",
            "0.5",
            "--token",
            "ETH",
            "--destination",
            "u33dbfc",
            "--deadline",
            "+2h",
            "--temperature-limit",
            "8",
        ],
        buyer,
    )
    ops = open_context(deployment.config)
    shown = escrow_status(open_reads(deployment.config), created["escrowId"])
    assert shown.escrow == escrow.escrow_of(ops, created["escrowId"])
    assert shown.token == token_info.describe_token(ops, "ETH")
    assert shown.refundable_from == escrow.refundable_from(ops, shown.escrow)


def test_a_missing_agreement_is_one_sentence(deployment) -> None:
    with pytest.raises(ChainError, match=r"^agreement 12345 does not exist on chain \d+$"):
        agreement_status(open_reads(deployment.config), 12345)


def test_a_manifest_that_does_not_match_the_chain_is_refused(deployment, tmp_path) -> None:
    manifest = json.loads(json.dumps(deployment.manifest))
    # MeteredBilling's entry points at the registry: code is there, but not MeteredBilling's.
    manifest["contracts"]["MeteredBilling"]["address"] = deployment.address("DeviceRegistry")
    (tmp_path / f"{deployment.chain.chain_id}.json").write_text(json.dumps(manifest))
    config = deployment.config.replace("paths", deployments_dir=str(tmp_path))
    with pytest.raises(DeploymentError, match=r"MeteredBilling at .* does not hold the compiled code"):
        agreement_status(open_reads(config), 1)

    manifest["genesisHash"] = "0x" + "00" * 32
    (tmp_path / f"{deployment.chain.chain_id}.json").write_text(json.dumps(manifest))
    with pytest.raises(DeploymentError, match="not the chain the manifest was written for"):
        open_reads(config)


def test_an_unreachable_node_is_the_same_sentence_as_for_web3(deployment) -> None:
    with pytest.raises(ChainError) as through_web3:
        connect(deployment.config, "http://127.0.0.1:9")
    with pytest.raises(ChainError) as without:
        open_reads(deployment.config, "http://127.0.0.1:9")
    assert str(without.value) == str(through_web3.value)
    assert str(without.value).startswith("cannot reach the RPC endpoint http://127.0.0.1:9 (ConnectionError)")
