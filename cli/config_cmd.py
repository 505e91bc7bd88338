"""`iotsettle config`: show the effective configuration (secrets redacted)."""

from __future__ import annotations

import click
from rich.table import Table

from iotsettle.cli._common import emit, json_option, state
from iotsettle.oracle.config import ENV_PREFIX, field_docs


@click.group("config")
def config_group() -> None:
    """Inspect the configuration (TOML file + IOTSETTLE_* environment overrides)."""


@config_group.command("show")
@click.option("--defaults", is_flag=True, help="List every setting with its default, env variable and meaning.")
@json_option
@click.pass_context
def show(ctx: click.Context, defaults: bool, as_json: bool) -> None:
    """Print the effective configuration; secrets are shown as ***."""
    if defaults:
        rows = [
            {"section": s, "key": k, "default": d, "env": f"{ENV_PREFIX}{s.upper()}_{k.upper()}", "secret": secret, "doc": doc}
            for s, k, d, doc, secret in field_docs()
        ]
        table = Table("setting", "default", "environment variable", "meaning")
        for r in rows:
            table.add_row(f"[{r['section']}] {r['key']}", "(secret)" if r["secret"] else repr(r["default"]), r["env"], r["doc"])
        emit(rows, as_json, table)
        return
    config = state(ctx).config
    data = {"source": config.source, "root": str(config.root), **config.redacted()}
    table = Table("setting", "value", title=f"configuration from {config.source}")
    for section, values in config.redacted().items():
        for key, value in values.items():
            table.add_row(f"[{section}] {key}", repr(value))
    emit(data, as_json, table)
