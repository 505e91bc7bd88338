"""Fixtures of the CLI tests: `iotsettle` against the session stack, and an anvil of a module's own for tests that
spend accounts or move chain time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from iotsettle.oracle.testing.stack import Deployment, private_deployment

from tests.kit.cli import Cli


@pytest.fixture()
def cli(deployment) -> Cli:
    return Cli(deployment.config)


@pytest.fixture(scope="module")
def own_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with private_deployment(tmp_path_factory.mktemp("own-chain")) as deployment:
        yield deployment
