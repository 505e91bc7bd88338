"""Modules a CLI module needs only when one of its commands runs.

Importing web3 and eth_account costs most of a second, and `--help` needs neither. So a CLI module binds every
module that pulls them in (the operations, the chain, the device SDK, the daemon) at its top in one pair of
branches, written the same way everywhere:

    if TYPE_CHECKING:
        from iotsettle.oracle.ops import billing as ops
    else:
        ops = lazy_import("iotsettle.oracle.ops.billing")

The type checker reads the real import; at run time the name is a stand-in that imports the module on the first
attribute access, i.e. inside a command's body. Building the click tree and printing any help text touch only
click, rich, the configuration and the pure protocol vocabulary. tests/test_floors.py reads a `lazy_import` as an
import (floors, cycles) and checks that both branches bind the same names to the same modules;
tests/cli/test_cli_help.py checks that no --help imports web3.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class _LazyModule(ModuleType):
    """A module imported on first attribute access (``importlib`` holds the import lock, so threads may race)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_target"] = name

    def __getattr__(self, attr: str) -> Any:
        # Not cached on the stand-in: a name the module rebinds later (a test's monkeypatch) is read afresh.
        return getattr(importlib.import_module(self.__dict__["_target"]), attr)


def lazy_import(name: str) -> ModuleType:
    """A stand-in for module ``name`` (absolute) that imports it when one of its names is first read."""
    return _LazyModule(name)
