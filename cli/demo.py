"""`iotsettle demo`: the main job on a fresh machine — a live fleet settling payments end to end.

Steps: local stack (anvil + mosquitto, unless --rpc/--broker name running ones) → compile → deploy → a fleet of
meters, trackers, insured vehicles and weather stations registered on chain with funded agreements, escrows and
motor policies → the oracle daemon (`iotsettle oracle run`) → a crop-insurance season of --season seconds over
the weather stations (k of n, one station hostile) with farmers' covers and a micro-loan → the device simulator
(`iotsettle device simulate`, a drought, a few faulty devices) as child processes → a live view → the season
finalized and the loan swept → a summary read back from the chain and the oracle's store.

Ctrl-C (or SIGTERM) stops the children and the services this run started, and leaves no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from collections import Counter

import click
from eth_account import Account
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from iotsettle.cli._common import emit, err_console, progress, state
from iotsettle.cli._params import json_option
from iotsettle.oracle.chain.connection import ANVIL_DEV_KEYS, connect
from iotsettle.oracle.chain.compiler import ensure_compiled
from iotsettle.oracle.config import Config
from iotsettle.oracle.chain.deploy import deploy_all
from iotsettle.oracle.protocol.errors import ConfigError, NodeError
from iotsettle.oracle.chain.node import Anvil, Mosquitto, Service, free_port, mqtt_ready, rpc_ready
from iotsettle.oracle.demo import live as livestats
from iotsettle.oracle.ops.context import open_context
from iotsettle.oracle.demo.provision import (CropSetup, CropTerms, FleetSpec, Parties, ProvisionedFleet, can_open_season,
                                  check_chain_time, close_season, demo_account, keeper_account, motor_summary,
                                  open_season, provision)

DEFAULT_FAULTS = "bad_signature,replayed_seq,counter_rollback,clock_skew,teleport,behaviour_rollback"
DRAIN_TIMEOUT = 30.0
STOP_GRACE = 10.0
WEATHER_STATIONS = 5  # the crop season's n; k = 3, and the last station is hostile
SEASON_WEATHER = "drought"  # what the honest stations observe: the season should pay out
FARMERS = 3
KEEPER_INTERVAL = "1s"  # the demo's season lasts seconds: the keeper looks every second
KEEPER_GRACE = 10.0  # seconds after the season became finalizable before the demo finalizes it itself
KEEPER_KEY_ENV = "IOTSETTLE_DEMO_KEEPER_KEY"
#: seconds the devices publish beyond the season's sale window and length: the simulator's start-up (its events'
#: timestamps start when it has planned them) and opening the season while it runs
SEASON_MARGIN = 12
MIN_SEASON = 5  # the hostile station's cloudburst passes the rain threshold within 4 s


class Interrupted(Exception):
    """SIGTERM arrived: stop like Ctrl-C."""


@dataclass
class Child:
    """A child process in its own session, so a terminal's Ctrl-C reaches only us and we stop it in order."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        if self.running():
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log_path.with_suffix(".pid").unlink(missing_ok=True)
        return self.process.returncode

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])


@dataclass
class Run:
    started_services: list[Service] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)

    def cleanup(self, stop_services: bool) -> None:
        for child in reversed(self.children):
            child.stop()
        if stop_services:
            for service in reversed(self.started_services):
                service.stop()


def _cli_command(*args: str) -> list[str]:
    """`iotsettle ARGS` with this interpreter, whether or not the console script is on PATH."""
    return [sys.executable, "-c", "from iotsettle.cli.main import main; main()", *args]


