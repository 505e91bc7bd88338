"""`iotsettle node`: the managed local stack (anvil + mosquitto)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from iotsettle.cli._common import progress
from iotsettle.cli._lazy import lazy_import
from iotsettle.cli._params import CommandContext, with_context
from rich.table import Table

if TYPE_CHECKING:
    from iotsettle.oracle.chain import node as services
else:
    services = lazy_import("iotsettle.oracle.chain.node")


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
@click.option(
    "--tls",
    is_flag=True,
    help="Also open a mutual-TLS port on mosquitto ([node] mqtt_tls_port, else 8883) with a throw-away CA in "
    "<state_dir>/tls.",
)
@with_context()
def up(cmd: CommandContext, tls: bool) -> None:
    """Start anvil and mosquitto in the background and wait until both answer.

    Services that already run are left alone, so `node up` is safe to repeat (to add the TLS port to a running
    broker, `node down` first).

    \b
    Examples:
      iotsettle node up
      iotsettle node up --tls          # mqtts://127.0.0.1:8883, client certificates required
      iotsettle node cert oracle       # a client certificate for the oracle daemon
    """
    config = services.with_tls_port(cmd.config) if tls else cmd.config
    statuses = []
    for service in services.stack(config):
        if not cmd.as_json:
            progress(f"starting {service.name} on {service.endpoint}")
        statuses.append(service.start().as_dict())
    cmd.emit(statuses, _table(statuses))


@node.command()
@click.argument("name")
@with_context()
def cert(cmd: CommandContext, name: str) -> None:
    """Issue (or show) a client certificate of the local stack's throw-away CA for the TLS port.

    NAME becomes the MQTT user name on that port: a device's checksummed address (so broker ACLs can match its
    topics), or a name such as "oracle". Prints the paths of the CA, the certificate and its key (0600), never
    the key itself. Point [mqtt] tls_ca_file / tls_cert_file / tls_key_file at them.

    \b
    Examples:
      iotsettle node cert oracle
      iotsettle node cert 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 --json
    """
    ca = services.Mosquitto(cmd.config).ca
    pair = ca.client(name)
    paths = {"name": name, "ca_file": str(ca.ca_file), "cert_file": str(pair.cert_file), "key_file": str(pair.key_file)}
    cmd.emit(paths, "\n".join(f"{key}: {value}" for key, value in paths.items()))


@node.command()
@with_context()
def down(cmd: CommandContext) -> None:
    """Stop the services `node up` started (SIGTERM, then SIGKILL after 5 s)."""
    stopped = {service.name: service.stop() for service in services.stack(cmd.config)}
    cmd.emit(stopped, "\n".join(f"{n}: {'stopped' if s else 'was not running'}" for n, s in stopped.items()))


@node.command()
@with_context()
def status(cmd: CommandContext) -> None:
    """Show whether each service runs and answers, with its pid, endpoint and log file."""
    statuses = [service.status().as_dict() for service in services.stack(cmd.config)]
    cmd.emit(statuses, _table(statuses))
