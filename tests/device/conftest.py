"""Fixtures of the device tests: a broker of the test's own (not the session one: tests stop and restart it), and an
oracle store for the intake the simulated devices talk to."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from iotsettle.oracle.chain.node import Mosquitto, free_port
from iotsettle.oracle.config import Config
from iotsettle.oracle.daemon.store import Store


@pytest.fixture()
def broker(test_config: Config, tmp_path: Path) -> Iterator[Mosquitto]:
    service = Mosquitto(test_config, state_dir=tmp_path / "broker", port=free_port())
    yield service
    service.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store.open(tmp_path / "oracle.db")
    yield db
    db.close()
