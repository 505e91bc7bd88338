"""The pytest plugin: fixtures for integration tests against a private local stack (docs/TESTING.md).

Installing iotsettle registers it under the ``pytest11`` entry point ``iotsettle``, so the fixtures are there in any
project's tests; ``-p no:iotsettle`` turns it off, and ``-p iotsettle.oracle.testing.plugin`` loads it where plugin
autoloading is off. The session starts one anvil and one mosquitto on free loopback ports and stops them at its
end; everything it deploys, funds and registers lives on that private chain.

The ini option ``iotsettle_root`` names the project whose foundry.toml and contracts/ are deployed (relative to the
ini file); by default the working folder if it has a foundry.toml, else the iotsettle checkout.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount
from iotsettle.oracle.chain.connection import Chain, connect
from iotsettle.oracle.chain.node import Anvil, Mosquitto
from iotsettle.oracle.device.signer import EventSigner
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.errors import ConfigError
from iotsettle.oracle.protocol.wire import SignedEvent
from iotsettle.oracle.testing.accounts import DEV_ACCOUNTS, ETHER, funded_account
from iotsettle.oracle.testing.daemon import DaemonProcess
from iotsettle.oracle.testing.devices import DeviceFactory, Publisher
from iotsettle.oracle.testing.stack import Deployment, LocalStack, deploy
from iotsettle.oracle.testing.wait import Payment, wait_until_paid
from web3 import Web3

ROOT_OPTION = "iotsettle_root"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        ROOT_OPTION,
        "folder with the foundry.toml and contracts/ to deploy (default: the working folder if it has a "
        "foundry.toml, else the iotsettle checkout)",
        default="",
    )


def _root(config: pytest.Config) -> Path | None:
    value = str(config.getini(ROOT_OPTION) or "")
    if not value:
        return None
    base = config.inipath.parent if config.inipath else config.rootpath
    return (base / value).resolve()


@pytest.fixture(scope="session")
def local_stack(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """anvil and mosquitto on free loopback ports for the whole session; stopped when it ends."""
    stack = LocalStack(tmp_path_factory.mktemp("iotsettle-stack"), root=_root(pytestconfig))
    if not (stack.config.root / "foundry.toml").is_file():
        raise ConfigError(
            f"no foundry.toml in {stack.config.root}: set the pytest ini option {ROOT_OPTION} to the iotsettle "
            "checkout (or a project laid out like it) whose contracts the tests deploy"
        )
    with stack:
        yield stack


@pytest.fixture(scope="session")
def anvil(local_stack: LocalStack) -> Anvil:
    """The session's anvil (``.endpoint`` is its JSON-RPC URL)."""
    return local_stack.anvil


@pytest.fixture(scope="session")
def mosquitto(local_stack: LocalStack) -> Mosquitto:
    """The session's MQTT broker (``.host``, ``.port``)."""
    return local_stack.mosquitto


@pytest.fixture(scope="session")
def chain(local_stack: LocalStack) -> Chain:
    return connect(local_stack.config)


@pytest.fixture(scope="session")
def w3(chain: Chain) -> Web3:
    return chain.w3


@pytest.fixture(scope="session")
def deployment(local_stack: LocalStack, chain: Chain) -> Deployment:
    """Every contract compiled and deployed once per session; ``.contract(name)``, ``.address(name)``,
    ``.ops(sender)`` for the ``iotsettle.oracle.ops`` functions."""
    return deploy(local_stack.config, chain)


@pytest.fixture(scope="session")
def dev_accounts() -> tuple[LocalAccount, ...]:
    """The node's ten funded development accounts (account 0 deployed the contracts and funds ``fund``)."""
    return DEV_ACCOUNTS


@pytest.fixture
def fund(chain: Chain) -> Callable[..., LocalAccount]:
    """``fund(eth=10)``: a new account of the test's own holding ``eth`` ether (none when 0)."""

    def make(eth: float = 10) -> LocalAccount:
        return funded_account(chain, int(eth * ETHER))

    return make


@pytest.fixture(scope="session")
def device_owner(chain: Chain) -> LocalAccount:
    """The account ``register_device`` registers devices to, unless told another."""
    return funded_account(chain, 100 * ETHER)


@pytest.fixture
def register_device(deployment: Deployment, device_owner: LocalAccount) -> Callable[..., EventSigner]:
    """``register_device(kind="meter", owner=None)``: a new device key registered in the DeviceRegistry, as the
    device SDK's signer (``.reading``, ``.delivery``, ``.telematics``, ``.weather``; ``.key.address``)."""
    factory = DeviceFactory(deployment, device_owner)

    def make(kind: DeviceKind | str = DeviceKind.METER, *, owner: LocalAccount | None = None) -> EventSigner:
        return factory(kind, owner=owner)

    return make


@pytest.fixture
def publisher(mosquitto: Mosquitto, chain: Chain) -> Iterator[Publisher]:
    """A device-side MQTT client on the session broker: ``.send(event)`` publishes and returns the oracle's reply."""
    client = Publisher(mosquitto.host, mosquitto.port, chain.chain_id)
    yield client
    client.close()


@pytest.fixture(scope="module")
def oracle_daemon(
    deployment: Deployment, mosquitto: Mosquitto, chain: Chain, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonProcess]:
    """`iotsettle oracle run` for the module's tests, relaying from a funded account of its own, ready (MQTT
    connected); drained with SIGTERM at the end of the module."""
    relayer = funded_account(chain, 100 * ETHER)
    daemon = DaemonProcess(
        tmp_path_factory.mktemp("oracle"),
        deployment,
        mosquitto,
        relayer_key="0x" + bytes(relayer.key).hex(),
        IOTSETTLE_ORACLE_BATCH_MAX_WAIT="0.1",
    )
    daemon.start()
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()


@pytest.fixture
def paid(deployment: Deployment) -> Callable[..., Payment]:
    """``paid(event, timeout=30)``: wait until the contract settles a signed event; the settled log's arguments in
    ``.args``. Raises if the contract rejects it or nothing settles it in time."""

    def wait(event: SignedEvent, timeout: float = 30.0) -> Payment:
        return wait_until_paid(deployment, event, timeout)

    return wait
