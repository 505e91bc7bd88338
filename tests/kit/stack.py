"""The repository root, and a configuration for a stack of this repository in a folder (the stack itself, the
deployment and private anvils are ``iotsettle.oracle.testing.stack``)."""

from __future__ import annotations

from pathlib import Path

from iotsettle.oracle.config import Config
from iotsettle.oracle.testing.stack import stack_config

REPO = Path(__file__).resolve().parents[2]


def make_config(state_dir: Path, anvil_port: int, mqtt_port: int, **env: str) -> Config:
    """A configuration for a stack in ``state_dir`` deploying this repository: only environment-style overrides,
    never the user's files."""
    return stack_config(state_dir, anvil_port, mqtt_port, root=REPO, **env)
