"""Read-only status commands answer without loading web3: they read through the raw RPC client and the
view-call codec (`ops.views`, `chain.calls`, `chain.abi`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from iotsettle.oracle.protocol.device_kinds import DeviceKind

from tests.kit.cli import Cli, cli_env, register_device


def _status_in_a_fresh_process(cli: Cli, args: list[str]) -> dict:
    """``iotsettle <args> --json`` in a new interpreter: its output, after checking it never imported web3."""
    probe = (
        "import sys\nfrom iotsettle.cli.main import main\n"
        f"sys.argv = ['iotsettle', *{args!r}, '--json']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print('loaded:', [m for m in ('web3', 'eth_account') if m in sys.modules], file=sys.stderr)\n"
    )
    env = {**os.environ, **cli_env(cli.config)}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert done.stderr.strip().endswith("loaded: []"), done.stderr
    shown = json.loads(done.stdout)
    assert shown == cli.ok(args), "the same figures as through web3's context in process"
    return shown


def test_agreement_status_answers_without_web3(cli, deployment, w3) -> None:
    provider, consumer = cli.user(w3), cli.user(w3)
    meter = register_device(deployment.config, provider, DeviceKind.METER)
    opened = cli.ok(
        ["agreement", "open", "--consumer", consumer.address, "--device", meter.address, "--price", "0.5"], provider
    )
    shown = _status_in_a_fresh_process(cli, ["agreement", "status", opened["agreementIdHex"]])
    assert (shown["status"], shown["consumer"], shown["device"]) == ("offered", consumer.address, meter.address)


def test_escrow_status_answers_without_web3(cli, deployment, w3) -> None:
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
        ],
        buyer,
    )
    shown = _status_in_a_fresh_process(cli, ["escrow", "status", str(created["escrowId"])])
    assert (shown["state"], shown["seller"], shown["amount"]) == ("funded", seller.address, str(5 * 10**17))
