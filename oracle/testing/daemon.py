"""The oracle daemon as operators run it: `python -m iotsettle.cli.oracle run`, a real process configured by
IOTSETTLE_* variables only, watched through its health and metrics endpoints."""

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
from typing import IO, Any

from iotsettle.oracle.chain.connection import ANVIL_DEV_KEYS
from iotsettle.oracle.chain.node import Mosquitto, free_port
from iotsettle.oracle.daemon.store import Store
from iotsettle.oracle.testing.stack import Deployment
from iotsettle.oracle.testing.wait import wait_for

#: the relayer when none is given: a development account the fixtures never send from otherwise
RELAYER_KEY = ANVIL_DEV_KEYS[4]


class DaemonProcess:
    """`python -m iotsettle.cli.oracle run` against a deployment and a broker, its database and log in ``folder``.

    ``overrides`` are IOTSETTLE_* variables (e.g. ``IOTSETTLE_ORACLE_BATCH_MAX_WAIT="0.1"``) on top of a
    configuration that reads no file of the user's.
    """

    def __init__(
        self,
        folder: Path,
        deployment: Deployment,
        mosquitto: Mosquitto,
        *,
        relayer_key: str = RELAYER_KEY,
        **overrides: str,
    ) -> None:
        self.folder = folder
        self.db = folder / "oracle.db"
        self.health_port = free_port()
        self.oracle_id = f"t{uuid.uuid4().hex[:8]}"
        self.root = deployment.config.root
        config = deployment.config
        # an empty file, so that an iotsettle.toml in the working folder is not read
        no_file = folder / "no-config.toml"
        no_file.touch()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IOTSETTLE_")},
            "IOTSETTLE_CONFIG": str(no_file),
            "IOTSETTLE_CHAIN_RPC_URL": config.chain.rpc_url,
            "IOTSETTLE_CHAIN_PRIVATE_KEY": relayer_key,
            "IOTSETTLE_PATHS_DEPLOYMENTS_DIR": str(config.path(config.paths.deployments_dir)),
            "IOTSETTLE_PATHS_ARTIFACTS_DIR": str(config.path(config.paths.artifacts_dir)),
            "IOTSETTLE_MQTT_HOST": mosquitto.host,
            "IOTSETTLE_MQTT_PORT": str(mosquitto.port),
            "IOTSETTLE_ORACLE_DB_PATH": str(self.db),
            "IOTSETTLE_ORACLE_CLIENT_ID": f"oracle-{self.oracle_id}",
            "IOTSETTLE_ORACLE_ORACLE_ID": self.oracle_id,
            "IOTSETTLE_ORACLE_HEALTH_PORT": str(self.health_port),
            "IOTSETTLE_ORACLE_VERIFY_WORKERS": "0",
            "IOTSETTLE_ORACLE_REGISTRY_POLL": "0.2",
            # a test waits for each payment: readings settle at the next batch cut, not after a window
            "IOTSETTLE_ORACLE_SETTLEMENT_WINDOW": "0",
            **overrides,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.output: IO[bytes] | None = None
        self.log = folder / f"daemon-{self.oracle_id}.log"

    def start(self, *args: str, **overrides: str) -> DaemonProcess:
        """Start `iotsettle oracle run` with ``args``; returns at once (see ``wait_ready``)."""
        self.output = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iotsettle.cli.oracle", "run", *args],
            cwd=self.root,
            env={**self.env, **overrides},
            stdout=self.output,
            stderr=subprocess.STDOUT,
        )
        return self

    def get(self, path: str) -> tuple[int, bytes] | None:
        """(HTTP status, body) of the health endpoint's ``path``; None while it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=2) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError):
            return None

    def health(self) -> dict[str, Any] | None:
        answer = self.get("/health")
        return json.loads(answer[1]) if answer else None

    def metric(self, name: str) -> float:
        """One sample of /metrics, ``name`` or ``name{label="value"}`` as exposed (0 when absent)."""
        answer = self.get("/metrics")
        # small values come as 5.4e-05, unbounded ones as +Inf
        pattern = rf"^{re.escape(name)} ([-+0-9.e]+|[-+]Inf|NaN)$"
        match = re.search(pattern, answer[1].decode(), re.M) if answer else None
        return float(match.group(1)) if match else 0.0

    def wait_ready(self, timeout: float = 60) -> DaemonProcess:
        """Wait until the health endpoint reports MQTT connected; AssertionError with the log if the daemon exits."""

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            report = self.health()
            return bool(report and report["checks"].get("mqtt", {}).get("status") == "ok")

        wait_for(ready, timeout, "the daemon's health endpoint to report MQTT connected")
        return self

    def signal(self, sig: int) -> None:
        if self.proc is None:
            raise RuntimeError("the daemon was not started")
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        """Wait for the process to exit; its exit code."""
        if self.proc is None:
            raise RuntimeError("the daemon was not started")
        code = self.proc.wait(timeout)
        if self.output is not None:
            self.output.close()
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.output is not None:
            self.output.close()

    def stored(self) -> int:
        """Events in the daemon's durable store."""
        if not self.db.exists():
            return 0
        store = Store.open(self.db)
        try:
            return store.event_count()
        finally:
            store.close()
