"""Fixtures of the credit tests: `iotsettle` against the session stack."""

from __future__ import annotations

import pytest

from tests.kit.cli import Cli


@pytest.fixture()
def cli(deployment) -> Cli:
    return Cli(deployment.config)
