"""`iotsettle oracle alerts`: the alerts in the oracle's database, for people and scripts, and followed as the
daemon raises them (a real process reading the SQLite file another connection writes, as beside a running daemon)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner
from iotsettle.cli._common import State
from iotsettle.cli.oracle import oracle
from iotsettle.oracle.daemon.alerts import Alert
from iotsettle.oracle.daemon.store import Store
from iotsettle.oracle.protocol.alerts import AlertKind

from tests.kit.stack import REPO

METER = "0x" + "11" * 20
STATION = "0x" + "22" * 20


def alert(kind: AlertKind, device: str, seq: int) -> Alert:
    return Alert(kind, device, "reading", 7, seq, 1_800_000_000 + seq, time.time(), 300.0, 12.5, f"detail {seq}")


def env_for(db: Path) -> dict[str, str]:
    return {"IOTSETTLE_CONFIG": str(REPO / "tests" / "empty.toml"), "IOTSETTLE_ORACLE_DB_PATH": str(db)}


def test_alerts_are_listed_filtered_and_printed_as_json(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "oracle.db")
    store.add_alerts(
        [alert(AlertKind.METER_SPIKE, METER, 1).row(), alert(AlertKind.STATION_OUTLIER, STATION, 2).row()], []
    )
    store.close()
    run = CliRunner().invoke
    listed = json.loads(run(oracle, ["alerts", "--json"], env=env_for(tmp_path / "oracle.db"), obj=State(None)).output)
    assert [(a["alert"], a["device"], a["seq"], a["id"], a["v"]) for a in listed] == [
        ("meter_spike", METER, 1, 1, 1),
        ("station_outlier", STATION, 2, 2, 1),
    ]
    only = run(oracle, ["alerts", "--json", "--device", STATION.upper().replace("0X", "0x")], env=env_for(
        tmp_path / "oracle.db"), obj=State(None))  # fmt: skip
    assert [a["alert"] for a in json.loads(only.output)] == ["station_outlier"]
    human = run(oracle, ["alerts", "--kind", "meter_spike"], env=env_for(tmp_path / "oracle.db"), obj=State(None))
    assert human.exit_code == 0 and "meter_spike" in human.output and "station_outlier" not in human.output


def test_a_missing_database_or_bad_device_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(oracle, ["alerts"], env=env_for(tmp_path / "none.db"), obj=State(None))
    assert result.exit_code != 0 and "no oracle database at" in result.output and "Traceback" not in result.output
    bad = CliRunner().invoke(oracle, ["alerts", "--device", "meter-1"], env=env_for(tmp_path / "none.db"))
    assert bad.exit_code == 2 and "is not a 0x-prefixed 20-byte address" in bad.output


def test_follow_prints_each_new_alert_once_as_a_json_line(tmp_path: Path) -> None:
    db = tmp_path / "oracle.db"
    store = Store.open(db)
    store.add_alerts([alert(AlertKind.METER_SPIKE, METER, 1).row()], [])
    proc = subprocess.Popen(
        [sys.executable, "-m", "iotsettle.cli.oracle", "alerts", "--follow", "--json", "--interval", "0.1"],
        env={**os.environ, **env_for(db)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert (first["alert"], first["seq"]) == ("meter_spike", 1)
        store.add_alerts([alert(AlertKind.STATION_OUTLIER, STATION, 2).row()], [])  # the daemon raises another
        store.add_alerts([alert(AlertKind.METER_SPIKE, METER, 3).row()], [])
        following = [json.loads(proc.stdout.readline()) for _ in range(2)]
        assert [(a["alert"], a["seq"]) for a in following] == [("station_outlier", 2), ("meter_spike", 3)]
    finally:
        proc.terminate()
        proc.wait(10)
        store.close()
