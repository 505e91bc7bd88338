"""Foundation: compile reproducibility, deploy idempotency, the managed stack and the CLI's error paths."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from eth_account import Account
from iotsettle.cli.main import cli
from iotsettle.oracle.chain.compiler import compile_contracts, ensure_compiled, read_foundry_settings
from iotsettle.oracle.chain.connection import connect, load_keystore, load_sender
from iotsettle.oracle.chain.deploy import deploy_all, verify_manifest
from iotsettle.oracle.chain.manifest import load_manifest
from iotsettle.oracle.chain.node import Anvil, Mosquitto, free_port, mqtt_ready, rpc_ready
from iotsettle.oracle.config import load_config
from iotsettle.oracle.protocol.errors import ChainError, ConfigError, DeploymentError, KeyFileError

from tests.kit.stack import REPO, make_config


def _env(config) -> dict[str, str]:
    return {
        "IOTSETTLE_NODE_STATE_DIR": str(config.path(config.node.state_dir)),
        "IOTSETTLE_NODE_ANVIL_PORT": str(config.node.anvil_port),
        "IOTSETTLE_NODE_MQTT_PORT": str(config.node.mqtt_port),
        "IOTSETTLE_CHAIN_RPC_URL": config.chain.rpc_url,
        "IOTSETTLE_PATHS_DEPLOYMENTS_DIR": str(config.path(config.paths.deployments_dir)),
        "IOTSETTLE_CONFIG": str(REPO / "tests" / "empty.toml"),
    }


def _cli(args: list[str], env: dict[str, str]):
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


# --- compiling ----------------------------------------------------------------------------------------


def test_compile_is_reproducible(test_config) -> None:
    first = compile_contracts(test_config)
    second = compile_contracts(test_config)
    assert first, "contracts/ compiled to nothing"
    assert {n: a["bytecode"] for n, a in first.items()} == {n: a["bytecode"] for n, a in second.items()}
    settings = read_foundry_settings(REPO)
    for artifact in first.values():
        assert artifact["compiler"]["version"] == settings.version
        assert artifact["compiler"]["settings"]["evmVersion"] == settings.evm_version


def test_compile_matches_forge_bytecode(test_config) -> None:
    """py-solc-x and forge use one compiler and one set of settings: same runtime bytecode."""
    ensure_compiled(test_config)
    forge = subprocess.run(
        [str(REPO / "node_modules/.bin/forge"), "build"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert forge.returncode == 0, forge.stderr[-2000:]
    checked = 0
    for path in (REPO / "build/artifacts").glob("*.json"):
        if path.name.startswith("_"):
            continue
        ours = json.loads(path.read_text())
        theirs_path = REPO / "build/forge-out" / Path(ours["sourceName"]).name / f"{ours['contractName']}.json"
        if len(ours["bytecode"]) <= 2 or not theirs_path.is_file():
            continue
        theirs = json.loads(theirs_path.read_text())
        assert ours["bytecode"] == theirs["bytecode"]["object"], ours["contractName"]
        checked += 1
    assert checked >= 4, f"only {checked} deployable contracts compared"  # registry, escrow, billing, test token


def test_compile_cli_reports_up_to_date(test_config) -> None:
    result = _cli(["compile", "--json"], _env(test_config))
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["compiled"] is False and data["contracts"]


# --- deploying ----------------------------------------------------------------------------------------


def test_deploy_is_idempotent(deployment) -> None:
    config, chain = deployment.config, deployment.chain
    again = deploy_all(config, chain, load_sender(config, chain))
    assert again["contracts"] == deployment.manifest["contracts"]
    assert load_manifest(config, chain.chain_id)["contracts"] == deployment.manifest["contracts"]
    verify_manifest(chain, config, again)


def test_deploy_cli_prints_manifest(deployment) -> None:
    result = _cli(["deploy", "--json"], _env(deployment.config))
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    assert manifest["chainId"] == 31337
    assert manifest["contracts"] == deployment.manifest["contracts"]


def test_deploy_unreachable_rpc_is_one_line(test_config) -> None:
    env = _env(test_config) | {"IOTSETTLE_CHAIN_RPC_URL": f"http://127.0.0.1:{free_port()}"}
    result = CliRunner().invoke(cli, ["deploy"], env=env)
    assert result.exit_code == 1
    assert "cannot reach the RPC endpoint" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 2


def test_deploy_chain_id_mismatch(anvil, test_config) -> None:
    config = test_config.replace("chain", chain_id=1)
    with pytest.raises(ChainError, match="expects chain 1"):
        connect(config)


def test_public_chain_needs_a_key(anvil, tmp_path) -> None:
    """The development key is only ever used on a local chain id."""
    other = Anvil(make_config(tmp_path, free_port(), free_port()), chain_id=424242)
    other.start()
    try:
        config = make_config(tmp_path, other.port, free_port())
        with pytest.raises(KeyFileError, match="not a local chain"):
            load_sender(config, connect(config))
    finally:
        other.stop()


def test_manifest_refused_on_a_fresh_node(deployment, tmp_path) -> None:
    """A fresh anvil on the same chain id has another genesis block: the manifest does not describe it."""
    fresh = Anvil(make_config(tmp_path, free_port(), free_port()))
    fresh.start()
    try:
        config = make_config(tmp_path, fresh.port, free_port())
        with pytest.raises(DeploymentError, match="genesis"):
            verify_manifest(connect(config), deployment.config, deployment.manifest)
    finally:
        fresh.stop()


# --- keys ---------------------------------------------------------------------------------------------


def test_keystore_wrong_password_and_world_readable(tmp_path) -> None:
    account = Account.create()
    path = tmp_path / "key.json"
    path.write_text(json.dumps(Account.encrypt(account.key, "right", kdf="scrypt", iterations=2)))
    path.chmod(0o600)
    assert load_keystore(path, "right").address == account.address
    with pytest.raises(KeyFileError, match="wrong password"):
        load_keystore(path, "wrong")
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by other users"):
        load_keystore(path, "right")


# --- configuration ------------------------------------------------------------------------------------


def test_config_env_overrides_and_validation(tmp_path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('[chain]\nrpc_url = "http://127.0.0.1:9999"\nconfirmations = 3\n')
    config = load_config(file, env={"IOTSETTLE_CHAIN_CONFIRMATIONS": "5"})
    assert config.chain.rpc_url == "http://127.0.0.1:9999" and config.chain.confirmations == 5
    with pytest.raises(ConfigError, match="IOTSETTLE_NODE_ANVIL_PORT"):
        load_config(file, env={"IOTSETTLE_NODE_ANVIL_PORT": "many"})
    file.write_text("[chian]\n")
    with pytest.raises(ConfigError, match="unknown section"):
        load_config(file, env={})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("OPTIMISTIC_WINDOW", "599", "optimistic_window = 599"),
        ("OPTIMISTIC_WINDOW", str(31 * 86400), "expected 600 to 2592000"),
        ("OPTIMISTIC_BOND", "0", "optimistic_bond = '0'"),
        ("OPTIMISTIC_BOND", "lots", "an ETH amount > 0"),
        ("OPTIMISTIC_BOND", "0.0000000000000000001", "at most 18 decimals"),
    ],
)
def test_config_refuses_a_window_or_bond_the_contract_would(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(env={f"IOTSETTLE_DEPLOY_{key}": value}, read_files=False)
    config = load_config(env={"IOTSETTLE_DEPLOY_OPTIMISTIC_BOND": "1.5"}, read_files=False)
    assert config.deploy.optimistic_bond_wei == 15 * 10**17 and config.deploy.optimistic_window == 3600


def test_config_show_never_prints_secrets(tmp_path) -> None:
    env = {
        "IOTSETTLE_CONFIG": str(REPO / "tests" / "empty.toml"),
        "IOTSETTLE_CHAIN_PRIVATE_KEY": "0x" + "11" * 32,
        "IOTSETTLE_MQTT_PASSWORD": "hunter2",
    }
    result = _cli(["config", "show", "--json"], env)
    assert result.exit_code == 0
    assert "11" * 32 not in result.output and "hunter2" not in result.output
    assert json.loads(result.output)["mqtt"]["password"] == "***"


# --- the local stack ----------------------------------------------------------------------------------


def test_node_up_status_down(tmp_path) -> None:
    config = make_config(tmp_path, free_port(), free_port())
    env = _env(config)
    up = _cli(["node", "up", "--json"], env)
    try:
        assert up.exit_code == 0, up.output
        assert all(s["ready"] for s in json.loads(up.output))
        assert rpc_ready(config.chain.rpc_url) == 31337
        assert mqtt_ready("127.0.0.1", config.node.mqtt_port)
        again = _cli(["node", "up", "--json"], env)  # idempotent: same pids
        assert [s["pid"] for s in json.loads(again.output)] == [s["pid"] for s in json.loads(up.output)]
        status = json.loads(_cli(["node", "status", "--json"], env).output)
        assert [s["name"] for s in status if s["ready"]] == ["anvil", "mosquitto"]
    finally:
        down = _cli(["node", "down", "--json"], env)
    assert json.loads(down.output) == {"anvil": True, "mosquitto": True}
    assert rpc_ready(config.chain.rpc_url) is None
    assert not mqtt_ready("127.0.0.1", config.node.mqtt_port)
    assert not any((tmp_path).glob("*.pid"))


def test_node_up_port_taken_names_the_fix(tmp_path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        config = make_config(tmp_path, taken, free_port())
        result = CliRunner().invoke(cli, ["node", "up"], env=_env(config))
    assert result.exit_code == 1
    assert f"port {taken}" in result.output and "IOTSETTLE_NODE_ANVIL_PORT" in result.output
    assert "Traceback" not in result.output


def test_missing_binary_names_the_fix(tmp_path) -> None:
    config = dataclasses.replace(make_config(tmp_path, free_port(), free_port()), root=tmp_path)
    env = {"PATH": "/nonexistent"}
    old = os.environ.get("PATH")
    os.environ.update(env)
    try:
        with pytest.raises(Exception, match="scripts/setup") as info:
            Mosquitto(config).command() if not Path("/usr/sbin/mosquitto").exists() else Anvil(config).command()
    finally:
        os.environ["PATH"] = old or ""
    assert "not installed" in str(info.value)


def test_cli_help_everywhere() -> None:
    """Every command explains itself."""

    def walk(group, prefix):
        for name, command in group.commands.items():
            yield [*prefix, name], command
            if hasattr(command, "commands"):
                yield from walk(command, [*prefix, name])

    for args, command in walk(cli, []):
        result = CliRunner().invoke(cli, [*args, "--help"])
        assert result.exit_code == 0, args
        assert (command.help or "").strip(), f"{' '.join(args)} has no help text"
