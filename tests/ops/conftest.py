"""Fixtures of the operations tests: an anvil of the module's own, since the keeper's tests move chain time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from iotsettle.oracle.testing.stack import Deployment, private_deployment


@pytest.fixture(scope="module")
def own_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with private_deployment(tmp_path_factory.mktemp("keeper")) as deployment:
        yield deployment
