"""The session's stack comes from the project's own pytest plugin, ``iotsettle.oracle.testing.plugin`` (the one
users get, docs/TESTING.md): a real anvil and a real mosquitto on free loopback ports, the contracts deployed,
stopped when the session ends. This file adds the `--runslow` switch and the project's names for the stack's
folder and configuration. Each test folder's conftest.py holds the fixtures only its tests use; plain helpers
shared between folders are in `tests.kit`.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from iotsettle.oracle.config import Config
from iotsettle.oracle.testing.stack import LocalStack

PLUGIN = "iotsettle.oracle.testing.plugin"


def _autoloaded() -> bool:
    """Whether pytest loads the plugin by itself (an install whose metadata has the pytest11 entry point)."""
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return False
    return any(ep.value == PLUGIN for ep in entry_points(group="pytest11"))


# Registering the module a second time under another name than the entry point's would be refused by pytest.
pytest_plugins = [] if _autoloaded() else [PLUGIN]


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
def stack_dir(local_stack: LocalStack) -> Path:
    return local_stack.state_dir


@pytest.fixture(scope="session")
def test_config(local_stack: LocalStack) -> Config:
    return local_stack.config
