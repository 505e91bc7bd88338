"""The broker's TLS side on a real mosquitto: the managed TLS port with its throw-away CA (``node up --tls``), and the
production configuration + ACL that docs/OPERATIONS.md ships, started exactly as written there."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from eth_account import Account
from iotsettle.cli.main import cli
from iotsettle.oracle.chain.broker import tls_context
from iotsettle.oracle.chain.node import Mosquitto, find_binary, free_port, mqtt_ready, port_open
from iotsettle.oracle.chain.tls import CertPair, LocalCa
from iotsettle.oracle.config import BrokerEndpoint, BrokerTls, Config, load_config
from iotsettle.oracle.device.buffer import OfflineBuffer
from iotsettle.oracle.device.publisher import BrokerSettings, Publisher
from iotsettle.oracle.protocol.errors import ConfigError
from iotsettle.oracle.testing.wait import wait_for

from tests.kit.stack import REPO, make_config

DOCS = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"
CHAIN = 31337


@pytest.fixture
def tls_broker(test_config: Config, tmp_path: Path) -> Iterator[Mosquitto]:
    service = Mosquitto(test_config, state_dir=tmp_path / "broker", port=free_port(), tls_port=free_port())
    service.start()
    yield service
    service.stop()


def _client(name: str, tls: BrokerTls | None, userdata: dict[str, object]) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5, userdata=userdata)
    if tls is not None:
        client.tls_set_context(tls_context(tls))
    return client


def _connects(host: str, port: int, tls: BrokerTls | None, credentials: tuple[str, str] | None = None) -> bool:
    """Whether the broker accepts a CONNECT over ``tls``: a handshake refused or a connection closed count as no."""
    client = _client("probe", tls, {})
    if credentials is not None:
        client.username_pw_set(*credentials)
    try:
        client.connect(host, port, 5)
    except OSError:
        return False
    deadline = time.monotonic() + 5
    while not client.is_connected() and time.monotonic() < deadline:
        if client.loop(0.1) != mqtt.MQTT_ERR_SUCCESS:
            return False
    accepted = client.is_connected()
    client.disconnect()
    return accepted


def _tls(ca: LocalCa, pair: CertPair | None = None) -> BrokerTls:
    return BrokerTls(str(ca.ca_file), str(pair.cert_file) if pair else "", str(pair.key_file) if pair else "")


# ------------------------------------------------------------------ configuration


def test_broker_list_from_the_file_and_the_environment(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('[mqtt]\nbrokers = ["mqtts://mqtt-a.example.net", "mqtt://10.0.0.2:1884"]\n')
    config = load_config(file, env={})
    assert config.mqtt.endpoints() == (
        BrokerEndpoint("mqtt-a.example.net", 8883, True),
        BrokerEndpoint("10.0.0.2", 1884, False),
    )
    env = load_config(file, env={"IOTSETTLE_MQTT_BROKERS": "mqtt://a:1, mqtts://b:2"})
    assert [str(e) for e in env.mqtt.endpoints()] == ["mqtt://a:1", "mqtts://b:2"]
    # the old keys are a one-element list, over TLS once a CA or a client certificate is named
    assert load_config(env={}, read_files=False).mqtt.endpoints() == (BrokerEndpoint("127.0.0.1", 1883, False),)
    tls = load_config(env={"IOTSETTLE_MQTT_TLS_CA_FILE": "ca.pem"}, read_files=False).mqtt
    assert tls.endpoints() == (BrokerEndpoint("127.0.0.1", 1883, True),) and tls.tls().check_hostname
    with pytest.raises(ConfigError, match="mqtt://host:port"):
        load_config(env={"IOTSETTLE_MQTT_BROKERS": "tcp://a:1"}, read_files=False)
    with pytest.raises(ConfigError, match="tls_key_file"):
        load_config(env={"IOTSETTLE_MQTT_TLS_KEY_FILE": "k.pem"}, read_files=False)
    file.write_text('[mqtt]\nbrokers = "mqtt://a:1"\n')  # a single string is a list of one, as in the environment
    assert load_config(file, env={}).mqtt.endpoints() == (BrokerEndpoint("a", 1),)
    secret = load_config(
        env={
            "IOTSETTLE_MQTT_PASSWORD": "hunter2",
            "IOTSETTLE_MQTT_TLS_KEY_FILE": "k.pem",
            "IOTSETTLE_MQTT_TLS_CERT_FILE": "c.pem",
        },
        read_files=False,
    )
    assert "hunter2" not in repr(secret) and "hunter2" not in repr(secret.mqtt)  # settings never show a password
    file.write_text("[mqtt]\nbrokers = [1883]\n")
    with pytest.raises(ConfigError, match="list of strings"):
        load_config(file, env={})


# ------------------------------------------------------------------ the managed TLS port (node up --tls)


def test_node_up_tls_and_node_cert(tmp_path: Path) -> None:
    """`node up --tls` opens the mutual-TLS port; `node cert` issues a client certificate and prints its paths,
    never the key; `node down` stops it all."""
    config = make_config(tmp_path, free_port(), free_port())
    tls_port = free_port()
    env = {
        "IOTSETTLE_CONFIG": str(REPO / "tests" / "empty.toml"),
        "IOTSETTLE_NODE_STATE_DIR": str(tmp_path),
        "IOTSETTLE_NODE_ANVIL_PORT": str(config.node.anvil_port),
        "IOTSETTLE_NODE_MQTT_PORT": str(config.node.mqtt_port),
        "IOTSETTLE_NODE_MQTT_TLS_PORT": str(tls_port),
    }
    runner = CliRunner()
    up = runner.invoke(cli, ["node", "up", "--tls", "--json"], env=env)
    try:
        assert up.exit_code == 0, up.output
        assert f"mqtts://127.0.0.1:{tls_port}" in json.loads(up.output)[1]["endpoint"]
        issued = runner.invoke(cli, ["node", "cert", "oracle", "--json"], env=env)
        assert issued.exit_code == 0, issued.output
        paths = json.loads(issued.output)
        key = Path(paths["key_file"]).read_text()
        assert key.splitlines()[1] not in issued.output and stat.S_IMODE(os.stat(paths["key_file"]).st_mode) == 0o600
        tls = BrokerTls(paths["ca_file"], paths["cert_file"], paths["key_file"])
        assert _connects("127.0.0.1", tls_port, tls)
        assert mqtt_ready("127.0.0.1", config.node.mqtt_port)  # the plain port stays as it was
    finally:
        down = runner.invoke(cli, ["node", "down", "--json"], env=env)
    assert json.loads(down.output)["mosquitto"] is True
    assert not port_open("127.0.0.1", tls_port)


def test_local_ca_keys_are_private_and_certificates_reused(tmp_path: Path) -> None:
    ca = LocalCa(tmp_path / "tls")
    ca.ensure()
    pair = ca.client("oracle")
    for key in (tmp_path / "tls" / "ca.key", ca.server.key_file, pair.key_file):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    first = pair.cert_file.read_bytes()
    LocalCa(tmp_path / "tls").ensure()
    assert ca.client("oracle").cert_file.read_bytes() == first  # a second `node up` keeps the issued certificates
    with pytest.raises(Exception, match="cannot name a client certificate"):
        ca.client("../escape")


def test_tls_port_takes_a_device_with_a_certificate_and_refuses_one_without(
    tls_broker: Mosquitto, tmp_path: Path
) -> None:
    """The device SDK publishes over mutual TLS; a client with no certificate, or one of another CA, is refused."""
    ca = tls_broker.ca
    device = ca.client("dev-1")
    settings = BrokerSettings(
        tls_broker.host,
        tls_broker.tls_port,
        "dev-1",
        tls_ca_file=str(ca.ca_file),
        tls_cert_file=str(device.cert_file),
        tls_key_file=str(device.key_file),
        reconnect_min_delay=1,
        reconnect_max_delay=1,
    )
    assert settings.endpoints == (BrokerEndpoint(tls_broker.host, tls_broker.tls_port, True),)
    publisher = Publisher(OfflineBuffer(tmp_path / "outbox.db"), settings)
    publisher.start()
    try:
        publisher.submit("iotsettle/v1/31337/dev-1/events", b'{"type":"reading"}')
        assert publisher.flush(20), publisher.stats
        assert publisher.stats.acknowledged == 1
    finally:
        publisher.stop()

    host, port = tls_broker.host, tls_broker.tls_port
    assert _connects(host, port, _tls(ca, device))
    assert not _connects(host, port, _tls(ca))  # no client certificate
    stranger = LocalCa(tmp_path / "other-ca")
    assert not _connects(host, port, BrokerTls(str(ca.ca_file), *map(str, _pair(stranger.client("dev-1")))))
    assert not _connects(host, port, None)  # plain MQTT on the TLS port


def _pair(pair: CertPair) -> tuple[Path, Path]:
    return pair.cert_file, pair.key_file


def test_server_name_is_checked_by_default(tls_broker: Mosquitto, tmp_path: Path) -> None:
    """The broker's certificate names 127.0.0.1 and localhost; a CA-signed certificate for another name is refused
    unless the check is turned off (a test broker only)."""
    ca = tls_broker.ca
    device = ca.client("dev-2")
    # a broker certificate of the same CA that names someone else, served on a second broker
    other = Mosquitto(tls_broker.config, state_dir=tmp_path / "other", port=free_port(), tls_port=free_port())
    elsewhere = LocalCa(other.ca.folder, server_names=("broker.example.net",))
    elsewhere.folder.mkdir(parents=True)
    for name in ("ca.pem", "ca.key"):
        (elsewhere.folder / name).write_bytes((ca.folder / name).read_bytes())
    elsewhere.ensure()
    other.start()
    try:
        checked = _tls(ca, device)
        assert _connects(other.host, tls_broker.tls_port, checked)  # the real broker: its name matches
        assert not _connects(other.host, other.tls_port, checked)
        unchecked = BrokerTls(checked.ca_file, checked.cert_file, checked.key_file, check_hostname=False)
        assert _connects(other.host, other.tls_port, unchecked)
    finally:
        other.stop()


def test_unreadable_certificate_files_are_one_sentence_without_their_content(tmp_path: Path) -> None:
    secret = "-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n"
    key = tmp_path / "device.key"
    key.write_text(secret)
    cert = tmp_path / "device.pem"
    cert.write_text(secret)
    with pytest.raises(ConfigError) as caught:
        tls_context(BrokerTls("", str(cert), str(key)))
    assert "tls_cert_file" in str(caught.value) and "TOPSECRET" not in str(caught.value)
    with pytest.raises(ConfigError, match="tls_ca_file"):
        tls_context(BrokerTls(str(tmp_path / "missing.pem")))


# ------------------------------------------------------------------ the production configuration of OPERATIONS.md


def _doc_block(first_line: str) -> str:
    """The fenced block of docs/OPERATIONS.md that starts with ``first_line``."""
    for block in re.findall(r"```conf\n(.*?)```", DOCS.read_text(), re.S):
        if block.startswith(first_line + "\n"):
            return str(block)
    raise AssertionError(f"docs/OPERATIONS.md has no conf block starting {first_line!r}")


@contextlib.contextmanager
def _documented_mosquitto(
    config: Config, folder: Path, ca: LocalCa, password_file: Path | None = None
) -> Iterator[int]:
    """mosquitto with the configuration and the ACL of OPERATIONS.md: only paths and the port are replaced, and
    for the password variant the two certificate-identity lines are replaced by ``password_file`` as the page
    says. Yields the port."""
    acl = folder / "acl"
    acl.write_text(_doc_block("# /etc/mosquitto/iotsettle/acl"))
    port = free_port()
    paths = {
        "listener": str(port),
        "cafile": str(ca.ca_file),
        "certfile": str(ca.server.cert_file),
        "keyfile": str(ca.server.key_file),
        "acl_file": str(acl),
        "persistence_location": f"{folder / 'data'}/",
    }
    lines = []
    for line in _doc_block("# /etc/mosquitto/conf.d/iotsettle.conf").splitlines():
        key = line.split(" ", 1)[0]
        if password_file is not None and key in ("require_certificate", "use_identity_as_username"):
            line = f"password_file {password_file}" if key == "require_certificate" else ""
        lines.append(f"{key} {paths[key]}" if key in paths else line)
    assert set(paths) <= {line.split(" ", 1)[0] for line in lines}, "a key this test replaces left the docs"
    if os.geteuid() == 0:
        lines.append("user root")  # as root mosquitto would switch to the 'mosquitto' user, who cannot read tmp
    (folder / "data").mkdir()
    conf = folder / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    log = (folder / "mosquitto.log").open("wb")
    process = subprocess.Popen(
        [find_binary(config, "mosquitto"), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for(lambda: port_open("127.0.0.1", port) or process.poll() is not None, 10, "mosquitto listening")
        assert process.poll() is None, (folder / "mosquitto.log").read_text()
        yield port
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@pytest.fixture
def documented_broker(test_config: Config, tmp_path: Path) -> Iterator[tuple[int, LocalCa]]:
    ca = LocalCa(tmp_path / "ca")
    ca.ensure()
    with _documented_mosquitto(test_config, tmp_path, ca) as port:
        yield port, ca


class _Probe:
    """A connected MQTT 5 client of the documented broker that records what it receives and the broker's codes."""

    def __init__(self, port: int, name: str, tls: BrokerTls, password: str | None = None) -> None:
        self.received: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self.granted: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self.acked: queue.SimpleQueue[int] = queue.SimpleQueue()  # PUBACK reason codes
        self.client = _client(name, tls, {})
        self.client.on_message = lambda _c, _u, m: self.received.put((m.topic, bytes(m.payload)))
        self.client.on_subscribe = lambda _c, _u, _mid, codes, _p: self.granted.put(not codes[0].is_failure)
        self.client.on_publish = lambda _c, _u, _mid, code, _p: self.acked.put(code.value)
        if password is not None:
            self.client.username_pw_set(name, password)
        self.client.connect("127.0.0.1", port, 10)
        self.client.loop_start()

    def subscribe(self, topic: str) -> bool:
        self.client.subscribe(topic, qos=1)
        return self.granted.get(timeout=10)

    def publish(self, topic: str, payload: bytes) -> int:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)
        return self.acked.get(timeout=10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_documented_acl_keeps_each_device_to_its_own_topics(documented_broker: tuple[int, LocalCa]) -> None:
    port, ca = documented_broker
    alice, bob = Account.create().address, Account.create().address
    oracle = _Probe(port, "oracle", _tls(ca, ca.client("iotsettle-oracle")))
    device = _Probe(port, "alice", _tls(ca, ca.client(alice)))
    try:
        assert oracle.subscribe(f"iotsettle/v1/{CHAIN}/+/events")  # the daemon reads every device's events
        assert device.subscribe(f"iotsettle/v1/{CHAIN}/{alice}/replies")  # a device reads its own replies
        # mosquitto 2.0 grants these subscriptions and filters each message by the read rules on delivery
        device.subscribe(f"iotsettle/v1/{CHAIN}/{bob}/replies")
        device.subscribe(f"iotsettle/v1/{CHAIN}/+/events")

        not_authorized = 0x87
        assert device.publish(f"iotsettle/v1/{CHAIN}/{bob}/events", b"forged") == not_authorized
        assert device.publish(f"iotsettle/v1/{CHAIN}/{alice}/events", b"own") == 0
        # same connection, in order: once its own event arrived, the forged one would have arrived before it
        assert oracle.received.get(timeout=10) == (f"iotsettle/v1/{CHAIN}/{alice}/events", b"own")
        assert oracle.received.empty()

        assert oracle.publish(f"iotsettle/v1/{CHAIN}/{bob}/replies", b"for bob") == 0  # the daemon answers anyone
        assert oracle.publish(f"iotsettle/v1/{CHAIN}/{alice}/replies", b"accepted") == 0
        assert oracle.publish(f"iotsettle/v1/{CHAIN}/oracle/o-1/status", b"online") < not_authorized  # 0x10: none
        # neither bob's reply nor any events reached alice: the first message she got is her own reply
        assert device.received.get(timeout=10) == (f"iotsettle/v1/{CHAIN}/{alice}/replies", b"accepted")
        assert device.received.empty()
        assert device.publish(f"iotsettle/v1/{CHAIN}/{alice}/replies", b"self-answered") == not_authorized
    finally:
        device.close()
        oracle.close()
    assert not _connects("127.0.0.1", port, _tls(ca))  # no certificate: refused
    rogue = LocalCa(ca.folder.parent / "rogue").client(alice)  # the right name, signed by another CA
    assert not _connects("127.0.0.1", port, BrokerTls(str(ca.ca_file), *map(str, _pair(rogue))))


def test_documented_password_variant_keeps_each_device_to_its_own_topics(test_config: Config, tmp_path: Path) -> None:
    """The per-device password variant of OPERATIONS.md: a file made by Debian's mosquitto_passwd, the same ACL."""
    ca = LocalCa(tmp_path / "ca")
    ca.ensure()
    alice, bob = Account.create().address, Account.create().address
    passwd = tmp_path / "passwd"
    tool = find_binary(test_config, "mosquitto_passwd")  # Debian's mosquitto package ships it
    for index, (user, password) in enumerate([(alice, "alice-pw"), ("iotsettle-oracle", "oracle-pw")]):
        subprocess.run([tool, *(["-c"] if index == 0 else []), "-b", str(passwd), user, password], check=True)
    os.chmod(passwd, 0o600)
    tls = BrokerTls(str(ca.ca_file))  # server authentication only: the password names the client
    with _documented_mosquitto(test_config, tmp_path, ca, password_file=passwd) as port:
        oracle = _Probe(port, "iotsettle-oracle", tls, "oracle-pw")
        device = _Probe(port, alice, tls, "alice-pw")
        try:
            assert oracle.subscribe(f"iotsettle/v1/{CHAIN}/+/events")
            assert device.publish(f"iotsettle/v1/{CHAIN}/{bob}/events", b"forged") == 0x87
            assert device.publish(f"iotsettle/v1/{CHAIN}/{alice}/events", b"own") == 0
            assert oracle.received.get(timeout=10) == (f"iotsettle/v1/{CHAIN}/{alice}/events", b"own")
            assert oracle.received.empty()
        finally:
            device.close()
            oracle.close()
        assert _connects("127.0.0.1", port, tls, (alice, "alice-pw"))
        assert not _connects("127.0.0.1", port, tls, (alice, "wrong"))
        assert not _connects("127.0.0.1", port, tls)  # no user name: not anonymous
