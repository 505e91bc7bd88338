"""The `iotsettle` command: one root group, noun sub-groups, state in ctx.obj."""

from __future__ import annotations

import logging

import click

from iotsettle.cli._common import IotSettleGroup, State
from iotsettle.cli.config_cmd import config_group
from iotsettle.cli.contracts import compile_cmd, deploy
from iotsettle.cli.demo import demo
from iotsettle.cli.node import node
from iotsettle.cli.oracle import oracle
from iotsettle.cli.escrow import escrow
from iotsettle.cli.agreement import agreement
from iotsettle.cli.token import token
from iotsettle.cli.balances import balances
from iotsettle.cli.audit import audit
from iotsettle.cli.device import device
from iotsettle.cli.credit import credit
from iotsettle.cli.policy import policy
from iotsettle.cli.crop import crop
from iotsettle.cli.loan import loan
from iotsettle.cli.keeper import keeper


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
