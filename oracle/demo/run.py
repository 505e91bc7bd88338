"""The demo: on a fresh machine, a live fleet settling payments end to end.

Steps: local stack (anvil + mosquitto, unless running ones are named) → compile → deploy → a fleet of meters,
trackers, insured vehicles and weather stations registered on chain with funded agreements, escrows and motor
policies (``iotsettle.oracle.demo.provision``) → the oracle daemon (`iotsettle oracle run`) → a crop-insurance
season over the weather stations (k of n, one station hostile) with farmers' covers and a micro-loan → the device
simulator (`iotsettle device simulate`, a drought, a few faulty devices) as child processes → a frame of live figures
each second (``iotsettle.oracle.demo.live``) for the caller to show → the season finalized and the loan swept → the
shop's parcel payments withdrawn with its phone's approval (``iotsettle.oracle.demo.guard``) → a summary read back
from the chain and the oracle's store.

Every child runs in its own session and is recorded in a :class:`Run`, whose ``cleanup`` stops the children and the
services this run started: an interrupted demo (Ctrl-C, or SIGTERM through :func:`sigterm_as_interrupt`) leaves no
process behind.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eth_account import Account
from iotsettle.oracle.chain.compiler import ensure_compiled
from iotsettle.oracle.chain.connection import ANVIL_DEV_KEYS, connect, load_relayer
from iotsettle.oracle.chain.deploy import deploy_all
from iotsettle.oracle.chain.node import (
    Anvil,
    Mosquitto,
    Service,
    free_port,
    mqtt_ready,
    port_open,
    rpc_ready,
    with_tls_port,
)
from iotsettle.oracle.config import Config
from iotsettle.oracle.credit import document as credit_document
from iotsettle.oracle.credit import report as credit_report
from iotsettle.oracle.demo import live as livestats
from iotsettle.oracle.demo import pace as node_pace
from iotsettle.oracle.demo.guard import guarded_withdrawal
from iotsettle.oracle.demo.provision import (
    CropSetup,
    CropTerms,
    FleetSpec,
    HealthTerms,
    Parties,
    ProvisionedFleet,
    can_open_season,
    check_chain_time,
    close_season,
    demo_account,
    keeper_account,
    open_season,
    provision,
)
from iotsettle.oracle.ops.context import OpsContext, open_context
from iotsettle.oracle.protocol import settled
from iotsettle.oracle.protocol.errors import ConfigError, NodeError

DRAIN_TIMEOUT = 30.0  # seconds at anvil's pace (``iotsettle.oracle.demo.pace``), like the other waits here
STOP_GRACE = 10.0
WEATHER_STATIONS = 5  # the crop season's n; k = 3, and the last station is hostile
WEARABLES = 3  # one wearer of each activity profile: sedentary, active, athlete
HEALTH_PERIODS = 7  # a health policy's periods: the days of a week, squeezed into the first 70 % of the run
SEASON_WEATHER = "drought"  # what the honest stations observe: the season should pay out
FARMERS = 3
KEEPER_INTERVAL = "1s"  # the demo's season lasts seconds: the keeper looks every second
KEEPER_GRACE = 10.0  # seconds after the season became finalizable before the demo finalizes it itself
KEEPER_KEY_ENV = "IOTSETTLE_DEMO_KEEPER_KEY"
#: seconds the devices publish beyond the season's end: the simulator's start-up (its events' timestamps start when
#: it has planned them) and each station's first observation after the end, which casts its vote
SEASON_MARGIN = 12
MIN_SEASON = 5  # the hostile station's cloudburst passes the rain threshold within 4 s
#: the early alerts' thresholds scaled from hours to the demo's minute (docs/ALERTS.md), unless set in the
#: environment: the faulty meter and tracker (meter_spike, tracker_stalled) and the hostile station (its cloudburst
#: in the honest stations' drought: station_outlier) raise theirs, the honest devices none
DEMO_ALERTS = {
    "IOTSETTLE_ALERTS_METER_WARMUP": "4",
    "IOTSETTLE_ALERTS_STATIONARY": "5",
    "IOTSETTLE_ALERTS_STATION_WINDOW": "10",
    "IOTSETTLE_ALERTS_STATION_FLOOR": "12",
}


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


def _spawn(
    run: Run,
    name: str,
    args: list[str],
    env: dict[str, str],
    workdir: Path,
    stdout_path: Path | None = None,
    module: bool = False,
) -> Child:
    log_path = workdir / f"{name}.log"
    with open(log_path, "ab") as log_handle:
        stdout = open(stdout_path, "wb") if stdout_path else log_handle  # noqa: SIM115 - closed after Popen
        try:
            command = [sys.executable, *args] if module else _cli_command(*args)
            process = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=log_handle, start_new_session=True
            )
        finally:
            if stdout_path:
                stdout.close()
    (workdir / f"{name}.pid").write_text(f"{process.pid}\n")
    child = Child(name, process, log_path)
    run.children.append(child)
    return child


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
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
            raise NodeError(
                f"the oracle daemon exited during start-up ({child.process.returncode}); "
                f"last log lines: {child.log_tail() or '(empty)'}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError:
            pass  # 503: up but not taking events in yet (subscribing); publishing now could lose events
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise NodeError(f"the oracle daemon did not answer on {url} within {timeout:.0f} s; see {child.log_path}")


#: what the live view counts on chain: payments (readings billed, deliveries paid, premiums charged) and observations
LIVE_EVENTS: dict[str, tuple[str, ...]] = {
    "MeteredBilling": (settled.EVENT,),
    "DeliveryEscrow": ("DeliveryConfirmed",),
    "MotorInsurance": ("PremiumCharged",),
    "CropInsurance": ("ObservationRecorded",),
    "HealthInsurance": ("SummarySettled",),
}


def _onchain_payments(tally: livestats.LogTally) -> tuple[int, int]:
    """(payments made on chain, weather observations recorded) so far."""
    counts = tally.update()
    return (
        counts[settled.EVENT] + counts["DeliveryConfirmed"] + counts["PremiumCharged"] + counts["SummarySettled"],
        counts["ObservationRecorded"],
    )


@dataclass(frozen=True)
class Frame:
    """The live figures, once a second while the devices publish and the backlog settles."""

    elapsed: float  # seconds since the devices started
    duration: float  # seconds they publish
    store: livestats.StoreSnapshot
    rate: float  # events received per second over the last second
    payments: int  # payments made on chain so far
    observations: int  # weather observations recorded on chain so far
    phase: str
    season: str | None  # the crop season's state; None without one


#: How the caller shows the frames: a context entered for the live phase, giving the function that takes each frame.
LiveView = Callable[[], AbstractContextManager[Callable[[Frame], None]]]


def _no_view() -> AbstractContextManager[Callable[[Frame], None]]:
    return nullcontext(lambda _frame: None)


@dataclass(frozen=True)
class DemoSettings:
    """What one demo run does."""

    work: Path  # the fleet, the oracle's database and the logs
    spec: FleetSpec
    rate: float  # readings per second across the fleet
    duration: float  # seconds the devices publish (a crop season lengthens it to cover the season)
    faults: str  # fault classes some devices inject, comma-separated
    rpc_url: str | None  # a running local node; None: the configured anvil, started unless it runs
    broker: tuple[str, int]
    start_broker: bool  # no broker named: the configured mosquitto, started unless it runs
    seed: int
    season_length: int  # seconds the crop season lasts; 0 for none
    tls: bool = False  # the oracle and the simulator over mutual TLS, on the started mosquitto's TLS port

    @classmethod
    def of(
        cls,
        config: Config,
        *,
        duration: float,
        devices: int,
        rate: float | None,
        faults: str,
        rpc_url: str | None,
        broker: str | None,
        workdir: str | None,
        seed: int,
        season_length: int,
        tls: bool = False,
    ) -> DemoSettings:
        """Settings from the command's options: 3 readings per second per device unless ``rate`` says otherwise,
        weather stations only for a season, the configured broker unless ``broker`` (HOST:PORT) names one, and a
        new folder under the node's state directory unless ``workdir`` names one. ``tls`` needs the demo's own
        mosquitto (its CA issues the clients' certificates), so not with ``broker``."""
        if tls and broker:
            raise ConfigError("--tls uses the mosquitto the demo starts (its CA signs the certificates): drop --broker")
        rate = rate or 3.0 * devices
        spec = FleetSpec.scaled(devices, WEATHER_STATIONS if season_length else 0, WEARABLES)
        host, port = _parse_broker(broker) if broker else (config.mqtt.host, config.mqtt.port)
        stamp = f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}"
        work = Path(workdir) if workdir else config.path(config.node.state_dir) / stamp
        return cls(work, spec, rate, duration, faults, rpc_url, (host, port), broker is None, seed, season_length, tls)


