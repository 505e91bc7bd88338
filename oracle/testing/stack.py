"""A private local stack for tests: anvil and mosquitto on free loopback ports, and the contracts deployed on it.

Everything lives in one state folder (pid and log files, the broker's persistence, the deployment manifest) and is
configured from the defaults only: a user's ``iotsettle.toml`` or ``IOTSETTLE_*`` variables never leak into a test.
The services are the same ``iotsettle.oracle.chain.node`` code as `iotsettle node up`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from iotsettle.oracle.chain.compiler import ensure_compiled
from iotsettle.oracle.chain.connection import Chain, connect, load_sender
from iotsettle.oracle.chain.deploy import contract, deploy_all
from iotsettle.oracle.chain.node import Anvil, Mosquitto, free_port
from iotsettle.oracle.chain.rpc import RpcClient
from iotsettle.oracle.config import Config, local_stack_config
from iotsettle.oracle.ops.context import OpsContext
from web3.contract import Contract


def stack_config(
    state_dir: Path,
    anvil_port: int | None = None,
    mqtt_port: int | None = None,
    *,
    root: Path | None = None,
    **env: str,
) -> Config:
    """A configuration for a stack in ``state_dir`` (free ports unless given), from the defaults and ``env``
    (``IOTSETTLE_*`` names) only. ``root`` is the project holding foundry.toml and contracts/; by default the
    working folder if it has a foundry.toml, else the iotsettle checkout this package runs from."""
    config = local_stack_config(state_dir, anvil_port or free_port(), mqtt_port or free_port(), **env)
    return dataclasses.replace(config, root=root) if root is not None else config


@dataclass(frozen=True)
class Deployment:
    """Every contract deployed on one chain: its configuration, a connection and the deployment manifest."""

    config: Config
    chain: Chain
    manifest: dict[str, Any]

    def address(self, name: str) -> str:
        return str(self.manifest["contracts"][name]["address"])

    def deployed_block(self, name: str) -> int:
        return int(self.manifest["contracts"][name].get("block", 0))

    def contract(self, name: str) -> Contract:
        """A web3 contract object for the deployed ``name`` (e.g. "DeliveryEscrow")."""
        return contract(self.chain, self.config, self.manifest, name)

    def ops(self, sender: LocalAccount | None = None) -> OpsContext:
        """What ``iotsettle.oracle.ops`` functions take: this deployment, sending from ``sender``."""
        return OpsContext(self.config, self.chain, self.manifest, sender)

    @cached_property
    def rpc(self) -> RpcClient:
        return RpcClient(self.chain.w3)


def deploy(config: Config, chain: Chain | None = None) -> Deployment:
    """Compile the contracts (a no-op when the artifacts are current) and deploy them all on ``config``'s node,
    from its development account 0."""
    ensure_compiled(config)
    chain = chain or connect(config)
    return Deployment(config, chain, deploy_all(config, chain, load_sender(config, chain)))


class LocalStack:
    """anvil and mosquitto on free loopback ports with their state in ``state_dir``; ``stop`` ends both."""

    def __init__(self, state_dir: Path, *, root: Path | None = None, **env: str) -> None:
        self.state_dir = state_dir
        self.config = stack_config(state_dir, None, None, root=root, **env)
        self.anvil = Anvil(self.config)
        self.mosquitto = Mosquitto(self.config)

    def start(self) -> LocalStack:
        self.anvil.start()
        try:
            self.mosquitto.start()
        except BaseException:
            self.anvil.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            self.mosquitto.stop()
        finally:
            self.anvil.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@contextmanager
def private_deployment(state_dir: Path, *, root: Path | None = None) -> Iterator[Deployment]:
    """An anvil of its own on a free port with everything deployed, for tests that spend the development accounts
    or move chain time; stopped on exit."""
    config = stack_config(state_dir, root=root)
    node = Anvil(config)
    node.start()
    try:
        yield deploy(config)
    finally:
        node.stop()
