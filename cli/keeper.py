"""`iotsettle keeper run`: finalize and pay crop seasons at season end and sweep loan payout accounts, unasked."""

from __future__ import annotations

import json
import os
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
from iotsettle.cli._common import EXIT_INTERRUPTED, IotSettleGroup, err_console, stop_on_signals
from iotsettle.cli._lazy import lazy_import
from iotsettle.cli._params import DURATION, CommandContext, with_context
from iotsettle.oracle.protocol.errors import IotSettleError

if TYPE_CHECKING:
    import requests
    from iotsettle.oracle.ops import keeper as keeper_ops
    from web3 import exceptions as web3_exceptions
else:
    keeper_ops = lazy_import("iotsettle.oracle.ops.keeper")
    requests = lazy_import("requests")
    web3_exceptions = lazy_import("web3.exceptions")


@click.group(cls=IotSettleGroup)
def keeper() -> None:
    """Run the actions anyone may trigger: crop payouts at season end, loan sweeps.

    \b
    The keeper needs only an account with ETH for gas: finalize, payOut and sweep are open to everyone and the
    money always goes to the beneficiaries, lenders and borrowers, never to the keeper.
    """


def _save(path: Path, state: dict[str, object]) -> None:
    """Write the state atomically: a keeper stopped mid-write must not leave half a file for the next run."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(partial, path)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S")


def _print_pass(summary: keeper_ops.PassSummary, as_json: bool, always: bool) -> None:
    if as_json:
        if summary.actions or always:
            click.echo(json.dumps(summary.as_dict(), sort_keys=True, default=str), nl=True)
        return
    for action in summary.actions:
        line = f"{_stamp()} {action.text}"
        if action.ok:
            click.echo(line)
        else:
            err_console.print(f"[yellow]{line}[/yellow]")
    if always and not summary.actions:
        click.echo(
            f"{_stamp()} nothing to do ({summary.seasons_watched} seasons and {summary.loans_watched} loans "
            f"watched, blocks {summary.from_block}..{summary.to_block})"
        )


@keeper.command("run")
@click.option(
    "--interval",
    type=DURATION,
    default="10s",
    show_default=True,
    help="Time between passes (at least 1 s: 5s, 90s, 5m…).",
)
@click.option("--once", is_flag=True, help="One pass, then exit (for cron): exit status 1 if an action failed.")
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSON file keeping the last block scanned and the seasons and loans watched between runs "
    "(with --once: each cron run reads only the new blocks).",
)
@with_context(sender=True)
def run(cmd: CommandContext, interval: int, once: bool, state_path: Path | None) -> None:
    """Finalize and pay out crop seasons when due, and sweep loan payout accounts that received something.

    Each pass reads the new seasons and loans from the chain logs, then acts only where a view shows work to do
    (no transaction on an idle pass); an action that reverts (someone else was first) is reported and the pass
    goes on. SIGTERM stops it with exit status 0, Ctrl-C with 130.

    Run it with an account of its own (--from-key-env, --dev-account, or a keystore in a config file of its own),
    NOT the oracle daemon's relayer key: the daemon manages that key's nonces and the two would collide. Any
    account with ETH for gas will do: the keeper receives no money and needs no role.

    \b
    Examples:
      iotsettle keeper run --from-key-env KEEPER_KEY               # every 10 s until SIGTERM / Ctrl-C
      iotsettle keeper run --once --json --state keeper.json --from-key-env KEEPER_KEY   # cron
    """
    if cmd.default_sender:
        err_console.print(
            "[yellow]sending from the configured [chain] key: if the oracle daemon relays with the "
            "same key, give the keeper its own with --from-key-env[/yellow]"
        )
    if interval < 1:
        raise click.BadParameter("the interval must be at least 1 s", param_hint="--interval")
    worker = keeper_ops.Keeper(cmd.ops)
    if state_path is not None and state_path.exists():
        try:
            worker.restore(json.loads(state_path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise click.ClickException(f"cannot read the keeper state {state_path}: {exc}") from None

    def run_pass() -> keeper_ops.PassSummary:
        summary = worker.run_pass()
        if state_path is not None:
            _save(state_path, worker.state())
        return summary

    if once:
        summary = run_pass()
        if cmd.as_json:
            cmd.emit(summary.as_dict())
        else:
            _print_pass(summary, False, always=True)
        if summary.failures:
            cmd.click.exit(1)
        return
    with stop_on_signals() as stop:
        if not cmd.as_json:
            err_console.print(
                f"[dim]keeper {cmd.ops.require_sender().address} on chain {cmd.ops.chain.chain_id}, "
                f"a pass every {interval} s; SIGTERM or Ctrl-C stops it[/dim]"
            )
        while not stop.event.is_set():
            try:
                _print_pass(run_pass(), cmd.as_json, always=False)
            except (IotSettleError, requests.RequestException, web3_exceptions.Web3Exception, OSError) as exc:
                # The node may be restarting: report and try again next pass.
                err_console.print(f"[yellow]{_stamp()} pass failed: {exc}[/yellow]")
            stop.event.wait(interval)
    if stop.signal == signal.SIGINT:
        cmd.click.exit(EXIT_INTERRUPTED)
