"""`iotsettle node`: the managed local stack (anvil + mosquitto)."""

from __future__ import annotations

import click
from iotsettle.cli._common import progress
from iotsettle.cli._params import CommandContext, with_context
from iotsettle.oracle.chain.node import stack
from rich.table import Table


@click.group()
def node() -> None:
    """Start, stop and inspect the local stack: anvil (chain) and mosquitto (MQTT broker).

    Both listen on loopback; ports and the state folder (pid files, logs, broker data) come from the
    [node] section of the configuration or IOTSETTLE_NODE_* variables.
    """


def _table(statuses: list[dict[str, object]]) -> Table:
    table = Table("service", "state", "pid", "endpoint", "log")
    for s in statuses:
        label = (
            "[green]ready[/green]"
            if s["ready"]
            else ("[yellow]starting[/yellow]" if s["running"] else "[red]stopped[/red]")
        )
        table.add_row(str(s["name"]), label, str(s["pid"] or "-"), str(s["endpoint"]), str(s["log"]))
    return table


@node.command()
@with_context()
def up(cmd: CommandContext) -> None:
    """Start anvil and mosquitto in the background and wait until both answer.

    Services that already run are left alone, so `node up` is safe to repeat.
    """
    statuses = []
    for service in stack(cmd.config):
        if not cmd.as_json:
            progress(f"starting {service.name} on {service.endpoint}")
        statuses.append(service.start().as_dict())
    cmd.emit(statuses, _table(statuses))


@node.command()
@with_context()
def down(cmd: CommandContext) -> None:
    """Stop the services `node up` started (SIGTERM, then SIGKILL after 5 s)."""
    stopped = {service.name: service.stop() for service in stack(cmd.config)}
    cmd.emit(stopped, "\n".join(f"{n}: {'stopped' if s else 'was not running'}" for n, s in stopped.items()))


@node.command()
@with_context()
def status(cmd: CommandContext) -> None:
    """Show whether each service runs and answers, with its pid, endpoint and log file."""
    statuses = [service.status().as_dict() for service in stack(cmd.config)]
    cmd.emit(statuses, _table(statuses))
