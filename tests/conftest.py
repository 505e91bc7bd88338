"""Session fixtures: a real anvil and a real mosquitto on free loopback ports, and the contracts deployed.

The services are started through the same `iotsettle.oracle.chain.node` code as `iotsettle node up`, with their state in a
temporary folder, and are stopped when the session ends (no process is left behind).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3
from web3.contract import Contract

from iotsettle.oracle.chain.connection import Chain, connect, load_sender
from iotsettle.oracle.chain.compiler import ensure_compiled
from iotsettle.oracle.config import Config, local_stack_config
from iotsettle.oracle.chain.deploy import contract, deploy_all
from iotsettle.oracle.chain.node import Anvil, Mosquitto, free_port

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow (crash matrix, soak, scale-out)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def make_config(state_dir: Path, anvil_port: int, mqtt_port: int, **env: str) -> Config:
    """A configuration for a stack in ``state_dir``: only environment-style overrides, never the user's files."""
    return dataclasses.replace(local_stack_config(state_dir, anvil_port, mqtt_port, **env), root=REPO)


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def test_config(stack_dir: Path) -> Config:
    return make_config(stack_dir, free_port(), free_port())


@pytest.fixture(scope="session")
def anvil(test_config: Config) -> Iterator[Anvil]:
    service = Anvil(test_config)
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def mosquitto(test_config: Config) -> Iterator[Mosquitto]:
    service = Mosquitto(test_config)
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def chain(anvil: Anvil, test_config: Config) -> Chain:
    return connect(test_config)


@pytest.fixture(scope="session")
def w3(chain: Chain) -> Web3:
    return chain.w3


@dataclass(frozen=True)
class Deployment:
    config: Config
    chain: Chain
    manifest: dict[str, Any]

    def address(self, name: str) -> str:
        return str(self.manifest["contracts"][name]["address"])

    def contract(self, name: str) -> Contract:
        return contract(self.chain, self.config, self.manifest, name)


@contextmanager
def private_deployment(state_dir: Path) -> Iterator[Deployment]:
    """An anvil of its own on free ports with everything deployed, for tests that spend accounts or warp time."""
    config = make_config(state_dir, free_port(), free_port())
    node = Anvil(config)
    node.start()
    try:
        ensure_compiled(config)
        chain = connect(config)
        yield Deployment(config, chain, deploy_all(config, chain, load_sender(config, chain)))
    finally:
        node.stop()


@pytest.fixture(scope="session")
def deployment(test_config: Config, chain: Chain) -> Deployment:
    ensure_compiled(test_config)
    manifest = deploy_all(test_config, chain, load_sender(test_config, chain))
    return Deployment(test_config, chain, manifest)
