"""`iotsettle demo`: the main job on a fresh machine — a live fleet settling payments end to end.

What the demo does is ``iotsettle.oracle.demo.run``; this command takes the options, shows the live figures and
the summary, and turns Ctrl-C (or SIGTERM) into an orderly stop: the children and the services this run started are
stopped, and no process is left behind.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click
from iotsettle.cli._common import emit, err_console, progress, state
from iotsettle.cli._lazy import lazy_import
from iotsettle.cli._params import json_option
from iotsettle.oracle.config import Config
from iotsettle.oracle.demo.defaults import DEFAULT_FAULTS
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from iotsettle.oracle.demo import run as demo_run
else:
    demo_run = lazy_import("iotsettle.oracle.demo.run")


def _fmt_tokens(base: int) -> str:
    return f"{base / 10**18:,.4f}".rstrip("0").rstrip(".") + " TEST"


def _live_table(frame: demo_run.Frame) -> Group:
    snap = frame.store
    table = Table(
        show_header=False,
        title=f"iotsettle demo — {frame.phase} ({frame.elapsed:4.0f} s / {frame.duration:.0f} s)",
        title_justify="left",
        min_width=60,
    )
    table.add_row("events received (stored)", f"{snap.received:,}")
    table.add_row("events/s (last second)", f"{frame.rate:,.0f}")
    table.add_row("payments settled on chain", f"{frame.payments:,}")
    if frame.season is not None:
        table.add_row("weather observations recorded", f"{frame.observations:,}")
        table.add_row("crop season", frame.season)
    table.add_row("readings superseded by a newer one", f"{snap.superseded:,}")
    table.add_row("backlog (waiting / in flight)", f"{snap.backlog:,}")
    table.add_row("rejected", f"{snap.rejected_total:,}")
    reasons = {**snap.rejected, **snap.dead}
    rejects = Table("reject reason", "count", min_width=40)
    for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
        rejects.add_row(reason, str(count))
    return Group(table, rejects) if reasons else Group(table)


def _live_view(as_json: bool) -> demo_run.LiveView:
    """The live table on stderr, redrawn with each frame; nothing for --json (stdout carries only the summary)."""

    @contextmanager
    def view() -> Iterator[Callable[[demo_run.Frame], None]]:
        if as_json:
            yield lambda _frame: None
            return
        with Live(console=err_console, refresh_per_second=2, transient=False) as live:
            yield lambda frame: live.update(_live_table(frame))
        err_console.line()  # the live view's last frame ends without a newline; the summary starts on its own line

    return view


@click.command()
@click.option(
    "--duration",
    type=click.FloatRange(min=5),
    default=60.0,
    show_default=True,
    help="Seconds the simulated devices publish.",
)
@click.option(
    "--devices",
    type=click.IntRange(min=3),
    default=70,
    show_default=True,
    help="Fleet size: 5/7 meters, 1/7 trackers (delivery escrows), 1/7 insured vehicles; 5 weather "
    "stations come on top for the crop season, and 3 wearables with health cover.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Readings per second across the fleet [default: 3 per device].",
)
@click.option(
    "--faults",
    default=DEFAULT_FAULTS,
    show_default=True,
    help="Fault classes some devices inject (see `iotsettle device simulate --help`); '' for none.",
)
@click.option(
    "--rpc",
    "rpc_url",
    default=None,
    help="Use this running local node (anvil or ganache with anvil's accounts) instead of starting one.",
)
@click.option("--broker", default=None, help="Use this running MQTT broker (HOST:PORT) instead of starting one.")
@click.option(
    "--tls",
    is_flag=True,
    help="Start mosquitto with its mutual-TLS port (as `node up --tls`) and connect the oracle and the devices "
    "through it, each with a certificate of the stack's throw-away CA.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the fleet, the oracle's database and the logs go [default: .state/demo-<time>].",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the fleet and its readings.")
@click.option(
    "--season",
    "season_length",
    type=click.IntRange(min=0),
    default=40,
    show_default=True,
    help="Seconds the crop-insurance season lasts (real time; it starts a few seconds after set-up and the "
    "devices publish until it is over); 0 for no season.",
)
@click.option(
    "--stop/--keep-running",
    "stop_after",
    default=False,
    show_default=True,
    help="Stop the anvil and mosquitto this demo started when it ends (Ctrl-C always stops them).",
)
@json_option
@click.pass_context
def demo(
    ctx: click.Context,
    duration: float,
    devices: int,
    rate: float | None,
    faults: str,
    rpc_url: str | None,
    broker: str | None,
    tls: bool,
    workdir: str | None,
    seed: int,
    season_length: int,
    stop_after: bool,
    as_json: bool,
) -> None:
    """Settle a live fleet end to end: stack, contracts, devices, oracle, simulator, live view, summary.

    On a fresh machine with nothing configured: starts anvil and mosquitto on loopback, compiles and deploys
    the contracts, registers a fleet (default 50 meters, 10 parcel trackers, 10 vehicles, 5 weather stations,
    3 wearables) with prepaid agreements, escrows, usage-based motor policies and health policies priced by the
    wearables' activity tiers funded in the test token, opens a crop
    season over the weather stations (3 of 5 must agree; one station is hostile) where three farmers buy cover —
    one with a micro-loan repaid from the payout — then runs the oracle daemon and the device simulator (a
    drought; a few devices send bad events on purpose) and shows events/s, payments, rejects and backlog live.
    A keeper (`iotsettle keeper run`, its own account) finalizes the season when it is over, pays the covers and
    sweeps the loan while the demo runs. It ends with a summary read back from the chain:
    premiums with the behaviour factors applied, each wearer's tiers and premium, each station's verdict, the
    payouts, the loan repaid.

    \b
    Examples:
      iotsettle demo                                   # ~2 minutes, leaves anvil + mosquitto running
      iotsettle demo --duration 20 --devices 14 --season 15 --stop
      iotsettle demo --rpc http://127.0.0.1:8545 --broker 127.0.0.1:1883
      iotsettle demo --tls --stop                      # the oracle and the devices over mutual TLS
    """
    config: Config = state(ctx).config
    if 0 < season_length < demo_run.MIN_SEASON:
        raise click.BadParameter(
            f"a season lasts at least {demo_run.MIN_SEASON} s (or 0 for none)", param_hint="--season"
        )
    report = (lambda _m: None) if as_json else progress
    settings = demo_run.DemoSettings.of(
        config,
        duration=duration,
        devices=devices,
        rate=rate,
        faults=faults,
        rpc_url=rpc_url,
        broker=broker,
        workdir=workdir,
        seed=seed,
        season_length=season_length,
        tls=tls,
    )
    run = demo_run.Run()
    interrupted = finished = False
    try:
        with demo_run.sigterm_as_interrupt():
            summary = demo_run.run_demo(config, run, settings, report, _live_view(as_json))
        finished = True
    except (KeyboardInterrupt, demo_run.Interrupted):
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


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n:,} {singular if n == 1 else plural or singular + 's'}"


def _factor(bps: int | None) -> str:
    return "—" if bps is None else f"×{bps / 10_000:.2f}"


def _motor_view(motor: list[dict[str, Any]]) -> Table:
    table = Table(
        "vehicle",
        "style",
        "km",
        "harsh braking",
        "speeding",
        "factors applied",
        "average factor",
        "premium",
        "refused",
        title="motor policies: premium per km × behaviour factor",
        title_justify="left",
    )
    for row in motor:
        seen = (
            _factor(row["factorMin"])
            if row["factorMin"] == row["factorMax"]
            else f"{_factor(row['factorMin'])} … {_factor(row['factorMax'])}"
        )
        table.add_row(
            row["vehicle"],
            row["style"],
            f"{row['metres'] / 1000:.2f}",
            str(row["harshBraking"]),
            str(row["speeding"]),
            seen,
            _factor(row["effectiveFactorBps"]),
            _fmt_tokens(int(row["charged"])),
            ", ".join(f"{k} {v}" for k, v in sorted(row["rejected"].items())) or "—",
        )
    return table


def _health_view(health: list[dict[str, Any]]) -> Table:
    table = Table(
        "wearable",
        "wearer",
        "tier of each period (— no summary)",
        "premium",
        "without discounts",
        "refused",
        title="health policies: base rate less the discount of each period's signed activity tier",
        title_justify="left",
    )
    for row in health:
        tiers = " ".join("—" if t is None else str(t) for t in row["tiers"])
        table.add_row(
            row["wearable"],
            row["profile"],
            f"{tiers}  ({row['periodsOver']}/{row['periods']} over)",
            _fmt_tokens(int(row["premium"])),
            _fmt_tokens(int(row["withoutDiscounts"])),
            ", ".join(f"{k} {v}" for k, v in sorted(row["rejected"].items())) or "—",
        )
    return table


def _crop_view(crop: dict[str, Any]) -> Group:
    votes = crop["votes"]
    verdict = "pays every cover" if crop["triggered"] else "no payout: the covers expire"
    headline = Text(
        f"crop season {crop['seasonId']}: a station votes trigger when it measured less than "
        f"{crop['threshold']} of rain; {votes['trigger']} trigger, {votes['noTrigger']} no-trigger, "
        f"{votes['abstain']} abstain; {votes['k']} needed → {verdict}"
    )
    stations = Table("station", "verdict", "rain measured")
    for row in crop["stations"]:
        measured = f"{row['measured'] / 100:.2f} mm" if row["verdict"] != "abstain" else "—"
        stations.add_row(row["station"] + ("  (hostile)" if row["hostile"] else ""), row["verdict"], measured)
    covers = Table("policy", "beneficiary", "cover", "premium", "status", "paid", title_justify="left")
    for row in crop["covers"]:
        who = row["beneficiary"] + ("  (loan's payout account)" if row["beneficiary"] == crop["payoutAccount"] else "")
        covers.add_row(
            str(row["policyId"]),
            who,
            _fmt_tokens(int(row["cover"])),
            _fmt_tokens(int(row["premium"])),
            row["status"],
            _fmt_tokens(int(row["paid"])),
        )
    loan = crop["loan"]
    loan_line = (
        f"micro-loan {loan['loanId']} to {loan['borrower']}: the sweep repaid "
        f"{_fmt_tokens(int(loan['repaidBySweep']))} to the lender and forwarded "
        f"{_fmt_tokens(int(loan['forwarded']))} to the farmer; outstanding "
        f"{_fmt_tokens(int(loan['outstanding']))} of {_fmt_tokens(int(loan['repayment']))} ({loan['status']})"
    )
    loans = Table(loan_line, show_header=True, box=None)
    return Group(headline, stations, covers, loans, Text(_keeper_line(crop)))


def _keeper_line(crop: dict[str, Any]) -> str:
    """Who finalized the season and swept the loan: the keeper, unasked, or the demo as a fallback."""
    keeper = crop.get("keeper")
    if keeper is None:
        return f"finalized by {crop['finalizedBy']}"
    done = (["finalized the season"] if crop["finalizedBy"] == keeper else []) + (
        ["swept the loan"] if keeper in crop["loan"].get("sweptBy", []) else []
    )
    line = (
        f"the keeper {keeper} {' and '.join(done)}, with nobody asking"
        if done
        else f"the keeper {keeper} did nothing in time"
    )
    return "; ".join([line, *crop.get("fallback", [])])


def _summary_view(summary: dict[str, Any]) -> Group:
    tables: list[Any] = [_main_summary(summary)]
    if summary.get("motor"):
        tables.append(_motor_view(summary["motor"]))
    if summary.get("health"):
        tables.append(_health_view(summary["health"]))
    if summary.get("crop"):
        tables.append(_crop_view(summary["crop"]))
    return Group(*tables)


def _main_summary(summary: dict[str, Any]) -> Table:
    chain, oracle, lat, sim = summary["chain"], summary["oracle"], summary["latencySeconds"], summary["simulation"]
    table = Table("", "value", title="demo summary", title_justify="left")
    table.add_row("devices", ", ".join(_count(v, k) for k, v in summary["fleet"]["devices"].items() if v))
    if sim:
        table.add_row(
            "events published (acked by the broker)", f"{sim.get('acknowledged', 0):,} of {sim.get('planned', 0):,}"
        )
    table.add_row(
        "events stored by the oracle",
        f"{oracle['received']:,} ({summary['eventsPerSecond']:,.0f} events/s over {summary['elapsedSeconds']:.0f} s)",
    )
    table.add_row(
        "payments made on chain",
        f"{chain['readingsSettled']:,} meter/vehicle readings billed "
        f"({_fmt_tokens(int(chain['billed']))}), "
        f"{_count(chain['deliveriesConfirmed'], 'delivery', 'deliveries')} paid "
        f"({_fmt_tokens(int(chain['released']))}), "
        f"{chain.get('telematicsSettled', 0):,} telematics reports priced "
        f"({_fmt_tokens(int(chain.get('premiums', 0)))} premiums)",
    )
    if chain.get("observationsRecorded"):
        table.add_row("weather observations recorded", f"{chain['observationsRecorded']:,}")
    table.add_row("readings superseded (billed by a newer reading)", f"{oracle['superseded']:,}")
    table.add_row("transactions", f"{chain['transactions']:,} carrying {chain['events']:,} events")
    table.add_row("gas per settled event", f"{chain['gasPerEvent']:,}" if chain["gasPerEvent"] else "—")
    if oracle["received"] and chain["gasUsed"]:
        table.add_row(
            "gas per event received (superseded readings cost none)",
            f"{round(chain['gasUsed'] / oracle['received']):,}",
        )
    if lat["samples"]:
        table.add_row(
            "latency receive → payment mined",
            f"p50 {lat['p50'] * 1000:.0f} ms, p90 {lat['p90'] * 1000:.0f} ms, "
            f"p99 {lat['p99'] * 1000:.0f} ms ({lat['samples']:,} events)",
        )
    rejects = oracle["rejectedByReason"]
    table.add_row("rejected by the oracle", ", ".join(f"{k} {v}" for k, v in sorted(rejects.items())) or "none")
    on_chain_rejects = dict(
        Counter(chain["readingsRejected"])
        + Counter(chain["deliveriesRejected"])
        + Counter(chain.get("telematicsRejected", {}))
        + Counter(chain.get("observationsRejected", {}))
    )
    if on_chain_rejects:
        table.add_row("rejected by the contracts", ", ".join(f"{k} {v}" for k, v in sorted(on_chain_rejects.items())))
    alerts = oracle.get("alertsByKind") or {}
    table.add_row(
        "early alerts (accepted, unusual for the device)",
        ", ".join(f"{k} {v}" for k, v in sorted(alerts.items())) or "none",
    )
    guard = summary.get("guard")
    if guard:
        table.add_row(
            "device guard",
            f"the shop withdrew {_fmt_tokens(int(guard['withdrawn']))} with its phone's approval; its key alone was "
            f"refused above {_fmt_tokens(int(guard['threshold']))}",
        )
    table.add_row("backlog left", str(oracle["backlog"]))
    if summary.get("creditReport"):
        table.add_row("credit report", f"{summary['creditReport']['path']} (the household's, open it in a browser)")
    table.add_row("files", summary["workdir"])
    return table


def _next_steps(summary: dict[str, Any], stack_left_running: bool) -> None:
    ex, parties = summary["example"], summary["parties"]
    lines = [
        "look further:",
        "  iotsettle agreement list --status active",
        f"  iotsettle agreement status {ex.get('meterAgreement', 'ID')}",
    ]
    if "policy" in ex:
        lines.append(f"  iotsettle policy history {ex['policy']}       # why each premium was what it was")
    if "vehicleAgreement" in ex:
        lines.append(f"  iotsettle audit agreement {ex['vehicleAgreement']}")
    if summary.get("crop"):
        lines += [
            f"  iotsettle crop season {summary['crop']['seasonId']}",
            f"  iotsettle loan show {summary['crop']['loanId']}",
        ]
    lines += [
        f"  iotsettle audit escrow {ex.get('escrow', 'ID')}",
        f"  iotsettle audit device {ex.get('tracker', 'ADDRESS')}",
        f"  iotsettle balances {parties['household']} {parties['shop']} {parties['utility']}",
        f"  iotsettle credit report {parties['household']} --out report.html   # the household's credit history",
        "  iotsettle guard show --dev-account 4             # the shop's phone approves its withdrawals",
        f"  iotsettle agreement withdraw {ex.get('meterAgreement', 'ID')} --dev-account 1",
        f"  IOTSETTLE_ORACLE_DB_PATH={summary['oracle']['db']} iotsettle oracle alerts   # the early alerts",
    ]
    if stack_left_running:
        lines.append("  iotsettle node down                              # stop anvil and mosquitto")
    for line in lines:
        err_console.print(line, soft_wrap=True, highlight=False)
