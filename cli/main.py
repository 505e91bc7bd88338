"""The `iotsettle` command: one root group, noun sub-groups, state in ctx.obj."""

from __future__ import annotations

import logging

import click

from cli._common import IotSettleGroup, State
from cli.config_cmd import config_group
from cli.contracts import compile_cmd, deploy
from cli.demo import demo
from cli.node import node
from cli.oracle import oracle
from cli.escrow import escrow
from cli.agreement import agreement
from cli.token import token
from cli.balances import balances
from cli.audit import audit
from cli.device_admin import device
from cli.credit import credit
from cli.policy import policy
from cli.crop import crop
from cli.loan import loan
from cli.keeper import keeper


@click.group(cls=IotSettleGroup, context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "IOTSETTLE"})
@click.option("--config", "config_path", envvar="IOTSETTLE_CONFIG", type=click.Path(dir_okay=False),
              help="TOML configuration file (default: ./iotsettle.toml if present).")
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
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = State(config_path)


cli.add_command(node)
cli.add_command(oracle)
cli.add_command(compile_cmd)
cli.add_command(deploy)
cli.add_command(config_group)
cli.add_command(demo)
cli.add_command(escrow)
cli.add_command(agreement)
cli.add_command(token)
cli.add_command(balances)
cli.add_command(audit)
cli.add_command(device)
cli.add_command(credit)
cli.add_command(policy)
cli.add_command(crop)
cli.add_command(loan)
cli.add_command(keeper)


def main() -> None:
    cli(prog_name="iotsettle")
