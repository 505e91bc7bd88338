"""The oracle daemon process of ``iotsettle.oracle.testing.daemon``, plus refused starts and ``--check`` run in this
process."""

from __future__ import annotations

import json
import os
from typing import Any

from click.testing import CliRunner, Result
from iotsettle.cli._common import State
from iotsettle.cli.oracle import oracle
from iotsettle.oracle.testing import daemon

RELAYER_KEY = daemon.RELAYER_KEY


class DaemonProcess(daemon.DaemonProcess):
    def _invoke(self, args: list[str], crash: str, overrides: dict[str, str]) -> Result:
        """`iotsettle oracle ARGS` in this process with this daemon's IOTSETTLE_* variables and no others."""
        env = {k: v for k, v in {**self.env, **overrides}.items() if k.startswith("IOTSETTLE_")}
        cleared = {k: None for k in os.environ if k.startswith("IOTSETTLE_") and k not in env}
        result = CliRunner().invoke(oracle, args, env={**cleared, **env}, obj=State(None))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(crash) from result.exception
        return result

    def run_to_exit(self, **overrides: str) -> tuple[int, str]:
        """`iotsettle oracle run` in this process, for starts that must be refused (nothing is started)."""
        result = self._invoke(["run"], "a refused start must be a one-line error, not a crash", overrides)
        return result.exit_code, result.output

    def check(self, **overrides: str) -> tuple[int, dict[str, dict[str, Any]], str]:
        """`iotsettle oracle run --check --json` in this process: (exit code, findings by part, the output)."""
        result = self._invoke(["run", "--check", "--json"], "--check must report, not crash", overrides)
        report = json.loads(result.stdout)
        return result.exit_code, {f["name"]: f for f in report["findings"]}, result.output
