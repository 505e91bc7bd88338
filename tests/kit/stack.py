"""A stack for tests: the repository root, a configuration that reads no user file, and the contracts deployed."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iotsettle.oracle.chain.compiler import ensure_compiled
from iotsettle.oracle.chain.connection import Chain, connect, load_sender
from iotsettle.oracle.chain.deploy import contract, deploy_all
from iotsettle.oracle.chain.node import Anvil, free_port
from iotsettle.oracle.config import Config, local_stack_config
from web3.contract import Contract

REPO = Path(__file__).resolve().parents[2]


def make_config(state_dir: Path, anvil_port: int, mqtt_port: int, **env: str) -> Config:
    """A configuration for a stack in ``state_dir``: only environment-style overrides, never the user's files."""
    return dataclasses.replace(local_stack_config(state_dir, anvil_port, mqtt_port, **env), root=REPO)


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
