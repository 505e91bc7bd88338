"""Fixtures of the demo tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from iotsettle.oracle.testing.stack import Deployment, private_deployment


@pytest.fixture(scope="module")
def demo_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """An anvil of its own: the demo spends the development accounts and moves a lot of blocks."""
    with private_deployment(tmp_path_factory.mktemp("demo-chain")) as deployment:
        yield deployment
