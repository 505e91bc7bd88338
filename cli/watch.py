"""`iotsettle watch`: follow the optimistic contracts' batch commitments and challenge a bad batch inside its window."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
from iotsettle.cli._common import EXIT_INTERRUPTED, err_console, stop_on_signals
from iotsettle.cli._lazy import lazy_import
from iotsettle.cli._params import DURATION, CommandContext, with_context

if TYPE_CHECKING:
    from iotsettle.oracle.ops import watcher as watcher_ops
else:
    watcher_ops = lazy_import("iotsettle.oracle.ops.watcher")


def _print(summary: watcher_ops.WatchPass, as_json: bool, always: bool) -> None:
    if as_json:
        if summary.verdicts or always:
            click.echo(json.dumps(summary.as_dict(), sort_keys=True))
        return
    stamp = datetime.now(UTC).strftime("%H:%M:%S")
    for v in summary.verdicts:
        detail = f" ({v.reason}, leaf {v.leaf_index})" if v.reason else ""
        line = f"{stamp} {v.contract} batch {v.batch_id}: {v.verdict}{detail}" + (f" tx {v.tx}" if v.tx else "")
        if v.verdict in ("challenged", "missed"):
            err_console.print(f"[yellow]{line}[/yellow]")
        else:
            click.echo(line)
    if always and not summary.verdicts:
        click.echo(f"{stamp} no new batch (blocks {summary.from_block}..{summary.to_block})")


@click.command("watch")
@click.option(
    "--interval",
    type=DURATION,
    default="5s",
    show_default=True,
    help="Time between passes; keep it far below the challenge window (1 h).",
)
@click.option("--once", is_flag=True, help="One pass, then exit (catch up from the stored cursor and stop).")
@click.option(
    "--store",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="SQLite file keeping the cursor and the verdicts [default: [watcher] store, else watcher.db in the node "
    "state folder].",
)
@with_context(sender=True)
def watch(cmd: CommandContext, interval: int, once: bool, store: Path | None) -> None:
    """Follow optimistic batches, re-verify every event and challenge a bad batch with this account's key.

    Each pass reads the BatchCommitted logs of OptimisticBilling (readings) and OptimisticMotor (telematics
    reports) since their stored cursors, rebuilds every batch from its commit's calldata, checks each event's
    signature against the device registry, its timestamp and its agreement's or policy's claimed state, and
    challenges the first bad one; the bond is paid to this account. A restart resumes from the
    cursor, so a batch committed while the watcher was down is judged as long as its window is open.

    Use an account of its own (not the oracle daemon's relayer key: the two would race for nonces).

    \b
    Examples:
      iotsettle watch --from-key-env WATCHER_KEY                   # every 5 s until SIGTERM / Ctrl-C
      iotsettle watch --once --json --store watcher.db --from-key-env WATCHER_KEY
    """
    if interval < 1:
        raise click.BadParameter("the interval must be at least 1 s", param_hint="--interval")
    path = store if store is not None else watcher_ops.store_of(cmd.config)
    worker = watcher_ops.Watcher(cmd.ops, path)
    try:
        if once:
            summary = worker.run_pass()
            if cmd.as_json:
                cmd.emit(summary.as_dict())
            else:
                _print(summary, False, always=True)
            return
        with stop_on_signals() as stop:
            watcher_ops.run_passes(
                worker,
                interval,
                stop.event,
                lambda summary: _print(summary, cmd.as_json, always=False),
                lambda exc: err_console.print(f"[yellow]pass failed: {exc}[/yellow]"),
            )
        interrupted = stop.signal == signal.SIGINT
    finally:
        worker.close()
    if interrupted:
        cmd.click.exit(EXIT_INTERRUPTED)
