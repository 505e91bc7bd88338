"""`iotsettle compile` and `iotsettle deploy`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from iotsettle.cli._common import progress
from iotsettle.cli._lazy import lazy_import
from iotsettle.cli._params import CommandContext, with_context
from iotsettle.oracle.chain.manifest import manifest_path
from rich.table import Table

if TYPE_CHECKING:
    from iotsettle.oracle.chain import compiler as chain_compiler
    from iotsettle.oracle.chain import connection as chain_connection
    from iotsettle.oracle.chain import deploy as chain_deploy
else:
    chain_compiler = lazy_import("iotsettle.oracle.chain.compiler")
    chain_connection = lazy_import("iotsettle.oracle.chain.connection")
    chain_deploy = lazy_import("iotsettle.oracle.chain.deploy")


@click.command("compile")
@click.option("--force", is_flag=True, help="Compile even when the artifacts match the sources.")
@with_context()
def compile_cmd(cmd: CommandContext, force: bool) -> None:
    """Compile contracts/ into build/artifacts/ (ABI, bytecode, compiler version and settings).

    The solc version and settings are read from foundry.toml, so forge and this command build the same
    bytecode. Unchanged sources are not recompiled (use --force).
    """
    config = cmd.config
    settings = chain_compiler.read_foundry_settings(config.root)
    if not cmd.as_json:
        progress(f"solc {settings.version}, evm {settings.evm_version}, optimizer runs {settings.optimizer_runs}")
    out, compiled = chain_compiler.ensure_compiled(config, force=force)
    names = sorted(p.stem for p in out.glob("*.json") if not p.name.startswith("_"))
    cmd.emit(
        {"artifacts": str(out), "compiled": compiled, "contracts": names},
        f"{'compiled' if compiled else 'up to date'}: {len(names)} contracts in {out}",
    )


@click.command()
@with_context(rpc=True)
def deploy(cmd: CommandContext) -> None:
    """Deploy every contract in dependency order and write deployments/<chainId>.json.

    The sending key comes from [chain] keystore (+ IOTSETTLE_CHAIN_PASSWORD) or IOTSETTLE_CHAIN_PRIVATE_KEY;
    on a local chain (31337 anvil, 1337 ganache) with no key configured, the first anvil development
    account is used. Re-running keeps contracts whose code is still on chain and unchanged.
    """
    config = cmd.config
    chain_compiler.ensure_compiled(config)
    chain = chain_connection.connect(config, cmd.rpc_url)
    account = chain_connection.load_sender(config, chain)
    report = (lambda _m: None) if cmd.as_json else progress
    report(f"chain {chain.chain_id} at {chain.rpc_url}, deployer {account.address}")
    manifest = chain_deploy.deploy_all(config, chain, account, report)
    table = Table(
        "contract",
        "address",
        "block",
        title=f"chain {chain.chain_id} — {manifest_path(config, chain.chain_id)}",
    )
    for name, entry in manifest["contracts"].items():
        table.add_row(name, entry["address"], str(entry["block"]))
    cmd.emit(manifest, table)
