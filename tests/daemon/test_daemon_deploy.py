"""The files shipped in deploy/ against the real daemon: every metric the Prometheus alert rules and the Grafana
dashboard name is on a running daemon's /metrics, and the systemd unit and the container build start the daemon's
real command with real settings (no Docker engine here: the container file is read, not built)."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml
from iotsettle.cli.main import cli
from iotsettle.oracle.config import ENV_PREFIX, SECTIONS, OracleSettings
from iotsettle.oracle.daemon.store import EventStatus
from iotsettle.oracle.testing.accounts import funded_account

from tests.kit.daemon import DaemonProcess
from tests.kit.stack import REPO

DEPLOY = REPO / "deploy"
METRIC = re.compile(r"\biotsettle_[a-z0-9_]+")
#: series Prometheus makes itself for every target; the rules may use them
PROMETHEUS_OWN = {"up"}
DEFAULTS = OracleSettings()


def _alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def _dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "iotsettle.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return queries


def _exposed(metrics: str) -> set[str]:
    """Every series name a scrape of ``metrics`` can yield, declared families without samples yet included."""
    names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{| )", metrics, re.M))
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", metrics, re.M):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return names


def _config_variables() -> set[str]:
    return {f"{ENV_PREFIX}CONFIG"} | {
        f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}"
        for section, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
    }


def _is_command(args: list[str]) -> bool:
    """Whether ``args`` (after the program name) name a command of the real click tree."""
    group: Any = cli
    for word in args:
        if word.startswith("-"):
            continue
        group = group.get_command(None, word) if hasattr(group, "get_command") else None
        if group is None:
            return False
    return not hasattr(group, "get_command")


def test_every_metric_of_the_alert_rules_and_the_dashboard_is_on_metrics(
    tmp_path: Path, deployment: Any, mosquitto: Any, daemons: list[DaemonProcess]
) -> None:
    rules = _alert_rules()
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule
        assert rule["annotations"]["summary"], rule
    queries = [rule["expr"] for rule in rules] + _dashboard_queries()
    named = {name for query in queries for name in METRIC.findall(query)}
    # the funds metrics are alerted on and drawn
    assert {"iotsettle_oracle_gas_hours_left", "iotsettle_oracle_relayer_balance_eth"} <= named
    assert len(named) >= 20, named

    relayer = funded_account(deployment.chain)
    daemon = DaemonProcess(tmp_path, deployment, mosquitto, relayer_key="0x" + bytes(relayer.key).hex())
    daemons.append(daemon)
    daemon.start().wait_ready()
    answer = daemon.get("/metrics")
    assert answer is not None and answer[0] == 200
    exposed = _exposed(answer[1].decode())
    assert sorted(named - exposed) == []
    # the only other series they use are Prometheus' own
    bare = {
        word
        for query in queries
        for word in re.findall(r"(?<![\w\"'$.])([a-z_][a-z0-9_]*)\s*(?:\{|\[|==|<|>)", query)
        if not word.startswith("iotsettle_")
    }
    assert bare <= PROMETHEUS_OWN | {"le", "instance", "check", "status", "outcome", "reason", "kind", "job"}, bare
    # the backlog statuses they select exist
    statuses = {s for query in queries for group in re.findall(r'status=~"([^"]+)"', query) for s in group.split("|")}
    assert statuses and statuses <= {s.value for s in EventStatus}, statuses


def _instructions(containerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined, comments dropped."""
    lines = [line for line in containerfile.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^(\w+)\s+(.*)$", joined, re.M)]


def test_the_container_runs_the_daemon_with_its_state_as_a_volume_and_health_as_its_check() -> None:
    steps = _instructions((DEPLOY / "container" / "Containerfile").read_text())
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]  # the image that ships
    by_op: dict[str, list[str]] = {}
    for op, args in final:
        by_op.setdefault(op, []).append(args)

    workdir = by_op["WORKDIR"][-1]
    state_dir = str(Path(DEFAULTS.db_path).parent)  # .state: the database's folder when db_path is left alone
    assert json.loads(by_op["VOLUME"][0]) == [f"{workdir}/{state_dir}"]
    assert "IOTSETTLE_ORACLE_DB_PATH" not in " ".join(by_op["ENV"])  # so the default puts it in the volume
    deployments = re.search(r"IOTSETTLE_PATHS_DEPLOYMENTS_DIR=(\S+)", " ".join(by_op["ENV"]))
    assert deployments is not None and deployments.group(1).startswith(state_dir + "/")

    port = f"os.environ.get('IOTSETTLE_ORACLE_HEALTH_PORT', '{DEFAULTS.health_port}')"
    assert f"urlopen('http://127.0.0.1:%s/health' % {port}" in by_op["HEALTHCHECK"][0]
    assert by_op["EXPOSE"] == [str(DEFAULTS.health_port)]
    assert "IOTSETTLE_ORACLE_HEALTH_HOST=0.0.0.0" in " ".join(by_op["ENV"])  # reachable by a scraper
    assert by_op["STOPSIGNAL"] == ["SIGTERM"]
    assert by_op["USER"] != ["root"]
    command = json.loads(by_op["ENTRYPOINT"][0]) + json.loads(by_op["CMD"][0])
    assert command[0] == "iotsettle" and _is_command(command[1:]) and command[1:] == ["oracle", "run"]
    for name in re.findall(r"\b(IOTSETTLE_[A-Z_]+)=", " ".join(by_op["ENV"])):
        assert name in _config_variables(), name


def _unit(path: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_the_systemd_unit_runs_the_daemon_and_waits_for_its_drain() -> None:
    unit = _unit(DEPLOY / "systemd" / "iotsettle-oracle.service")
    program, *args = shlex.split(unit["ExecStart"][0])
    assert program.endswith("/iotsettle") and args == ["oracle", "run"] and _is_command(args)
    assert unit["KillSignal"] == ["SIGTERM"] and unit["KillMode"] == ["mixed"]
    assert float(unit["TimeoutStopSec"][0]) > DEFAULTS.drain_timeout
    assert unit["Restart"] == ["on-failure"]
    assert unit["User"] != ["root"]
    environment = dict(value.split("=", 1) for value in unit["Environment"])
    for name in environment:
        assert name in _config_variables(), name
    # secrets come as credentials (files), never as values in the unit
    assert environment["IOTSETTLE_CHAIN_KEYSTORE"].startswith("%d/")
    assert environment["IOTSETTLE_CHAIN_PASSWORD_FILE"].startswith("%d/")
    assert not {"IOTSETTLE_CHAIN_PASSWORD", "IOTSETTLE_CHAIN_PRIVATE_KEY", "IOTSETTLE_MQTT_PASSWORD"} & set(environment)
    state = "/var/lib/" + unit["StateDirectory"][0]
    assert environment["IOTSETTLE_ORACLE_DB_PATH"].startswith(state + "/")


def test_the_compose_file_builds_the_daemon_from_the_containerfile() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    oracle = compose["services"]["oracle"]
    assert (REPO / oracle["build"]["context"] / oracle["build"]["dockerfile"]).is_file()
    for name in oracle["environment"]:
        assert name in _config_variables(), name
    assert any(volume.endswith(":/srv/iotsettle/.state") for volume in oracle["volumes"])
    host = oracle["environment"]["IOTSETTLE_CHAIN_RPC_URL"].split("//")[1].split(":")[0]
    assert {host, oracle["environment"]["IOTSETTLE_MQTT_HOST"]} <= set(compose["services"])
