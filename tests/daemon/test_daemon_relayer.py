"""The daemon and the CLI on one local chain with nothing configured: each sends from its own account, so a CLI
command run while the daemon settles neither fails on a nonce nor costs the daemon one (issue 15)."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

from eth_account import Account
from iotsettle.oracle.chain.connection import ANVIL_DEV_KEYS, RELAYER_DEV_KEY
from iotsettle.oracle.protocol import wire
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.testing.devices import Publisher
from iotsettle.oracle.testing.wait import wait_for

from tests.kit.cli import Cli, User, register_device
from tests.kit.daemon import DaemonProcess
from tests.kit.products import chain_now, reading
from tests.kit.reliability import Fleet

READINGS = 60
CLI_SENDS = 4


def _open(cli: Cli, consumer: str, device: str) -> int:
    """`iotsettle agreement open` as the CLI's default sender (no key configured: anvil account 0)."""
    opened = cli.ok(
        ["agreement", "open", "--consumer", consumer, "--device", device, "--price", "0.001", "--start-value", "1000"]
    )
    return int(opened["agreementId"])


def test_cli_commands_while_the_daemon_settles_take_no_nonce_from_it(
    tmp_path: Path, deployment: Any, mosquitto: Any, daemons: list[DaemonProcess]
) -> None:
    cli, w3 = Cli(deployment.config), deployment.chain.w3
    default_sender = User(Account.from_key(ANVIL_DEV_KEYS[0]), "UNUSED")
    consumer = cli.user(w3)
    meters = [register_device(deployment.config, default_sender, DeviceKind.METER) for _ in range(1 + CLI_SENDS)]
    agreement = _open(cli, consumer.address, meters[0].address)
    cli.ok(["token", "mint", "--to", consumer.address, "--amount", "100"], consumer)
    cli.ok(["agreement", "accept", hex(agreement), "--deposit", "100"], consumer)

    # nothing configured: no IOTSETTLE_CHAIN_PRIVATE_KEY, so the daemon picks its relayer itself
    daemon = DaemonProcess(
        tmp_path, deployment, mosquitto, IOTSETTLE_CHAIN_PRIVATE_KEY="", IOTSETTLE_ORACLE_BATCH_MAX_WAIT="0.02"
    )
    daemons.append(daemon)
    daemon.start().wait_ready()
    relayer = re.search(r"relayer (0x[0-9a-fA-F]{40})", daemon.log.read_text())
    assert relayer is not None, daemon.log.read_text()[-2000:]
    assert relayer.group(1) == Account.from_key(RELAYER_DEV_KEY).address != default_sender.address

    billing = deployment.address("MeteredBilling")
    start = chain_now(w3)
    publisher = Publisher(mosquitto.host, mosquitto.port, w3.eth.chain_id)
    topic = wire.events_topic(w3.eth.chain_id, meters[0].address)

    def publish() -> None:  # a reading every 50 ms: the daemon sends a settlement at each batch cut
        for seq in range(1, READINGS + 1):
            event = reading(meters[0], w3.eth.chain_id, billing, agreement, seq, start + seq, 1000 + seq)
            publisher.publish(topic, event.to_payload())
            time.sleep(0.05)

    feeder = threading.Thread(target=publish)
    feeder.start()
    try:
        opened = [_open(cli, consumer.address, meter.address) for meter in meters[1:]]  # each must succeed
        feeder.join(30)
        wait_for(
            lambda: cli.ok(["agreement", "status", hex(agreement)])["last_value"] == 1000 + READINGS,
            60,
            "the last reading settled",
        )
    finally:
        feeder.join(30)
        publisher.close()
    assert len(set(opened)) == CLI_SENDS
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(60) == 0
    log = daemon.log.read_text()
    assert "did not sign" not in log, [line for line in log.splitlines() if "did not sign" in line]
    assert w3.eth.get_transaction_count(relayer.group(1)) > 0, "the daemon settled from its own account"


def test_the_daemon_settles_through_a_remote_signer_without_the_key(
    tmp_path: Path, deployment: Any, mosquitto: Any, daemons: list[DaemonProcess]
) -> None:
    """``[chain] signer = "remote"``: anvil signs for its unlocked development account 8 over eth_signTransaction; the
    daemon holds no key (none configured, no development default taken) and every reading is paid."""
    remote = "0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f"
    fleet = Fleet(deployment, 2)
    before = deployment.chain.w3.eth.get_transaction_count(remote)
    daemon = DaemonProcess(
        tmp_path,
        deployment,
        mosquitto,
        IOTSETTLE_CHAIN_PRIVATE_KEY="",
        IOTSETTLE_CHAIN_SIGNER="remote",
        IOTSETTLE_CHAIN_SIGNER_URL=deployment.config.chain.rpc_url,
        IOTSETTLE_CHAIN_SIGNER_ADDRESS=remote,
        IOTSETTLE_ORACLE_BATCH_MAX_WAIT="0.05",
    )
    daemons.append(daemon)
    daemon.start().wait_ready()
    publisher = Publisher(mosquitto.host, mosquitto.port, deployment.chain.chain_id)
    try:
        publisher.publish_many(fleet.readings(1, timestamp=fleet.started + 1))
        ledger = fleet.wait_paid(30)
    finally:
        publisher.close()
    assert ledger.clean, ledger
    assert f"relayer {remote}" in daemon.log.read_text()
    assert deployment.chain.w3.eth.get_transaction_count(remote) > before, "the daemon's transactions came from it"
