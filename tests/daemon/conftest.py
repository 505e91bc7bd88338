"""Fixtures of the daemon tests: an oracle store in the test's folder, the on-chain registry, settlement scenarios
on the session deployment, fresh relayers, and daemon processes that are killed after (the device-side MQTT
client `publisher` is the plugin's)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from iotsettle.oracle.chain.artifacts import load_artifact
from iotsettle.oracle.chain.compiler import ensure_compiled
from iotsettle.oracle.config import Config
from iotsettle.oracle.daemon.store import Store

from tests.kit.daemon import DaemonProcess
from tests.kit.devices import ChainRegistry
from tests.kit.settlement import Scenario


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store.open(tmp_path / "oracle.db")
    yield db
    db.close()


@pytest.fixture(scope="module")
def registry(deployment: Any) -> ChainRegistry:
    return ChainRegistry(deployment)


@pytest.fixture(scope="module")
def scenario(deployment: Any) -> Scenario:
    return Scenario(deployment)


@pytest.fixture
def relayer(scenario: Scenario) -> LocalAccount:
    """A fresh relayer account per test, so each test's nonce history is its own."""
    account = Account.create()
    scenario.fund(account.address)
    return account


@pytest.fixture(scope="module")
def abis(test_config: Config) -> dict[str, list]:  # type: ignore[type-arg]
    ensure_compiled(test_config)
    return {
        "reading": load_artifact(test_config, "MeteredBilling")["abi"],
        "delivery": load_artifact(test_config, "DeliveryEscrow")["abi"],
    }


@pytest.fixture
def daemons(tmp_path: Path, deployment: Any, mosquitto: Any) -> Iterator[list[DaemonProcess]]:
    made: list[DaemonProcess] = []
    yield made
    for daemon in made:
        daemon.kill()