def _spawn(run: Run, name: str, args: list[str], env: dict[str, str], workdir: Path,
           stdout_path: Path | None = None, module: bool = False) -> Child:
    log_path = workdir / f"{name}.log"
    with open(log_path, "ab") as log_handle:
        stdout = open(stdout_path, "wb") if stdout_path else log_handle  # noqa: SIM115 - closed after Popen
        try:
            command = [sys.executable, *args] if module else _cli_command(*args)
            process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
                                       stderr=log_handle, start_new_session=True)
        finally:
            if stdout_path:
                stdout.close()
    (workdir / f"{name}.pid").write_text(f"{process.pid}\n")
    child = Child(name, process, log_path)
    run.children.append(child)
    return child


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(_signum: int, _frame: object) -> None:
        raise Interrupted()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _parse_broker(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--broker {text!r}: use HOST:PORT, e.g. 127.0.0.1:1883")
    return host, int(port)


def _wait_health(child: Child, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/health"
    while time.monotonic() < deadline:
        if not child.running():
            raise NodeError(f"the oracle daemon exited during start-up ({child.process.returncode}); "
                            f"last log lines: {child.log_tail() or '(empty)'}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 - loopback URL we built
                if response.status == 200:
                    return
        except urllib.error.HTTPError:
            pass  # 503: up but not taking events in yet (subscribing); publishing now could lose events
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise NodeError(f"the oracle daemon did not answer on {url} within {timeout:.0f} s; see {child.log_path}")


def _fmt_tokens(base: int) -> str:
    return f"{base / 10**18:,.4f}".rstrip("0").rstrip(".") + " TEST"


def _live_table(elapsed: float, duration: float, snap: livestats.StoreSnapshot, rate: float,
                payments: tuple[int, int], phase: str, season: str | None = None) -> Group:
    table = Table(show_header=False, title=f"iotsettle demo — {phase} ({elapsed:4.0f} s / {duration:.0f} s)",
                  title_justify="left", min_width=60)
    table.add_row("events received (stored)", f"{snap.received:,}")
    table.add_row("events/s (last second)", f"{rate:,.0f}")
    table.add_row("payments settled on chain", f"{payments[0]:,}")
    if season is not None:
        table.add_row("weather observations recorded", f"{payments[1]:,}")
        table.add_row("crop season", season)
    table.add_row("readings superseded by a newer one", f"{snap.superseded:,}")
    table.add_row("backlog (waiting / in flight)", f"{snap.backlog:,}")
    table.add_row("rejected", f"{snap.rejected_total:,}")
    reasons = {**snap.rejected, **snap.dead}
    rejects = Table("reject reason", "count", min_width=40)
    for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
        rejects.add_row(reason, str(count))
    return Group(table, rejects) if reasons else Group(table)


#: what the live view counts on chain: payments (readings billed, deliveries paid, premiums charged) and observations
LIVE_EVENTS = {"MeteredBilling": ("ReadingSettled",), "DeliveryEscrow": ("DeliveryConfirmed",),
               "MotorInsurance": ("PremiumCharged",), "CropInsurance": ("ObservationRecorded",)}


def _onchain_payments(tally: livestats.LogTally) -> tuple[int, int]:
    """(payments made on chain, weather observations recorded) so far."""
    counts = tally.update()
    return (counts["ReadingSettled"] + counts["DeliveryConfirmed"] + counts["PremiumCharged"],
            counts["ObservationRecorded"])


@click.command()
@click.option("--duration", type=click.FloatRange(min=5), default=60.0, show_default=True,
              help="Seconds the simulated devices publish.")
@click.option("--devices", type=click.IntRange(min=3), default=70, show_default=True,
              help="Fleet size: 5/7 meters, 1/7 trackers (delivery escrows), 1/7 insured vehicles; 5 weather "
                   "stations come on top for the crop season.")
@click.option("--rate", type=click.FloatRange(min=0.1), default=None,
              help="Readings per second across the fleet [default: 3 per device].")
@click.option("--faults", default=DEFAULT_FAULTS, show_default=True,
              help="Fault classes some devices inject (see `iotsettle device simulate --help`); '' for none.")
@click.option("--rpc", "rpc_url", default=None,
              help="Use this running local node (anvil or ganache with anvil's accounts) instead of starting one.")
@click.option("--broker", default=None, help="Use this running MQTT broker (HOST:PORT) instead of starting one.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Where the fleet, the oracle's database and the logs go [default: .state/demo-<time>].")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the fleet and its readings.")
@click.option("--season", "season_length", type=click.IntRange(min=0), default=40, show_default=True,
              help="Seconds the crop-insurance season lasts (real time; it starts a few seconds after set-up and the "
                   "devices publish until it is over); 0 for no season.")
@click.option("--stop/--keep-running", "stop_after", default=False, show_default=True,
              help="Stop the anvil and mosquitto this demo started when it ends (Ctrl-C always stops them).")
@json_option
@click.pass_context
def demo(ctx: click.Context, duration: float, devices: int, rate: float | None, faults: str, rpc_url: str | None,
         broker: str | None, workdir: str | None, seed: int, season_length: int, stop_after: bool,
         as_json: bool) -> None:
    """Settle a live fleet end to end: stack, contracts, devices, oracle, simulator, live view, summary.

    On a fresh machine with nothing configured: starts anvil and mosquitto on loopback, compiles and deploys
    the contracts, registers a fleet (default 50 meters, 10 parcel trackers, 10 vehicles, 5 weather stations)
    with prepaid agreements, escrows and usage-based motor policies funded in the test token, opens a crop
    season over the weather stations (3 of 5 must agree; one station is hostile) where three farmers buy cover —
    one with a micro-loan repaid from the payout — then runs the oracle daemon and the device simulator (a
    drought; a few devices send bad events on purpose) and shows events/s, payments, rejects and backlog live.
    A keeper (`iotsettle keeper run`, its own account) finalizes the season when it is over, pays the covers and
    sweeps the loan while the demo runs. It ends with a summary read back from the chain:
    premiums with the behaviour factors applied, each station's verdict, the payouts, the loan repaid.

    \b
    Examples:
      iotsettle demo                                   # ~2 minutes, leaves anvil + mosquitto running
      iotsettle demo --duration 20 --devices 14 --season 15 --stop
      iotsettle demo --rpc http://127.0.0.1:8545 --broker 127.0.0.1:1883
    """
    config: Config = state(ctx).config
    if 0 < season_length < MIN_SEASON:
        raise click.BadParameter(f"a season lasts at least {MIN_SEASON} s (or 0 for none)", param_hint="--season")
    report = (lambda _m: None) if as_json else progress
    rate = rate or 3.0 * devices
    spec = FleetSpec.scaled(devices, WEATHER_STATIONS if season_length else 0)
    host, port = _parse_broker(broker) if broker else (config.mqtt.host, config.mqtt.port)
    work = Path(workdir) if workdir else config.path(config.node.state_dir) / f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    work.mkdir(parents=True, exist_ok=True)
    run = Run()
    interrupted = finished = False
    try:
        with _sigterm_as_interrupt():
            summary = _demo(config, run, work, spec, rate, duration, faults, rpc_url, (host, port), broker is None, seed,
                            season_length, report, as_json)
        finished = True
    except (KeyboardInterrupt, Interrupted):
        interrupted = True
        err_console.print("\n[yellow]interrupted: stopping the oracle, the simulator and the local stack[/yellow]")
    finally:
        # A failed or interrupted run stops what it started; a finished one may leave the stack up to explore.
        run.cleanup(stop_services=not finished or stop_after)
    if interrupted:
        raise SystemExit(130)
    emit(summary, as_json, _summary_view(summary))
    if not as_json:
        _next_steps(summary, bool(run.started_services) and not stop_after)


def _demo(config: Config, run: Run, work: Path, spec: FleetSpec, rate: float, duration: float, faults: str,
          rpc_url: str | None, broker: tuple[str, int], start_broker: bool, seed: int, season_length: int,
          report: Any, as_json: bool) -> dict[str, Any]:
    host, port = broker
    if rpc_url is None:
        anvil = Anvil(config)
        if anvil.status().running:
            report(f"anvil already running on {anvil.endpoint}")
        elif rpc_ready(anvil.endpoint) is not None:
            # Something else (a node you started, ganache, docker compose) already answers there: use it.
            report(f"using the node already answering on {anvil.endpoint}")
        else:
            report(f"starting anvil on {anvil.endpoint}")
            anvil.start()
            run.started_services.append(anvil)
        rpc_url = anvil.endpoint
    if start_broker:
        mosquitto = Mosquitto(config)
        if mosquitto.status().running:
            report(f"mosquitto already running on {mosquitto.endpoint}")
        elif mqtt_ready(mosquitto.host, mosquitto.port):
            report(f"using the MQTT broker already listening on {mosquitto.host}:{mosquitto.port}")
        else:
            report(f"starting mosquitto on {mosquitto.endpoint}")
            mosquitto.start()
            run.started_services.append(mosquitto)
        host, port = mosquitto.host, mosquitto.port
    elif not mqtt_ready(host, port):
        raise NodeError(f"no MQTT broker answers on {host}:{port}")

    report("compiling contracts")
    ensure_compiled(config)
    chain = connect(config, rpc_url)
    if not chain.is_local:
        raise ConfigError(f"the demo runs on a local development chain (31337 anvil, 1337 ganache), not chain "
                          f"{chain.chain_id}: it spends the well-known development accounts")
    accounts = [Account.from_key(key) for key in ANVIL_DEV_KEYS]
    if chain.w3.eth.get_balance(accounts[1].address) == 0:
        raise ConfigError(f"{chain.rpc_url} does not fund anvil's development accounts; start ganache with "
                          "--wallet.mnemonic 'test test test test test test test test test test test junk'")
    report(f"deploying to chain {chain.chain_id}")
    deploy_all(config, chain, accounts[0], report)
    ops_ctx = open_context(config, chain.rpc_url)

    parties = Parties(operator=accounts[0], utility=accounts[1], insurer=accounts[2], household=accounts[3],
                      shop=accounts[4], farmers=tuple(demo_account(f"farmer-{i}") for i in range(FARMERS)),
                      lender=demo_account("lender"))
    fleet_dir = work / "fleet"
    provisioned = provision(ops_ctx, fleet_dir, spec, parties, seed=seed, progress=report)
    settle_from = provisioned.last_block + 1
    # the coverage slack is the contract's floor (10 s): in a season of 20 s or less, every station that reports
    # inside it covers both ends
    crop_terms = CropTerms()
    if season_length:
        why_not = can_open_season(ops_ctx, provisioned, parties, crop_terms)
        if why_not is not None:
            report(f"no crop season: {why_not}")
            season_length = 0
        else:
            check_chain_time(ops_ctx)

    health_port = free_port()
    db_path = work / "oracle.db"
    env = {**os.environ, "IOTSETTLE_CHAIN_RPC_URL": chain.rpc_url, "IOTSETTLE_MQTT_HOST": host,
           "IOTSETTLE_MQTT_PORT": str(port), "IOTSETTLE_ORACLE_DB_PATH": str(db_path),
           "IOTSETTLE_ORACLE_HEALTH_PORT": str(health_port),
           "IOTSETTLE_ORACLE_CLIENT_ID": f"iotsettle-demo-{os.getpid()}-{int(time.time())}",
           "IOTSETTLE_ORACLE_ORACLE_ID": "demo-oracle",
           "IOTSETTLE_PATHS_DEPLOYMENTS_DIR": str(config.path(config.paths.deployments_dir)),
           "IOTSETTLE_PATHS_ARTIFACTS_DIR": str(config.path(config.paths.artifacts_dir))}
    if config.source != "defaults" and "IOTSETTLE_CONFIG" not in env:
        env["IOTSETTLE_CONFIG"] = config.source
    report(f"starting the oracle daemon (relayer {accounts[0].address}, store {db_path})")
    oracle = _spawn(run, "oracle", ["-m", "iotsettle.cli.oracle", "run"], env, work, module=True)
    _wait_health(oracle, health_port)

    if season_length:
        # The stations must report until the season's end (a station that stops early abstains): the season opens
        # once they publish, a few seconds into the run.
        duration = max(duration, float(season_length + crop_terms.sale_window + SEASON_MARGIN))
    report(f"simulating {spec.total} devices at {rate:g} readings/s for {duration:g} s (faults: {faults or 'none'}"
           f"{', weather: ' + SEASON_WEATHER if season_length else ''})")
    sim_out = work / "simulation.json"
    simulator = _spawn(run, "simulator", ["device", "simulate", "--fleet", str(provisioned.fleet_path), "--rate",
                                          f"{rate:g}", "--duration", f"{duration:g}", "--seed", str(seed), "--faults",
                                          faults, "--weather", SEASON_WEATHER, "--broker-host", host,
                                          "--broker-port", str(port), "--json"],
                       env, work, stdout_path=sim_out)
    # The season runs on the wall clock: opened while the stations already publish, so each covers its start.
    setup: CropSetup | None = None
    keeper: Child | None = None
    keeper_address: str | None = None
    if season_length:
        setup = open_season(ops_ctx, provisioned, parties, season_length=season_length, terms=crop_terms,
                            progress=report)
        # Its own account, not the relayer's: the daemon manages that key's nonces.
        keeper_key = keeper_account(ops_ctx, parties.insurer, crop_terms)
        keeper_address = keeper_key.address
        report(f"starting the keeper ({keeper_address}): it pays the season out and sweeps the loan when due")
        keeper = _spawn(run, "keeper", ["keeper", "run", "--interval", KEEPER_INTERVAL, "--from-key-env",
                                        KEEPER_KEY_ENV],
                        {**env, KEEPER_KEY_ENV: "0x" + keeper_key.key.hex(), "COLUMNS": "200"}, work)

    started = time.monotonic()
    phase = "devices publishing"
    previous, previous_t = 0, started
    drain_deadline: float | None = None
    snap = livestats.StoreSnapshot()
    tally = livestats.LogTally(ops_ctx, settle_from, LIVE_EVENTS)
    with Live(console=err_console, refresh_per_second=2, transient=False) if not as_json else _nullcontext() as live:
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            snap = livestats.read_store(db_path)
            payments = _onchain_payments(tally)
            rate_now = (snap.received + snap.rejected_total - previous) / max(now - previous_t, 1e-6)
            previous, previous_t = snap.received + snap.rejected_total, now
            if live is not None:
                live.update(_live_table(now - started, duration, snap, rate_now, payments, phase,
                                        _season_status(setup)))
            if not oracle.running():
                raise NodeError(f"the oracle daemon stopped unexpectedly ({oracle.process.returncode}); "
                                f"last log lines: {oracle.log_tail()}")
            if simulator.running():
                continue
            if drain_deadline is None:
                phase = "settling the backlog"
                drain_deadline = now + DRAIN_TIMEOUT
            if snap.backlog == 0 or now >= drain_deadline:
                break
    if not as_json:
        err_console.line()  # the live view's last frame ends without a newline; the summary starts on its own line
    simulation = _read_json(sim_out)
    oracle.stop()
    elapsed = time.monotonic() - started

    crop_result: dict[str, Any] | None = None
    if setup is not None:
        report(f"waiting for the keeper to finalize crop season {setup.season_id} and sweep loan {setup.loan_id}")
        closed = close_season(ops_ctx, setup, parties.insurer, keeper=keeper_address, keeper_grace=KEEPER_GRACE)
        if keeper is not None:
            keeper.stop()
            closed["keeperLog"] = str(keeper.log_path)
        for note in closed["fallback"]:
            report(note)
        crop_result = {**setup.as_dict(), **closed}
    onchain = livestats.chain_summary(ops_ctx, settle_from)
    lat = livestats.latencies(db_path)
    rejects = {**snap.rejected, **snap.dead}
    return {
        "chainId": chain.chain_id,
        "rpcUrl": chain.rpc_url,
        "broker": f"{host}:{port}",
        "workdir": str(work),
        "fleet": provisioned.as_dict(),
        "simulation": simulation,
        "oracle": {"received": snap.received, "settledOrFinal": snap.settled, "superseded": snap.superseded,
                   "backlog": snap.backlog, "rejectedByReason": rejects, "log": str(oracle.log_path),
                   "db": str(db_path)},
        "chain": onchain.as_dict(),
        "latencySeconds": {"p50": _round(livestats.percentile(lat, 50)), "p90": _round(livestats.percentile(lat, 90)),
                           "p99": _round(livestats.percentile(lat, 99)), "samples": len(lat)},
        "motor": motor_summary(ops_ctx, provisioned, settle_from),
        "crop": crop_result,
        "elapsedSeconds": round(elapsed, 1),
        "eventsPerSecond": round((snap.received + snap.rejected_total) / max(elapsed, 1e-6), 1),
        "parties": {"operator": parties.operator.address, "utility": parties.utility.address,
                    "insurer": parties.insurer.address, "household": parties.household.address,
                    "shop": parties.shop.address, "farmers": [f.address for f in parties.farmers],
                    "lender": parties.lender.address if parties.lender else None},
        "example": _examples(provisioned),
    }


def _season_status(setup: CropSetup | None) -> str | None:
    if setup is None:
        return None
    now = time.time()
    if now < setup.start:
        return f"season {setup.season_id} starts in {setup.start - now:.0f} s"
    if now < setup.end:
        return f"season {setup.season_id} running, ends in {setup.end - now:.0f} s"
    return f"season {setup.season_id} over; finalized when the devices stop"


@contextmanager
def _nullcontext() -> Iterator[None]:
    yield None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError, ValueError):
        return {}


def _examples(provisioned: ProvisionedFleet) -> dict[str, str]:
    meter = next((n for n in provisioned.agreements if n.startswith("meter")), None)
    vehicle = next((n for n in provisioned.agreements if n.startswith("vehicle")), None)
    tracker = next(iter(provisioned.escrows), None)
    out: dict[str, str] = {}
    if meter:
        out["meterAgreement"] = hex(provisioned.agreements[meter])
    if vehicle:
        out["vehicleAgreement"] = hex(provisioned.agreements[vehicle])
    if tracker:
        out["escrow"] = str(provisioned.escrows[tracker][0])
        out["tracker"] = next(d.address for d in provisioned.fleet.devices if d.name == tracker)
    if provisioned.policies:
        out["policy"] = f"0x{next(iter(provisioned.policies.values())):064x}"
    return out


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n:,} {singular if n == 1 else plural or singular + 's'}"


def _factor(bps: int | None) -> str:
    return "—" if bps is None else f"×{bps / 10_000:.2f}"


def _motor_view(motor: list[dict[str, Any]]) -> Table:
    table = Table("vehicle", "style", "km", "harsh braking", "speeding", "factors applied", "average factor",
                  "premium", "refused", title="motor policies: premium per km × behaviour factor",
                  title_justify="left")
    for row in motor:
        seen = (_factor(row["factorMin"]) if row["factorMin"] == row["factorMax"]
                else f"{_factor(row['factorMin'])} … {_factor(row['factorMax'])}")
        table.add_row(row["vehicle"], row["style"], f"{row['metres'] / 1000:.2f}", str(row["harshBraking"]),
                      str(row["speeding"]), seen, _factor(row["effectiveFactorBps"]), _fmt_tokens(int(row["charged"])),
                      ", ".join(f"{k} {v}" for k, v in sorted(row["rejected"].items())) or "—")
    return table


def _crop_view(crop: dict[str, Any]) -> Group:
    votes = crop["votes"]
    verdict = "pays every cover" if crop["triggered"] else "no payout: the covers expire"
    headline = Text(f"crop season {crop['seasonId']}: a station votes trigger when it measured less than "
                    f"{crop['threshold']} of rain; {votes['trigger']} trigger, {votes['noTrigger']} no-trigger, "
                    f"{votes['abstain']} abstain; {votes['k']} needed → {verdict}")
    stations = Table("station", "verdict", "rain measured")
    for row in crop["stations"]:
        measured = f"{row['measured'] / 100:.2f} mm" if row["verdict"] != "abstain" else "—"
        stations.add_row(row["station"] + ("  (hostile)" if row["hostile"] else ""), row["verdict"], measured)
    covers = Table("policy", "beneficiary", "cover", "premium", "status", "paid", title_justify="left")
    for row in crop["covers"]:
        who = row["beneficiary"] + ("  (loan's payout account)" if row["beneficiary"] == crop["payoutAccount"] else "")
        covers.add_row(str(row["policyId"]), who, _fmt_tokens(int(row["cover"])), _fmt_tokens(int(row["premium"])),
                       row["status"], _fmt_tokens(int(row["paid"])))
    loan = crop["loan"]
    loan_line = (f"micro-loan {loan['loanId']} to {loan['borrower']}: the sweep repaid "
                 f"{_fmt_tokens(int(loan['repaidBySweep']))} to the lender and forwarded "
                 f"{_fmt_tokens(int(loan['forwarded']))} to the farmer; outstanding "
                 f"{_fmt_tokens(int(loan['outstanding']))} of {_fmt_tokens(int(loan['repayment']))} ({loan['status']})")
    loans = Table(loan_line, show_header=True, box=None)
    return Group(headline, stations, covers, loans, Text(_keeper_line(crop)))


def _keeper_line(crop: dict[str, Any]) -> str:
    """Who finalized the season and swept the loan: the keeper, unasked, or the demo as a fallback."""
    keeper = crop.get("keeper")
    if keeper is None:
        return f"finalized by {crop['finalizedBy']}"
    done = (["finalized the season"] if crop["finalizedBy"] == keeper else []) + \
        (["swept the loan"] if keeper in crop["loan"].get("sweptBy", []) else [])
    line = (f"the keeper {keeper} {' and '.join(done)}, with nobody asking" if done
            else f"the keeper {keeper} did nothing in time")
    return "; ".join([line, *crop.get("fallback", [])])


def _summary_view(summary: dict[str, Any]) -> Group:
    tables: list[Any] = [_main_summary(summary)]
    if summary.get("motor"):
        tables.append(_motor_view(summary["motor"]))
    if summary.get("crop"):
        tables.append(_crop_view(summary["crop"]))
    return Group(*tables)


def _main_summary(summary: dict[str, Any]) -> Table:
    chain, oracle, lat, sim = summary["chain"], summary["oracle"], summary["latencySeconds"], summary["simulation"]
    table = Table("", "value", title="demo summary", title_justify="left")
    table.add_row("devices", ", ".join(_count(v, k) for k, v in summary["fleet"]["devices"].items() if v))
    if sim:
        table.add_row("events published (acked by the broker)", f"{sim.get('acknowledged', 0):,} of "
                                                                f"{sim.get('planned', 0):,}")
    table.add_row("events stored by the oracle", f"{oracle['received']:,} ({summary['eventsPerSecond']:,.0f} events/s "
                                                 f"over {summary['elapsedSeconds']:.0f} s)")
    table.add_row("payments made on chain", f"{chain['readingsSettled']:,} meter/vehicle readings billed "
                                            f"({_fmt_tokens(int(chain['billed']))}), "
                                            f"{_count(chain['deliveriesConfirmed'], 'delivery', 'deliveries')} paid "
                                            f"({_fmt_tokens(int(chain['released']))}), "
                                            f"{chain.get('telematicsSettled', 0):,} telematics reports priced "
                                            f"({_fmt_tokens(int(chain.get('premiums', 0)))} premiums)")
    if chain.get("observationsRecorded"):
        table.add_row("weather observations recorded", f"{chain['observationsRecorded']:,}")
    table.add_row("readings superseded (billed by a newer reading)", f"{oracle['superseded']:,}")
    table.add_row("transactions", f"{chain['transactions']:,} carrying {chain['events']:,} events")
    table.add_row("gas per settled event", f"{chain['gasPerEvent']:,}" if chain["gasPerEvent"] else "—")
    if oracle["received"] and chain["gasUsed"]:
        table.add_row("gas per event received (superseded readings cost none)",
                      f"{round(chain['gasUsed'] / oracle['received']):,}")
    if lat["samples"]:
        table.add_row("latency receive → payment mined", f"p50 {lat['p50'] * 1000:.0f} ms, p90 {lat['p90'] * 1000:.0f} ms, "
                                                       f"p99 {lat['p99'] * 1000:.0f} ms ({lat['samples']:,} events)")
    rejects = oracle["rejectedByReason"]
    table.add_row("rejected by the oracle", ", ".join(f"{k} {v}" for k, v in sorted(rejects.items())) or "none")
    on_chain_rejects = dict(Counter(chain["readingsRejected"]) + Counter(chain["deliveriesRejected"])
                            + Counter(chain.get("telematicsRejected", {}))
                            + Counter(chain.get("observationsRejected", {})))
    if on_chain_rejects:
        table.add_row("rejected by the contracts", ", ".join(f"{k} {v}" for k, v in sorted(on_chain_rejects.items())))
    table.add_row("backlog left", str(oracle["backlog"]))
    table.add_row("files", summary["workdir"])
    return table


def _next_steps(summary: dict[str, Any], stack_left_running: bool) -> None:
    ex, parties = summary["example"], summary["parties"]
    lines = ["look further:",
             "  iotsettle agreement list --status active",
             f"  iotsettle agreement status {ex.get('meterAgreement', 'ID')}"]
    if "policy" in ex:
        lines.append(f"  iotsettle policy history {ex['policy']}       # why each premium was what it was")
    if "vehicleAgreement" in ex:
        lines.append(f"  iotsettle audit agreement {ex['vehicleAgreement']}")
    if summary.get("crop"):
        lines += [f"  iotsettle crop season {summary['crop']['seasonId']}",
                  f"  iotsettle loan show {summary['crop']['loanId']}"]
    lines += [f"  iotsettle audit escrow {ex.get('escrow', 'ID')}",
              f"  iotsettle audit device {ex.get('tracker', 'ADDRESS')}",
              f"  iotsettle balances {parties['household']} {parties['shop']} {parties['utility']}",
              "  iotsettle escrow withdraw --dev-account 4        # the shop collects its parcel payments",
              f"  iotsettle agreement withdraw {ex.get('meterAgreement', 'ID')} --dev-account 1"]
    if stack_left_running:
        lines.append("  iotsettle node down                              # stop anvil and mosquitto")
    for line in lines:
        err_console.print(line, soft_wrap=True, highlight=False)