def run_demo(
    config: Config, run: Run, settings: DemoSettings, report: Callable[[str], None], live: LiveView = _no_view
) -> dict[str, Any]:
    """Run the demo, recording every process it starts in ``run`` (the caller cleans up), and return its summary.

    ``report`` takes a line per step; ``live`` shows the frames while the devices publish."""
    work, spec, rate, faults, seed = settings.work, settings.spec, settings.rate, settings.faults, settings.seed
    rpc_url, duration, season_length = settings.rpc_url, settings.duration, settings.season_length
    host, port = settings.broker
    work.mkdir(parents=True, exist_ok=True)
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
    mosquitto: Mosquitto | None = None
    if settings.start_broker:
        mosquitto = Mosquitto(with_tls_port(config) if settings.tls else config)
        if (
            settings.tls
            and mqtt_ready(mosquitto.host, mosquitto.port)
            and not port_open(mosquitto.host, mosquitto.tls_port)
        ):
            raise NodeError(
                f"the broker on {mosquitto.host}:{mosquitto.port} has no TLS port {mosquitto.tls_port}: stop it "
                "(`iotsettle node down`) so that the demo starts mosquitto with one"
            )
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
        raise ConfigError(
            f"the demo runs on a local development chain (31337 anvil, 1337 ganache), not chain "
            f"{chain.chain_id}: it spends the well-known development accounts"
        )
    accounts = [Account.from_key(key) for key in ANVIL_DEV_KEYS]
    if chain.w3.eth.get_balance(accounts[1].address) == 0:
        raise ConfigError(
            f"{chain.rpc_url} does not fund anvil's development accounts; start ganache with "
            "--wallet.mnemonic 'test test test test test test test test test test test junk'"
        )
    pace = node_pace.measure(chain, accounts[0])
    report(
        f"the node ({pace.client.split('/')[0]}) mines a transfer in {pace.tx_seconds * 1000:.0f} ms: "
        f"the demo's waits are ×{pace.factor:.1f} anvil's"
    )
    report(f"deploying to chain {chain.chain_id}")
    deploy_all(config, chain, accounts[0], report)
    ops_ctx = open_context(config, chain.rpc_url)

    parties = Parties(
        operator=accounts[0],
        utility=accounts[1],
        insurer=accounts[2],
        household=accounts[3],
        shop=accounts[4],
        farmers=tuple(demo_account(f"farmer-{i}") for i in range(FARMERS)),
        lender=demo_account("lender"),
    )
    fleet_dir = work / "fleet"
    health = HealthTerms(period_length=max(2, int(duration * 0.7) // HEALTH_PERIODS), periods=HEALTH_PERIODS)
    provisioned = provision(ops_ctx, fleet_dir, spec, parties, health=health, seed=seed, progress=report)
    settle_from = provisioned.last_block + 1
    # the coverage slack is the contract's floor (10 s): in a season of 20 s or less, every station that reports
    # inside it covers both ends
    crop_terms = CropTerms()
    crop_terms = dataclasses.replace(crop_terms, finalize_delay=math.ceil(pace.seconds(crop_terms.finalize_delay)))
    if season_length:
        why_not = can_open_season(ops_ctx, provisioned, parties, crop_terms)
        if why_not is not None:
            report(f"no crop season: {why_not}")
            season_length = 0
        else:
            check_chain_time(ops_ctx)

    health_port = free_port()
    db_path = work / "oracle.db"
    env = {
        **os.environ,
        "IOTSETTLE_CHAIN_RPC_URL": chain.rpc_url,
        "IOTSETTLE_MQTT_HOST": host,
        "IOTSETTLE_MQTT_PORT": str(port),
        "IOTSETTLE_ORACLE_DB_PATH": str(db_path),
        "IOTSETTLE_ORACLE_HEALTH_PORT": str(health_port),
        "IOTSETTLE_ORACLE_CLIENT_ID": f"iotsettle-demo-{os.getpid()}-{int(time.time())}",
        "IOTSETTLE_ORACLE_ORACLE_ID": "demo-oracle",
        # the demo lasts a minute: readings settle at each batch cut so that payments show while it runs
        "IOTSETTLE_ORACLE_SETTLEMENT_WINDOW": "0",
        "IOTSETTLE_PATHS_DEPLOYMENTS_DIR": str(config.path(config.paths.deployments_dir)),
        "IOTSETTLE_PATHS_ARTIFACTS_DIR": str(config.path(config.paths.artifacts_dir)),
    }
    broker_args = ["--broker-host", host, "--broker-port", str(port)]
    if settings.tls and mosquitto is not None:
        # each client presents a certificate of the stack's CA; the daemon's comes through [mqtt], the simulator's
        # through its options
        ca, oracle_cert, sim_cert = mosquitto.ca, mosquitto.ca.client("oracle"), mosquitto.ca.client("simulator")
        tls_uri = mosquitto.tls_endpoint
        report(f"the oracle and the devices connect over mutual TLS to {tls_uri} (CA {ca.ca_file})")
        env.update(
            IOTSETTLE_MQTT_BROKERS=tls_uri,
            IOTSETTLE_MQTT_TLS_CA_FILE=str(ca.ca_file),
            IOTSETTLE_MQTT_TLS_CERT_FILE=str(oracle_cert.cert_file),
            IOTSETTLE_MQTT_TLS_KEY_FILE=str(oracle_cert.key_file),
        )
        broker_args = [
            "--broker",
            tls_uri,
            "--tls-cert-file",
            str(sim_cert.cert_file),
            "--tls-key-file",
            str(sim_cert.key_file),
        ]
    if config.source != "defaults" and "IOTSETTLE_CONFIG" not in env:
        env["IOTSETTLE_CONFIG"] = config.source
    daemon_env = {name: value for name, value in {**DEMO_ALERTS, **pace.daemon_env()}.items() if name not in os.environ}
    report(f"starting the oracle daemon (relayer {load_relayer(config, chain).address}, store {db_path})")
    oracle = _spawn(run, "oracle", ["-m", "iotsettle.cli.oracle", "run"], {**env, **daemon_env}, work, module=True)
    _wait_health(oracle, health_port)

    # The season runs on the wall clock. It opens before the devices publish, so that selling its cover does not
    # wait behind their settlements; its sale window outlasts the simulator's start-up, so each station covers its
    # start, and the stations report until after its end (a station that stops early abstains).
    setup: CropSetup | None = None
    keeper: Child | None = None
    keeper_address: str | None = None
    if season_length:
        setup = open_season(
            ops_ctx, provisioned, parties, season_length=season_length, terms=crop_terms, progress=report
        )
        duration = max(duration, math.ceil(setup.end - time.time()) + SEASON_MARGIN)
        # Its own account, not the relayer's: the daemon manages that key's nonces.
        keeper_key = keeper_account(ops_ctx, parties.insurer, crop_terms)
        keeper_address = keeper_key.address
        report(f"starting the keeper ({keeper_address}): it pays the season out and sweeps the loan when due")
        keeper = _spawn(
            run,
            "keeper",
            ["keeper", "run", "--interval", KEEPER_INTERVAL, "--from-key-env", KEEPER_KEY_ENV],
            {**env, KEEPER_KEY_ENV: "0x" + keeper_key.key.hex(), "COLUMNS": "200"},
            work,
        )
    report(
        f"simulating {spec.total} devices at {rate:g} readings/s for {duration:g} s (faults: {faults or 'none'}"
        f"{', weather: ' + SEASON_WEATHER if season_length else ''})"
    )
    sim_out = work / "simulation.json"
    simulator = _spawn(
        run,
        "simulator",
        [
            "device",
            "simulate",
            "--fleet",
            str(provisioned.fleet_path),
            "--rate",
            f"{rate:g}",
            "--duration",
            f"{duration:g}",
            "--seed",
            str(seed),
            "--faults",
            faults,
            "--weather",
            SEASON_WEATHER,
            *broker_args,
            "--json",
        ],
        env,
        work,
        stdout_path=sim_out,
    )

    started = time.monotonic()
    phase = "devices publishing"
    previous, previous_t = 0, started
    drain_deadline: float | None = None
    snap = livestats.StoreSnapshot()
    tally = livestats.LogTally(ops_ctx, settle_from, LIVE_EVENTS)
    with live() as show:
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            snap = livestats.read_store(db_path)
            payments, observations = _onchain_payments(tally)
            rate_now = (snap.received + snap.rejected_total - previous) / max(now - previous_t, 1e-6)
            previous, previous_t = snap.received + snap.rejected_total, now
            show(Frame(now - started, duration, snap, rate_now, payments, observations, phase, _season_status(setup)))
            if not oracle.running():
                raise NodeError(
                    f"the oracle daemon stopped unexpectedly ({oracle.process.returncode}); "
                    f"last log lines: {oracle.log_tail()}"
                )
            if simulator.running():
                continue
            if drain_deadline is None:
                phase = "settling the backlog"
                drain_deadline = now + pace.seconds(DRAIN_TIMEOUT)
            if snap.backlog == 0 or now >= drain_deadline:
                break
    simulation = _read_json(sim_out)
    oracle.stop()
    elapsed = time.monotonic() - started

    crop_result: dict[str, Any] | None = None
    if setup is not None:
        report(f"waiting for the keeper to finalize crop season {setup.season_id} and sweep loan {setup.loan_id}")
        closed = close_season(
            ops_ctx, setup, parties.insurer, keeper=keeper_address, keeper_grace=pace.seconds(KEEPER_GRACE)
        )
        if keeper is not None:
            keeper.stop()
            closed["keeperLog"] = str(keeper.log_path)
        for note in closed["fallback"]:
            report(note)
        crop_result = {**setup.as_dict(), **closed}
    onchain = livestats.chain_summary(ops_ctx, settle_from)
    credit = _credit_report(ops_ctx, parties.household.address, work / "credit-report.html")
    report(
        f"wrote the credit report of the household ({parties.household.address}, {credit['logs']:,} logs in "
        f"{credit['seconds']:.1f} s): {credit['path']}"
    )
    guarded = guarded_withdrawal(ops_ctx, parties.shop, report)
    lat = livestats.latencies(db_path)
    rejects = {**snap.rejected, **snap.dead}
    return {
        "chainId": chain.chain_id,
        "rpcUrl": chain.rpc_url,
        "broker": f"{host}:{port}",
        "workdir": str(work),
        "fleet": provisioned.as_dict(),
        "simulation": simulation,
        "oracle": {
            "received": snap.received,
            "settledOrFinal": snap.settled,
            "superseded": snap.superseded,
            "backlog": snap.backlog,
            "rejectedByReason": rejects,
            "alertsByKind": snap.alerts,
            "log": str(oracle.log_path),
            "db": str(db_path),
        },
        "chain": onchain.as_dict(),
        "latencySeconds": {
            "p50": _round(livestats.percentile(lat, 50)),
            "p90": _round(livestats.percentile(lat, 90)),
            "p99": _round(livestats.percentile(lat, 99)),
            "samples": len(lat),
        },
        "motor": livestats.motor_summary(ops_ctx, provisioned, settle_from),
        "health": livestats.health_summary(ops_ctx, provisioned, settle_from),
        "crop": crop_result,
        "creditReport": credit,
        "guard": guarded,
        "elapsedSeconds": round(elapsed, 1),
        "eventsPerSecond": round((snap.received + snap.rejected_total) / max(elapsed, 1e-6), 1),
        "parties": {
            "operator": parties.operator.address,
            "utility": parties.utility.address,
            "insurer": parties.insurer.address,
            "household": parties.household.address,
            "shop": parties.shop.address,
            "farmers": [f.address for f in parties.farmers],
            "lender": parties.lender.address if parties.lender else None,
        },
        "example": _examples(provisioned),
    }


def _credit_report(ops_ctx: OpsContext, subject: str, path: Path) -> dict[str, Any]:
    """The credit report page of ``subject`` (``iotsettle credit report``), written to ``path``."""
    run = credit_document.build_from_deployment(ops_ctx, subject, None)
    page = credit_report.render(run.document, money=credit_report.money_format(ops_ctx), rpc_url=ops_ctx.chain.rpc_url)
    path.write_text(page, encoding="utf-8")
    return {
        "subject": subject,
        "path": str(path),
        "toBlock": run.document["range"]["toBlock"],
        "logs": run.stats.logs,
        "seconds": round(run.seconds, 2),
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
    if provisioned.health:
        out["healthPolicy"] = f"0x{next(iter(provisioned.health.values())):064x}"
    return out
