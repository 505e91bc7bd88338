"""`iotsettle demo` as a user runs it: a short live run settles payments on chain; Ctrl-C leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oracle.node import free_port

from tests.conftest import REPO, Deployment, make_config, private_deployment

HOUSEHOLD = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"  # anvil development account 3
SHOP = "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65"  # development account 4


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose: it runs nothing
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _demo(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", "from cli.main import main; main()", "demo", *args], cwd=REPO,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


@pytest.fixture(scope="module")
def demo_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """An anvil of its own: the demo spends the development accounts and moves a lot of blocks."""
    with private_deployment(tmp_path_factory.mktemp("demo-chain")) as deployment:
        yield deployment


def _env(config, tmp_path: Path) -> dict[str, str]:
    return {"IOTSETTLE_CONFIG": str(REPO / "tests" / "empty.toml"),
            "IOTSETTLE_CHAIN_RPC_URL": config.chain.rpc_url,
            "IOTSETTLE_PATHS_DEPLOYMENTS_DIR": str(config.path(config.paths.deployments_dir)),
            "IOTSETTLE_NODE_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "120"}


def test_short_demo_settles_payments_on_chain(demo_chain, mosquitto, tmp_path) -> None:
    token = demo_chain.contract("TestToken")
    work = tmp_path / "work"
    proc = _demo(["--rpc", demo_chain.config.chain.rpc_url, "--broker", f"127.0.0.1:{mosquitto.port}",
                  "--duration", "12", "--devices", "7", "--rate", "30", "--workdir", str(work), "--json"],
                 _env(demo_chain.config, tmp_path))
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out)

    chain = summary["chain"]
    assert chain["readingsSettled"] > 0 and int(chain["billed"]) > 0
    # a tracker arrives 8-20 s into its route: a delivery published in the run is paid, with its escrow released
    assert chain["deliveriesConfirmed"] == summary["simulation"]["byType"].get("delivery", 0)
    assert summary["oracle"]["backlog"] == 0
    assert summary["latencySeconds"]["samples"] > 0 and summary["latencySeconds"]["p50"] < 5
    assert chain["gasPerEvent"] and chain["gasPerEvent"] < 100_000
    # the faulty devices were refused with their reasons, not paid
    assert {"bad_signature", "clock_skew"} <= set(summary["oracle"]["rejectedByReason"])
    assert summary["simulation"]["acknowledged"] == summary["simulation"]["planned"]

    # the money really moved: the shop can withdraw the parcel price, the utility its earnings
    escrow = demo_chain.contract("DeliveryEscrow")
    credit = escrow.functions.withdrawable(demo_chain.address("TestToken"), SHOP).call()
    assert credit == int(chain["released"])
    billing = demo_chain.contract("MeteredBilling")
    agreements = summary["fleet"]["agreements"]
    earned = sum(billing.functions.earningsOf(int(a)).call() for a in agreements.values())
    assert earned == int(chain["billed"])
    assert token.functions.balanceOf(HOUSEHOLD).call() == 0  # every minted TEST went into deposits and escrows

    # nothing left running: the children's pid files are gone and so are they
    assert not list(work.glob("*.pid"))


@pytest.mark.slow  # ~30 s: a whole stack starts; run with --runslow
def test_ctrl_c_stops_everything_it_started(tmp_path) -> None:
    config = make_config(tmp_path / "state", free_port(), free_port())
    env = _env(config, tmp_path) | {"IOTSETTLE_NODE_ANVIL_PORT": str(config.node.anvil_port),
                                    "IOTSETTLE_NODE_MQTT_PORT": str(config.node.mqtt_port),
                                    "IOTSETTLE_MQTT_PORT": str(config.node.mqtt_port)}
    work = tmp_path / "work"
    proc = _demo(["--duration", "120", "--devices", "3", "--workdir", str(work)], env)
    deadline = time.monotonic() + 120
    pids: dict[str, int] = {}
    while time.monotonic() < deadline and proc.poll() is None:
        sim = work / "simulator.pid"
        if sim.exists() and sim.read_text().strip():
            pids = {p.stem: int(p.read_text()) for p in list(work.glob("*.pid")) + list((tmp_path / "state").glob("*.pid"))
                    if p.read_text().strip()}
            break
        time.sleep(0.2)
    assert {"oracle", "simulator", "anvil", "mosquitto"} <= set(pids), (pids, proc.poll())
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    for name, pid in pids.items():
        assert not _pid_alive(pid), f"{name} (pid {pid}) is still running"
