"""`iotsettle node`: the managed local stack (anvil + mosquitto)."""

from __future__ import annotations

import click
from rich.table import Table

from iotsettle.cli._common import emit, json_option, progress, state
from iotsettle.oracle.chain.node import stack


@click.group()
def node() -> None:
    """Start, stop and inspect the local stack: anvil (chain) and mosquitto (MQTT broker).

    Both listen on loopback; ports and the state folder (pid files, logs, broker data) come from the
    [node] section of the configuration or IOTSETTLE_NODE_* variables.
    """


def _table(statuses: list[dict[str, object]]) -> Table:
    table = Table("service", "state", "pid", "endpoint", "log")
    for s in statuses:
        label = "[green]ready[/green]" if s["ready"] else ("[yellow]starting[/yellow]" if s["running"] else "[red]stopped[/red]")
        table.add_row(str(s["name"]), label, str(s["pid"] or "-"), str(s["endpoint"]), str(s["log"]))
    return table


@node.command()
@json_option
@click.pass_context
def up(ctx: click.Context, as_json: bool) -> None:
    """Start anvil and mosquitto in the background and wait until both answer.

    Services that already run are left alone, so `node up` is safe to repeat.
    """
    statuses = []
    for service in stack(state(ctx).config):
        if not as_json:
            progress(f"starting {service.name} on {service.endpoint}")
        statuses.append(service.start().as_dict())
    emit(statuses, as_json, _table(statuses))


@node.command()
@json_option
@click.pass_context
def down(ctx: click.Context, as_json: bool) -> None:
    """Stop the services `node up` started (SIGTERM, then SIGKILL after 5 s)."""
    stopped = {service.name: service.stop() for service in stack(state(ctx).config)}
    emit(stopped, as_json, "\n".join(f"{n}: {'stopped' if s else 'was not running'}" for n, s in stopped.items()))


@node.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show whether each service runs and answers, with its pid, endpoint and log file."""
    statuses = [service.status().as_dict() for service in stack(state(ctx).config)]
    emit(statuses, as_json, _table(statuses))
