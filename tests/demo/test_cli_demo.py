"""`iotsettle demo` as a user runs it: a short live run settles payments on chain; Ctrl-C leaves nothing behind."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from iotsettle.oracle.chain.node import free_port
from iotsettle.oracle.ops.context import open_context
from iotsettle.oracle.ops.health import policy_of as health_policy_of
from iotsettle.oracle.ops.health import premium_of
from iotsettle.oracle.ops.motor import policy_of

from tests.kit.stack import REPO, make_config

HOUSEHOLD = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"  # anvil development account 3
SHOP = "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65"  # development account 4
INSURER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"  # development account 2


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
    return subprocess.Popen(
        [sys.executable, "-c", "from iotsettle.cli.main import main; main()", "demo", *args],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _env(config, tmp_path: Path) -> dict[str, str]:
    return {
        "IOTSETTLE_CONFIG": str(REPO / "tests" / "empty.toml"),
        "IOTSETTLE_CHAIN_RPC_URL": config.chain.rpc_url,
        "IOTSETTLE_PATHS_DEPLOYMENTS_DIR": str(config.path(config.paths.deployments_dir)),
        "IOTSETTLE_NODE_STATE_DIR": str(tmp_path / "state"),
        "COLUMNS": "120",
    }


def test_short_demo_settles_payments_on_chain(demo_chain, tmp_path) -> None:
    """The whole demo, its oracle and devices over mutual TLS on the mosquitto it starts (and stops)."""
    token = demo_chain.contract("TestToken")
    work = tmp_path / "work"
    mqtt_port, tls_port = free_port(), free_port()
    env = _env(demo_chain.config, tmp_path) | {
        "IOTSETTLE_NODE_MQTT_PORT": str(mqtt_port),
        "IOTSETTLE_MQTT_PORT": str(mqtt_port),
        "IOTSETTLE_NODE_MQTT_TLS_PORT": str(tls_port),
    }
    proc = _demo(
        [
            "--rpc",
            demo_chain.config.chain.rpc_url,
            "--tls",
            "--stop",
            "--duration",
            "12",
            "--devices",
            "7",
            "--rate",
            "30",
            "--season",
            "8",
            "--workdir",
            str(work),
            "--json",
        ],
        env,
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert f"connected to mqtts://127.0.0.1:{tls_port}" in (work / "oracle.log").read_text()

    chain = summary["chain"]
    assert chain["readingsSettled"] > 0 and int(chain["billed"]) > 0
    # a tracker arrives 8-20 s into its route: a delivery published in the run is paid, with its escrow released
    assert chain["deliveriesConfirmed"] == summary["simulation"]["byType"].get("delivery", 0)
    assert summary["oracle"]["backlog"] == 0
    assert summary["latencySeconds"]["samples"] > 0 and summary["latencySeconds"]["p50"] < 5
    assert chain["gasPerEvent"] and chain["gasPerEvent"] < 100_000
    # the faulty devices were refused with their reasons, not paid
    assert {"bad_signature", "clock_skew"} <= set(summary["oracle"]["rejectedByReason"])
    # the spiking meter, the stalled tracker and the hostile station were accepted, and alerted on
    assert set(summary["oracle"]["alertsByKind"]) == {"meter_spike", "tracker_stalled", "station_outlier"}
    assert summary["simulation"]["acknowledged"] == summary["simulation"]["planned"]

    # the money really moved: the shop took the parcel price with its phone's approval (its key alone was refused),
    # the utility can withdraw its earnings
    escrow = demo_chain.contract("DeliveryEscrow")
    guard = summary["guard"]
    assert "needs the account's device" in guard["refusedWithoutDevice"]
    assert int(guard["withdrawn"]) == int(chain["released"]) > int(guard["threshold"])
    assert escrow.functions.withdrawable(demo_chain.address("TestToken"), SHOP).call() == 0
    assert token.functions.balanceOf(SHOP).call() == int(guard["withdrawn"])
    billing = demo_chain.contract("MeteredBilling")
    agreements = summary["fleet"]["agreements"]
    earned = sum(billing.functions.earningsOf(int(a)).call() for a in agreements.values())
    assert earned == int(chain["billed"])
    assert token.functions.balanceOf(HOUSEHOLD).call() == 0  # every minted TEST went into deposits and escrows

    # the insured vehicle's telematics reports were priced: the premiums are the policy's charges on chain
    assert chain["telematicsSettled"] > 0
    [vehicle] = summary["motor"]
    assert vehicle["metres"] > 0 and int(vehicle["charged"]) > 0
    view = policy_of(open_context(demo_chain.config, demo_chain.config.chain.rpc_url), int(vehicle["policyId"]))
    assert view.charged == int(vehicle["charged"]) == int(chain["premiums"])
    assert view.min_factor_bps <= vehicle["factorMin"] <= vehicle["factorMax"] <= view.max_factor_bps
    rollback = [f for f in summary["simulation"]["faults"] if f["class"] == "behaviour_rollback"]
    assert rollback and all("counter_rollback" in f["replied"] for f in rollback)

    # the wearables: each period over is priced at its best signed tier (a period with no summary at the base rate),
    # and the athlete pays less than the sedentary wearer; the premium is the policy's on chain
    health = {row["profile"]: row for row in summary["health"]}
    assert set(health) == {"sedentary", "active", "athlete"}
    ctx = open_context(demo_chain.config, demo_chain.config.chain.rpc_url)
    for row in health.values():
        view = health_policy_of(ctx, int(row["policyId"]))
        assert len(row["tiers"]) == row["periodsOver"] == view.due_periods > 0
        assert (
            int(row["premium"])
            == view.premium
            == premium_of(view.base_rate, view.discount_bps, view.due_periods, row["tiers"])
        )
        assert None not in row["tiers"][:-1], "every period but maybe the last was summarised and settled"
    assert int(health["athlete"]["premium"]) < int(health["sedentary"]["premium"])

    # the crop season: 4 honest stations saw a drought and outvoted the hostile one; every cover was paid
    crop = summary["crop"]
    assert crop["triggered"] and crop["votes"]["trigger"] >= 3
    [hostile] = [s for s in crop["stations"] if s["hostile"]]
    assert hostile["verdict"] == "no trigger"
    assert all(c["status"] == "paid" and c["paid"] == c["cover"] for c in crop["covers"])
    # the borrower's payout went to the loan's account; the sweep repaid the lender in full, the rest to the farmer
    loan = crop["loan"]
    assert (loan["status"], loan["repaidBySweep"], loan["forwarded"]) == ("repaid", str(110 * 10**18), str(40 * 10**18))
    assert token.functions.balanceOf(crop["lender"]).call() == 110 * 10**18
    assert token.functions.balanceOf(crop["payoutAccount"]).call() == 0
    # the farmer: the 100 TEST loan, less a 12 TEST premium, plus the 40 TEST forwarded
    assert token.functions.balanceOf(crop["borrower"]).call() == 128 * 10**18
    # nobody asked: the keeper child process finalized the season and swept the loan, the demo did not step in
    assert crop["finalizedBy"] == crop["keeper"] and crop["keeper"] in loan["sweptBy"]
    assert not crop.get("fallback")

    # the household's credit report: written where the demo said, its figures the chain's
    report = summary["creditReport"]
    assert report["subject"] == HOUSEHOLD
    page = Path(report["path"]).read_text(encoding="utf-8")
    embedded = json.loads(html.unescape(re.search(r'<pre id="profile-json">(.*?)</pre>', page, re.S).group(1)))
    assert embedded["subject"] == HOUSEHOLD and embedded["range"]["toBlock"] == report["toBlock"]
    assert embedded["figures"]["consumer"]["readings"] == chain["readingsSettled"]
    assert embedded["figures"]["motor"]["reports"] == chain["telematicsSettled"]
    assert 'id="chart-consumer-monthly"' in page and 'id="chart-motor-monthly"' in page

    # nothing left running: the children's pid files are gone and so are they
    assert not list(work.glob("*.pid"))


@pytest.mark.slow  # ~30 s: a whole stack starts; run with --runslow
def test_ctrl_c_stops_everything_it_started(tmp_path) -> None:
    config = make_config(tmp_path / "state", free_port(), free_port())
    env = _env(config, tmp_path) | {
        "IOTSETTLE_NODE_ANVIL_PORT": str(config.node.anvil_port),
        "IOTSETTLE_NODE_MQTT_PORT": str(config.node.mqtt_port),
        "IOTSETTLE_MQTT_PORT": str(config.node.mqtt_port),
    }
    work = tmp_path / "work"
    proc = _demo(["--duration", "120", "--devices", "3", "--workdir", str(work)], env)
    deadline = time.monotonic() + 120
    pids: dict[str, int] = {}
    while time.monotonic() < deadline and proc.poll() is None:
        sim = work / "simulator.pid"
        if sim.exists() and sim.read_text().strip():
            pids = {
                p.stem: int(p.read_text())
                for p in list(work.glob("*.pid")) + list((tmp_path / "state").glob("*.pid"))
                if p.read_text().strip()
            }
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
