"""Session fixtures: a real anvil and a real mosquitto on free loopback ports, and the contracts deployed.

The services are started through the same `iotsettle.oracle.chain.node` code as `iotsettle node up`, with their state
in a temporary folder, and are stopped when the session ends (no process is left behind). Each test folder's
conftest.py holds the fixtures only its tests use; plain helpers shared between folders are in `tests.kit`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from iotsettle.oracle.chain.compiler import ensure_compiled
from iotsettle.oracle.chain.connection import Chain, connect, load_sender
from iotsettle.oracle.chain.deploy import deploy_all
from iotsettle.oracle.chain.node import Anvil, Mosquitto, free_port
from iotsettle.oracle.config import Config
from web3 import Web3

from tests.kit.stack import Deployment, make_config


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--runslow", action="store_true", help="also run tests marked slow (crash matrix, soak, scale-out)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


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


@pytest.fixture(scope="session")
def deployment(test_config: Config, chain: Chain) -> Deployment:
    ensure_compiled(test_config)
    manifest = deploy_all(test_config, chain, load_sender(test_config, chain))
    return Deployment(test_config, chain, manifest)
