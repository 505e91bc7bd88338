"""`iotsettle` run as a user would: fresh funded accounts, keys in environment variables, devices registered."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from click.testing import CliRunner, Result
from eth_account import Account
from eth_account.signers.local import LocalAccount
from iotsettle.cli.main import cli
from iotsettle.oracle.chain.connection import ANVIL_DEV_KEYS
from iotsettle.oracle.config import Config
from iotsettle.oracle.device.keys import DeviceKey
from iotsettle.oracle.ops.context import open_context
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.testing import devices as testing_devices
from iotsettle.oracle.testing.stack import Deployment

from tests.kit.stack import REPO


def cli_env(config: Config, **extra: str) -> dict[str, str]:
    """The environment a user would have for this stack: only IOTSETTLE_* variables, never their own files."""
    return {
        "IOTSETTLE_CONFIG": str(REPO / "tests" / "empty.toml"),
        "IOTSETTLE_CHAIN_RPC_URL": config.chain.rpc_url,
        "IOTSETTLE_PATHS_DEPLOYMENTS_DIR": str(config.path(config.paths.deployments_dir)),
        "IOTSETTLE_CHAIN_PRIVATE_KEY": "",
        **extra,
    }


@dataclass(frozen=True)
class User:
    """A fresh account with some ETH for gas; the CLI finds its key in an environment variable of its own."""

    account: LocalAccount
    env_name: str

    @property
    def address(self) -> str:
        return self.account.address

    @property
    def key_hex(self) -> str:
        return self.account.key.hex()


class Cli:
    """`iotsettle` against one stack, as several users (each with `--from-key-env`)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.keys: dict[str, str] = {}

    def user(self, w3: Any, eth: float = 10.0) -> User:
        account = Account.from_key(secrets.token_bytes(32))
        name = f"TEST_KEY_{account.address[2:10].upper()}"
        self.keys[name] = "0x" + account.key.hex()
        funder = Account.from_key(ANVIL_DEV_KEYS[0])
        tx = {
            "to": account.address,
            "value": int(eth * 10**18),
            "gas": 21_000,
            "chainId": w3.eth.chain_id,
            "nonce": w3.eth.get_transaction_count(funder.address, "pending"),
            "maxFeePerGas": 2 * w3.eth.get_block("latest")["baseFeePerGas"] + 1,
            "maxPriorityFeePerGas": 1,
        }
        w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(funder.sign_transaction(tx).raw_transaction))
        return User(account, name)

    def run(self, args: list[str], as_user: User | None = None, stdin: str | None = None, **env: str) -> Result:
        full = list(args) + (["--from-key-env", as_user.env_name] if as_user else [])
        return CliRunner().invoke(cli, full, env={**cli_env(self.config), **self.keys, **env}, input=stdin)

    def ok(self, args: list[str], as_user: User | None = None, stdin: str | None = None, **env: str) -> Any:
        """Run with --json, expect success, return the parsed output."""
        result = self.run([*args, "--json"], as_user, stdin, **env)
        assert result.exit_code == 0, f"{args}: exit {result.exit_code}\n{result.output}\n{result.exception!r}"
        return json.loads(result.stdout)

    def fails(self, args: list[str], as_user: User | None = None, stdin: str | None = None, **env: str) -> str:
        """Run, expect a one-line error (no traceback) and a non-zero exit; return the error text."""
        result = self.run(args, as_user, stdin, **env)
        assert result.exit_code != 0, f"{args} succeeded:\n{result.output}"
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        lines = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
        assert len(lines) == 1, result.stderr
        return lines[0].removeprefix("Error: ")


def register_device(config: Config, owner: User, kind: DeviceKind) -> DeviceKey:
    """A new device key registered on chain to ``owner``."""
    ctx = open_context(config)
    return testing_devices.register_device(Deployment(config, ctx.chain, ctx.manifest), owner.account, kind)
