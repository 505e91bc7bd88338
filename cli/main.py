"""The `iotsettle` command: one root group, noun sub-groups, state in ctx.obj."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import logging
from pathlib import Path

import click
from iotsettle.cli._common import IotSettleGroup, State

# Every command of the root group, and where it is defined (module:function). The root group imports a command's
# module only when that command runs or shows its own --help: the operation commands pull in web3 and eth_account
# (most of a second), which `iotsettle --help` and `iotsettle node up` do not need.
COMMANDS = {
    "agreement": "iotsettle.cli.agreement:agreement",
    "audit": "iotsettle.cli.audit:audit",
    "balances": "iotsettle.cli.balances:balances",
    "compile": "iotsettle.cli.contracts:compile_cmd",
    "config": "iotsettle.cli.config_cmd:config_group",
    "credit": "iotsettle.cli.credit:credit",
    "crop": "iotsettle.cli.crop:crop",
    "demo": "iotsettle.cli.demo:demo",
    "deploy": "iotsettle.cli.contracts:deploy",
    "device": "iotsettle.cli.device:device",
    "escrow": "iotsettle.cli.escrow:escrow",
    "guard": "iotsettle.cli.guard:guard",
    "keeper": "iotsettle.cli.keeper:keeper",
    "loan": "iotsettle.cli.loan:loan",
    "node": "iotsettle.cli.node:node",
    "oracle": "iotsettle.cli.oracle:oracle",
    "policy": "iotsettle.cli.policy:policy",
    "token": "iotsettle.cli.token:token",
    "watch": "iotsettle.cli.watch:watch",
}


def _docstring(target: str) -> str:
    """The help text of a command, read from its module's source without importing the module."""
    module, function = target.split(":")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return ""
    for node in ast.parse(Path(spec.origin).read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return ast.get_docstring(node) or ""
    return ""


class RootGroup(IotSettleGroup):
    """The root group: commands from ``COMMANDS``, each module imported when its command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, function = target.split(":")
        # The one import by name in the CLI: importlib.import_module is what makes the loading lazy (an import
        # statement here would sit inside a function, which the floors test forbids and which hides dependencies).
        command: click.Command = getattr(importlib.import_module(module), function)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The command list of `iotsettle --help`, from the docstrings, formatted by click exactly as before.
        listing = [click.Command(name, help=_docstring(COMMANDS[name])) for name in self.list_commands(ctx)]
        click.Group(commands=listing).format_commands(ctx, formatter)


@click.group(cls=RootGroup, context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "IOTSETTLE"})
@click.option(
    "--config",
    "config_path",
    envvar="IOTSETTLE_CONFIG",
    type=click.Path(dir_okay=False),
    help="TOML configuration file (default: ./iotsettle.toml if present).",
)
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
@click.version_option(package_name="iotsettle")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """iotsettle — settle device-signed IoT events on an EVM chain.

    \b
    Typical local session:
      iotsettle node up        start anvil + mosquitto on loopback
      iotsettle compile        build contracts/ (solc version from foundry.toml)
      iotsettle deploy         deploy and write deployments/<chainId>.json
      iotsettle demo           all of the above, then print the deployment

    Every option can also be set from the environment (IOTSETTLE_<OPTION>), and every configuration
    value from IOTSETTLE_<SECTION>_<KEY>; see `iotsettle config show`.
    """
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = State(config_path)


def main() -> None:
    cli(prog_name="iotsettle")
