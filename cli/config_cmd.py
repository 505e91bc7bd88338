"""`iotsettle config`: show the effective configuration (secrets redacted)."""

from __future__ import annotations

import click
from iotsettle.cli._params import CommandContext, with_context
from iotsettle.oracle.config import ENV_PREFIX, field_docs
from rich.table import Table


@click.group("config")
def config_group() -> None:
    """Inspect the configuration (TOML file + IOTSETTLE_* environment overrides)."""


@config_group.command("show")
@click.option("--defaults", is_flag=True, help="List every setting with its default, env variable and meaning.")
@with_context()
def show(cmd: CommandContext, defaults: bool) -> None:
    """Print the effective configuration; secrets are shown as ***.

    \b
    Examples:
      iotsettle config show                    # what this shell's file and IOTSETTLE_* variables give
      iotsettle config show --defaults --json  # every setting: default, variable, meaning
      IOTSETTLE_CHAIN_RPC_URLS=http://a:8545,http://b:8545 iotsettle config show   # rpc_urls from the environment
    """
    if defaults:
        rows = [
            {
                "section": s,
                "key": k,
                "default": d,
                "env": f"{ENV_PREFIX}{s.upper()}_{k.upper()}",
                "secret": secret,
                "doc": doc,
            }
            for s, k, d, doc, secret in field_docs()
        ]
        table = Table("setting", "default", "environment variable", "meaning")
        for r in rows:
            table.add_row(
                f"[{r['section']}] {r['key']}", "(secret)" if r["secret"] else repr(r["default"]), r["env"], r["doc"]
            )
        cmd.emit(rows, table)
        return
    config = cmd.config
    data = {"source": config.source, "root": str(config.root), **config.redacted()}
    table = Table("setting", "value", title=f"configuration from {config.source}")
    for section, values in config.redacted().items():
        for key, value in values.items():
            table.add_row(f"[{section}] {key}", repr(value))
    cmd.emit(data, table)
