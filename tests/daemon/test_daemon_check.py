"""`iotsettle oracle run --check` against anvil + mosquitto: a working configuration is reported part by part and
nothing is started; each broken part is named (exit 1) while the other parts are still checked; no secret is printed."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from iotsettle.oracle.chain.node import free_port
from iotsettle.oracle.testing.accounts import ETHER, funded_account

from tests.kit.daemon import DaemonProcess

PARTS = ["configuration", "chain", "deployment", "relayer key", "broker", "database", "health endpoint", "funds"]


@pytest.fixture
def checked(tmp_path: Path, deployment: Any, mosquitto: Any) -> DaemonProcess:
    """A daemon configuration (not started) whose relayer holds 1 ETH."""
    relayer = funded_account(deployment.chain, ETHER)
    return DaemonProcess(tmp_path, deployment, mosquitto, relayer_key="0x" + bytes(relayer.key).hex())


def test_a_working_configuration_is_reported_part_by_part_and_nothing_starts(
    checked: DaemonProcess, deployment: Any
) -> None:
    key = checked.env["IOTSETTLE_CHAIN_PRIVATE_KEY"]
    rpc = deployment.config.chain.rpc_url  # http://127.0.0.1:PORT
    env = {
        **checked.env,
        # user info and a query as hosted endpoints carry API keys: anvil ignores both
        "IOTSETTLE_CHAIN_RPC_URL": rpc.replace("http://", "http://ops:rpc-secret-1@") + "/?apikey=rpc-secret-2",
        "IOTSETTLE_MQTT_USERNAME": "oracle",
        "IOTSETTLE_MQTT_PASSWORD": "mqtt-secret-3",
    }
    # the real entry point, as an operator runs it before `systemctl start`
    done = subprocess.run(
        [sys.executable, "-m", "iotsettle.cli.oracle", "run", "--check"],
        check=False,
        cwd=checked.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    for part in PARTS:
        assert f"ok {part}:" in " ".join(text.split()), (part, text)
    assert "chain 31337 at http://127.0.0.1:" in text
    for secret in (key[2:], "rpc-secret-1", "rpc-secret-2", "mqtt-secret-3"):
        assert secret not in text.lower(), secret

    # nothing was started or created: no database, the health port free, no status published as the daemon
    assert not checked.db.exists()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", checked.health_port))


def _open_keystore(folder: Path) -> dict[str, str]:
    """A keystore readable by everyone: the daemon refuses it."""
    path = folder / "relayer.json"
    path.write_text(json.dumps(Account.encrypt(Account.create().key, "pw")))
    path.chmod(0o644)
    return {"IOTSETTLE_CHAIN_KEYSTORE": str(path), "IOTSETTLE_CHAIN_PASSWORD": "pw", "IOTSETTLE_CHAIN_PRIVATE_KEY": ""}


@pytest.mark.parametrize(
    ("part", "make_env", "says"),
    [
        ("configuration", lambda folder: {"IOTSETTLE_ORACLE_MAX_IN_FLIGHT": "0"}, "max_in_flight must be ≥ 1"),
        ("chain", lambda folder: {"IOTSETTLE_CHAIN_CHAIN_ID": "1"}, "expects chain 1"),
        ("relayer key", _open_keystore, "readable by other users"),
        ("broker", lambda folder: {"IOTSETTLE_MQTT_PORT": str(free_port())}, "broker 127.0.0.1:"),
        (
            "funds",
            lambda folder: {"IOTSETTLE_CHAIN_PRIVATE_KEY": "0x" + bytes(Account.create().key).hex()},
            "holds 0 ETH",
        ),
    ],
)
def test_a_broken_part_is_named_and_exits_1(
    tmp_path: Path, checked: DaemonProcess, part: str, make_env: Callable[[Path], dict[str, str]], says: str
) -> None:
    code, findings, output = checked.check(**make_env(tmp_path))
    assert code == 1, output
    assert findings[part]["status"] == "fail", findings
    assert says in findings[part]["detail"], findings[part]
    assert "\n" not in findings[part]["detail"]
    # what does not depend on the broken part is still checked
    assert findings["database"]["status"] == "ok" and findings["health endpoint"]["status"] == "ok"
    assert [name for name, f in findings.items() if f["status"] == "fail"] == [part]


def test_a_taken_health_port_is_named(checked: DaemonProcess) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, findings, output = checked.check(IOTSETTLE_ORACLE_HEALTH_PORT=str(taken.getsockname()[1]))
    assert code == 1, output
    assert findings["health endpoint"]["status"] == "fail"
    assert "cannot listen on 127.0.0.1" in findings["health endpoint"]["detail"]
    assert all(f["status"] == "ok" for name, f in findings.items() if name != "health endpoint"), findings


def test_an_unreachable_endpoint_is_named_without_its_secrets(checked: DaemonProcess) -> None:
    code, findings, output = checked.check(
        IOTSETTLE_CHAIN_RPC_URL=f"https://ops:rpc-secret-1@127.0.0.1:{free_port()}/v3/rpc-secret-2?k=rpc-secret-3"
    )
    assert code == 1, output
    assert findings["chain"]["status"] == "fail" and "cannot reach" in findings["chain"]["detail"]
    assert "https://127.0.0.1:" in findings["chain"]["detail"]
    assert "rpc-secret" not in output, output


def test_a_remote_signer_and_several_endpoints_are_checked_without_their_secrets(
    checked: DaemonProcess, deployment: Any
) -> None:
    rpc = deployment.config.chain.rpc_url
    remote = "0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f"  # anvil's unlocked development account 8
    signer = {"SIGNER": "remote", "PRIVATE_KEY": "", "SIGNER_ADDRESS": remote}
    signer = {f"IOTSETTLE_CHAIN_{k}": v for k, v in signer.items()}
    code, findings, output = checked.check(
        IOTSETTLE_CHAIN_RPC_URLS=f"http://127.0.0.1:{free_port()}/?k=rpc-secret-1,{rpc}/?apikey=rpc-secret-2",
        IOTSETTLE_CHAIN_SIGNER_URL=rpc + "/?token=signer-secret",
        **signer,
    )
    assert code == 0, output
    assert findings["relayer key"]["detail"].startswith(f"{remote} from the remote signer at http://127.0.0.1:")
    assert findings["signer"]["status"] == "ok" and remote in findings["signer"]["detail"]
    assert "secret" not in output, output

    code, findings, output = checked.check(IOTSETTLE_CHAIN_SIGNER_URL=f"http://127.0.0.1:{free_port()}", **signer)
    assert code == 1 and findings["signer"]["status"] == "fail", output
    assert findings["signer"]["detail"].endswith("does not answer")
