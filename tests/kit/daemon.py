"""The oracle daemon as operators run it: `python -m iotsettle.cli.oracle run`, a real process configured by
IOTSETTLE_* variables, watched through its health and metrics endpoints."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from iotsettle.cli._common import State
from iotsettle.cli.oracle import oracle
from iotsettle.oracle.chain.connection import ANVIL_DEV_KEYS
from iotsettle.oracle.chain.node import free_port
from iotsettle.oracle.daemon.store import Store

from tests.kit.stack import REPO
from tests.kit.wait import wait_for

RELAYER_KEY = ANVIL_DEV_KEYS[4]  # a dev account no other test sends from


class DaemonProcess:
    """`python -m iotsettle.cli.oracle run` with its configuration in IOTSETTLE_* variables."""

    def __init__(self, tmp_path: Path, deployment: Any, mosquitto: Any, **overrides: str) -> None:
        self.db = tmp_path / "oracle.db"
        self.health_port = free_port()
        self.oracle_id = f"t{uuid.uuid4().hex[:8]}"
        config = deployment.config
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IOTSETTLE_")},
            "IOTSETTLE_CONFIG": str(REPO / "tests" / "empty.toml"),
            "IOTSETTLE_CHAIN_RPC_URL": config.chain.rpc_url,
            "IOTSETTLE_CHAIN_PRIVATE_KEY": RELAYER_KEY,
            "IOTSETTLE_PATHS_DEPLOYMENTS_DIR": str(config.path(config.paths.deployments_dir)),
            "IOTSETTLE_MQTT_HOST": mosquitto.host,
            "IOTSETTLE_MQTT_PORT": str(mosquitto.port),
            "IOTSETTLE_ORACLE_DB_PATH": str(self.db),
            "IOTSETTLE_ORACLE_CLIENT_ID": f"oracle-{self.oracle_id}",
            "IOTSETTLE_ORACLE_ORACLE_ID": self.oracle_id,
            "IOTSETTLE_ORACLE_HEALTH_PORT": str(self.health_port),
            "IOTSETTLE_ORACLE_VERIFY_WORKERS": "0",
            "IOTSETTLE_ORACLE_REGISTRY_POLL": "0.2",
            **overrides,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp_path / f"daemon-{self.oracle_id}.log"

    def start(self, *args: str, **overrides: str) -> DaemonProcess:
        env = {**self.env, **overrides}
        self.output = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iotsettle.cli.oracle", "run", *args],
            cwd=REPO,
            env=env,
            stdout=self.output,
            stderr=subprocess.STDOUT,
        )
        return self

    def run_to_exit(self, **overrides: str) -> tuple[int, str]:
        """`iotsettle oracle run` in this process, for starts that must be refused (nothing is started)."""
        env = {k: v for k, v in {**self.env, **overrides}.items() if k.startswith("IOTSETTLE_")}
        cleared = {k: None for k in os.environ if k.startswith("IOTSETTLE_") and k not in env}
        result = CliRunner().invoke(oracle, ["run"], env={**cleared, **env}, obj=State(None))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError("a refused start must be a one-line error, not a crash") from result.exception
        return result.exit_code, result.output

    def get(self, path: str) -> tuple[int, bytes] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=2) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError):
            return None

    def health(self) -> dict[str, Any] | None:
        answer = self.get("/health")
        return json.loads(answer[1]) if answer else None

    def metric(self, name: str) -> float:
        answer = self.get("/metrics")
        match = re.search(rf"^{name} ([0-9.e+]+)$", answer[1].decode(), re.M) if answer else None
        return float(match.group(1)) if match else 0.0

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            report = self.health()
            return bool(report and report["checks"].get("mqtt", {}).get("status") == "ok")

        wait_for(ready, timeout, "the daemon's health endpoint to report MQTT connected")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self.output.close()
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stored(self) -> int:
        if not self.db.exists():
            return 0
        store = Store.open(self.db)
        try:
            return store.event_count()
        finally:
            store.close()
