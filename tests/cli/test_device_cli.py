"""`iotsettle device keygen | register | simulate` as a user runs them (real anvil, real mosquitto)."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import eth_keyfile
import pytest
from click.testing import CliRunner
from eth_account import Account
from iotsettle.cli.main import cli
from iotsettle.oracle.chain.connection import ANVIL_DEV_KEYS
from iotsettle.oracle.chain.node import Mosquitto, free_port
from iotsettle.oracle.device.fleet import contracts_from_manifest, generate_fleet
from iotsettle.oracle.protocol.wire import decode

PASSWORD = {"IOTSETTLE_DEVICE_PASSWORD": "correct horse"}


def chain_env(deployment: Any, stack_dir: Path) -> dict[str, str]:
    return {
        **PASSWORD,
        "IOTSETTLE_CHAIN_RPC_URL": deployment.chain.rpc_url,
        "IOTSETTLE_PATHS_DEPLOYMENTS_DIR": str(stack_dir / "deployments"),
    }


def run(args: list[str], env: dict[str, str], expect: int = 0) -> str:
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result.output


def test_keygen_writes_a_private_keystore_and_prints_the_address(tmp_path: Path) -> None:
    out = run(["device", "keygen", "--out", str(tmp_path), "--kind", "meter", "--light-kdf", "--json"], PASSWORD)
    data = json.loads(out[out.index("{") :])
    path = Path(data["keyFile"])
    assert path.name == f"{data['address']}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert data["clientId"] == "dev-" + data["address"][2:10].lower()
    plain = run(["device", "keygen", "--out", str(tmp_path), "--light-kdf"], PASSWORD)
    assert plain.splitlines()[0].startswith("0x") and len(plain.splitlines()[0]) == 42


def test_keygen_without_a_password_is_a_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["device", "keygen", "--out", str(tmp_path)],
        env={"IOTSETTLE_DEVICE_PASSWORD": "", "IOTSETTLE_DEVICE_PASSWORD_FILE": ""},
    )
    assert result.exit_code == 1
    assert "no keystore password" in result.output
    assert "Traceback" not in result.output
    assert not list(tmp_path.iterdir())


def test_register_puts_the_device_on_chain_owned_by_the_sender(
    deployment: Any, stack_dir: Path, tmp_path: Path
) -> None:
    env = chain_env(deployment, stack_dir)
    address = run(["device", "keygen", "--out", str(tmp_path), "--kind", "vehicle", "--light-kdf"], env).splitlines()[0]
    key_file = tmp_path / f"{address}.json"
    out = run(["device", "register", "--key", str(key_file), "--metadata", "VIN WDB1234561A000001", "--json"], env)
    data = json.loads(out[out.index("{") :])
    owner = Account.from_key(ANVIL_DEV_KEYS[0]).address
    assert (data["device"], data["owner"], data["kind"]) == (address, owner, "vehicle")
    record = deployment.contract("DeviceRegistry").functions.deviceOf(address).call()
    assert record[0] == owner
    assert record[1] == 3  # DeviceKind.Vehicle
    again = CliRunner().invoke(cli, ["device", "register", "--key", str(key_file)], env=env)
    assert again.exit_code == 1
    assert "already registered" in again.output


def test_register_from_an_owner_keystore(deployment: Any, stack_dir: Path, tmp_path: Path) -> None:
    owner = Account.from_key(ANVIL_DEV_KEYS[2])
    owner_file = tmp_path / "owner.json"
    document = eth_keyfile.create_keyfile_json(bytes(owner.key), b"owner pass", kdf="pbkdf2", iterations=1024)
    owner_file.write_text(json.dumps(document))
    owner_file.chmod(0o600)
    env = {**chain_env(deployment, stack_dir), "IOTSETTLE_CHAIN_PASSWORD": "owner pass"}
    address = run(["device", "keygen", "--out", str(tmp_path / "keys"), "--light-kdf"], env).splitlines()[0]
    key_file = tmp_path / "keys" / f"{address}.json"
    missing_kind = CliRunner().invoke(
        cli, ["device", "register", "--key", str(key_file), "--owner-key", str(owner_file)], env=env
    )
    assert missing_kind.exit_code == 1 and "pass --kind" in missing_kind.output
    run(["device", "register", "--key", str(key_file), "--kind", "tracker", "--owner-key", str(owner_file)], env)
    record = deployment.contract("DeviceRegistry").functions.deviceOf(address).call()
    assert (record[0], record[1]) == (owner.address, 2)


def test_dry_run_is_reproducible_and_prints_valid_payloads(deployment: Any, tmp_path: Path) -> None:
    contracts = contracts_from_manifest(deployment.manifest)
    fleet = generate_fleet(
        tmp_path,
        chain_id=deployment.chain.chain_id,
        contracts=contracts,
        meters=2,
        trackers=1,
        vehicles=1,
        weather_stations=1,
        seed=3,
    )
    args = [
        "device",
        "simulate",
        "--fleet",
        str(fleet),
        "--rate",
        "20",
        "--duration",
        "30",
        "--seed",
        "9",
        "--start-time",
        "1764340000",
        "--faults",
        "all",
        "--dry-run",
    ]
    first = run(args, {})
    assert first == run(args, {})
    lines = [json.loads(line) for line in first.splitlines() if line.startswith("{")]
    assert len(lines) >= 600
    faults = {line["fault"] for line in lines if "fault" in line}
    # No vehicle of this fleet holds a policy, so behaviour_rollback and lapsed_driving have no device to go to
    # (a warning, not an error), nor has station_outlier (the one station is the hostile one); the station signs
    # observations (hostile applies) when the deployment has CropInsurance. meter_spike and tracker_stalled are
    # valid events that provoke early alerts.
    observations = contracts.crop_insurance is not None
    assert faults == {
        "bad_signature",
        "replayed_seq",
        "counter_rollback",
        "impossible_rate",
        "clock_skew",
        "teleport",
        "wrong_chain",
        "meter_spike",
        "tracker_stalled",
    } | ({"hostile"} if observations else set())
    types = {line["payload"]["type"] for line in lines}
    assert types == {"reading", "delivery"} | ({"weather"} if observations else set())
    for line in lines:
        event = decode(json.dumps(line["payload"], separators=(",", ":")).encode())
        assert line["topic"] == f"iotsettle/v1/{deployment.chain.chain_id}/{event.device}/events"


def test_simulate_publishes_to_the_broker_and_reports_json(
    deployment: Any, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    contracts = contracts_from_manifest(deployment.manifest)
    fleet = generate_fleet(
        tmp_path,
        chain_id=deployment.chain.chain_id,
        contracts=contracts,
        meters=4,
        trackers=1,
        vehicles=2,
        weather_stations=1,
        seed=5,
    )
    out = run(
        [
            "device",
            "simulate",
            "--fleet",
            str(fleet),
            "--rate",
            "300",
            "--duration",
            "2",
            "--reply-wait",
            "0",
            "--broker-host",
            mosquitto.host,
            "--broker-port",
            str(mosquitto.port),
            "--json",
        ],
        {},
    )
    summary = json.loads(out[out.index("{") :])
    assert summary["acknowledged"] == summary["planned"] >= 550
    assert summary["unacknowledged"] == 0
    assert summary["devices"] == {"meter": 4, "tracker": 1, "vehicle": 2, "weather_station": 1, "wearable": 0}


def test_simulate_over_mutual_tls_fails_over_from_a_dead_broker(
    deployment: Any, test_config: Any, tmp_path: Path
) -> None:
    """--broker twice (the first down) and a client certificate: every event acknowledged over TLS; a key file
    that is not a key is a one-line error that does not echo it."""
    broker = Mosquitto(test_config, state_dir=tmp_path / "broker", port=free_port(), tls_port=free_port())
    broker.start()
    try:
        pair = broker.ca.client("sim")
        fleet = generate_fleet(
            tmp_path,
            chain_id=deployment.chain.chain_id,
            contracts=contracts_from_manifest(deployment.manifest),
            meters=2,
        )
        args = [
            "device",
            "simulate",
            "--fleet",
            str(fleet),
            "--rate",
            "50",
            "--duration",
            "1",
            "--reply-wait",
            "0",
            "--broker",
            f"mqtt://127.0.0.1:{free_port()}",
            "--broker",
            f"mqtts://127.0.0.1:{broker.tls_port}",
            "--tls-ca-file",
            str(broker.ca.ca_file),
            "--tls-cert-file",
            str(pair.cert_file),
            "--json",
        ]
        out = run([*args, "--tls-key-file", str(pair.key_file)], {})
        summary = json.loads(out[out.index("{") :])
        assert summary["acknowledged"] == summary["planned"] >= 40 and summary["unacknowledged"] == 0
        fake = tmp_path / "fake.key"
        fake.write_text("-----BEGIN PRIVATE KEY-----\nNOTAKEYATALL\n-----END PRIVATE KEY-----\n")
        refused = CliRunner().invoke(cli, [*args, "--tls-key-file", str(fake)], env={})
        assert refused.exit_code == 1 and "tls_key_file" in refused.output
        assert "NOTAKEYATALL" not in refused.output and "Traceback" not in refused.output
    finally:
        broker.stop()


@pytest.mark.parametrize("faults", ["teleport,nonsense"])
def test_unknown_fault_class_is_refused(tmp_path: Path, faults: str) -> None:
    fleet = generate_fleet(tmp_path, chain_id=31337, contracts=None, seed=1)
    result = CliRunner().invoke(cli, ["device", "simulate", "--fleet", str(fleet), "--faults", faults, "--dry-run"])
    assert result.exit_code == 2
    assert "'nonsense' is not a fault class" in result.output
