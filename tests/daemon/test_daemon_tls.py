"""The oracle daemon and a device over mutual TLS on a real mosquitto (the TLS port of ``node up --tls``), the daemon
configured with a broker list whose first broker is down: it fails over, the device's reading is paid on chain, and
a client without a valid certificate is refused by the broker. Nothing secret reaches the daemon's log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_utils import to_checksum_address
from iotsettle.oracle.chain.node import Mosquitto, free_port
from iotsettle.oracle.device.buffer import OfflineBuffer
from iotsettle.oracle.device.publisher import BrokerSettings, Publisher

from tests.kit.reliability import Fleet, daemon, fund_relayer


@pytest.fixture
def tls_broker(deployment: Any, tmp_path: Path) -> Iterator[Mosquitto]:
    service = Mosquitto(deployment.config, state_dir=tmp_path / "broker", port=free_port(), tls_port=free_port())
    service.start()
    yield service
    service.stop()


def _device(broker: Mosquitto, tmp_path: Path, name: str, **tls: str | None) -> Publisher:
    settings = BrokerSettings(
        broker.host, broker.tls_port, name, tls_ca_file=str(broker.ca.ca_file), reconnect_min_delay=1, **tls
    )
    return Publisher(OfflineBuffer(tmp_path / f"{name}.db"), settings)


def test_daemon_and_device_settle_over_mutual_tls_after_failover(
    deployment: Any, tls_broker: Mosquitto, tmp_path: Path
) -> None:
    ca = tls_broker.ca
    oracle_cert = ca.client("iotsettle-oracle")
    dead = free_port()  # nothing listens here: the daemon must move on to the TLS broker
    process = daemon(
        tmp_path / "oracle",
        deployment,
        tls_broker,
        fund_relayer(deployment),
        IOTSETTLE_MQTT_BROKERS=f"mqtt://127.0.0.1:{dead},mqtts://127.0.0.1:{tls_broker.tls_port}",
        IOTSETTLE_MQTT_TLS_CA_FILE=str(ca.ca_file),
        IOTSETTLE_MQTT_TLS_CERT_FILE=str(oracle_cert.cert_file),
        IOTSETTLE_MQTT_TLS_KEY_FILE=str(oracle_cert.key_file),
    )
    fleet = Fleet(deployment, 1)
    meter = fleet.meters[0]
    identity = ca.client(to_checksum_address(meter.device.address))
    device = _device(
        tls_broker, tmp_path, "meter", tls_cert_file=str(identity.cert_file), tls_key_file=str(identity.key_file)
    )
    stranger = _device(tls_broker, tmp_path, "no-certificate")
    process.start().wait_ready()
    device.start()
    stranger.start()
    try:
        health = process.health()
        assert health is not None and health["checks"]["mqtt"] == {
            "status": "ok",
            "detail": f"connected to mqtts://127.0.0.1:{tls_broker.tls_port}",  # the second of its list
        }, health
        assert device.wait_connected(20)
        device.submit_many(fleet.readings(1))
        assert device.flush(20), device.stats
        fleet.wait_paid(60)

        assert not stranger.wait_connected(3)  # the broker refuses a client that presents no certificate
        assert stranger.stats.connects == 0
    finally:
        stranger.stop()
        device.stop()
        process.kill()
    log = process.log.read_text()
    assert f"mqtt://127.0.0.1:{dead} not" in log  # the failover is in the log ...
    assert "PRIVATE KEY" not in log and oracle_cert.key_file.read_text().splitlines()[1] not in log  # ... no key
