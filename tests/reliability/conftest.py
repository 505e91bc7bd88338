"""Fixtures of the reliability tests: a broker of the test's own that can be restarted, and the bad-input fuzz
target (a daemon process, a fleet of two meters and a device-side client) shared by one module's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from iotsettle.oracle.chain.node import Mosquitto, free_port
from iotsettle.oracle.testing.devices import Publisher

from tests.kit.reliability import Fleet, daemon, fund_relayer


@pytest.fixture
def broker(deployment: Any, tmp_path: Path) -> Iterator[Mosquitto]:
    service = Mosquitto(deployment.config, state_dir=tmp_path / "broker", port=free_port())
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def setup(deployment: Any, mosquitto: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    fleet = Fleet(deployment, 2)  # meters[0] only ever sends honest readings; meters[1] is the one impersonated
    process = daemon(tmp_path_factory.mktemp("fuzz"), deployment, mosquitto, fund_relayer(deployment))
    process.start().wait_ready()
    publisher = Publisher(mosquitto.host, mosquitto.port, deployment.chain.chain_id)
    try:
        yield {"fleet": fleet, "daemon": process, "publisher": publisher}
    finally:
        publisher.close()
        process.kill()
