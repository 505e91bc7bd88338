"""The same end-to-end path on two MQTT brokers: mosquitto (Debian) and aedes (npm, ``scripts/aedes-broker.mjs``).

Nothing in the toolkit may depend on one broker's behaviour: a device's readings reach the daemon process, a retry
is answered ``duplicate`` and paid once, readings published while the daemon is away wait in its persistent session
and are paid after it restarts, and a meter whose earnings the chain shows is paid exactly once per delta.
docs/BROKERS.md lists the differences found between the two brokers.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from iotsettle.oracle.chain.node import Aedes, Mosquitto, Service, free_port
from iotsettle.oracle.config import Config
from iotsettle.oracle.testing.devices import Publisher
from iotsettle.oracle.testing.wait import wait_for

from tests.daemon.test_daemon_service import _metered_agreement
from tests.kit.daemon import DaemonProcess
from tests.kit.devices import ChainRegistry

BROKERS: dict[str, type[Mosquitto] | type[Aedes]] = {"mosquitto": Mosquitto, "aedes": Aedes}


@pytest.fixture(params=sorted(BROKERS))
def any_broker(request: pytest.FixtureRequest, test_config: Config, tmp_path: Path) -> Iterator[Service]:
    service = BROKERS[request.param](test_config, state_dir=tmp_path / "broker", port=free_port())
    service.start()
    yield service
    service.stop()


def test_readings_are_paid_once_through_either_broker_across_a_daemon_restart(
    tmp_path: Path, deployment: Any, registry: ChainRegistry, any_broker: Any, daemons: list[DaemonProcess]
) -> None:
    chain, billing = deployment.chain, deployment.contract("MeteredBilling")
    price, start = 10, 1_000
    meter, agreement = _metered_agreement(deployment, registry, price, start)
    # aedes speaks MQTT 3.1.1 only: the daemon's [mqtt] protocol says so (mosquitto runs the default, MQTT 5)
    protocol = {"IOTSETTLE_MQTT_PROTOCOL": "3.1.1"} if isinstance(any_broker, Aedes) else {}
    daemon = DaemonProcess(tmp_path, deployment, any_broker, IOTSETTLE_ORACLE_BATCH_MAX_WAIT="0.2", **protocol)
    daemons.append(daemon)
    daemon.start().wait_ready()
    now = int(chain.w3.eth.get_block("latest")["timestamp"])  # readings must follow the acceptance

    def reading(seq: int) -> tuple[str, bytes]:
        return meter.topic, meter.reading(seq, start + 25 * seq, timestamp=now + seq, agreement=agreement)

    publisher = Publisher(any_broker.host, any_broker.port, meter.chain_id)
    try:
        # 1. live: four readings and a retry of the last one
        publisher.publish_many([reading(seq) for seq in range(1, 5)] + [reading(4)])
        assert sorted(body["status"] for _, body in publisher.collect(5)) == ["accepted"] * 4 + ["duplicate"]
        wait_for(lambda: billing.functions.earningsOf(agreement).call() == 100 * price, 30, "the first payment")
        # 2. the daemon is away: the broker keeps the readings in the daemon's session until it is back
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
        publisher.publish_many([reading(seq) for seq in range(5, 9)])
        daemon.start().wait_ready()
        assert sorted(body["status"] for _, body in publisher.collect(4)) == ["accepted"] * 4
        wait_for(lambda: billing.functions.earningsOf(agreement).call() == 200 * price, 30, "the second payment")
    finally:
        publisher.close()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(60) == 0
    assert billing.functions.earningsOf(agreement).call() == 200 * price  # Δ25 × 8 readings, each paid once


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"IOTSETTLE_MQTT_PROTOCOL": "4"}, "[mqtt] protocol must be one of 5, 3.1.1"),
        (
            {"IOTSETTLE_MQTT_PROTOCOL": "3.1.1", "IOTSETTLE_ORACLE_SHARED_GROUP": "oracles"},
            "shared_group needs [mqtt] protocol 5",
        ),
    ],
)
def test_a_protocol_the_intake_cannot_speak_is_refused_in_one_line(
    tmp_path: Path, deployment: Any, mosquitto: Any, overrides: dict[str, str], message: str
) -> None:
    code, output = DaemonProcess(tmp_path, deployment, mosquitto).run_to_exit(**overrides)
    assert code != 0
    assert message in output and "Traceback" not in output
