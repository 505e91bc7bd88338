"""`iotsettle demo`: the main job on a fresh machine."""

from __future__ import annotations

import click
from rich.table import Table

from cli._common import emit, json_option, progress, state
from oracle.chain import connect, load_sender
from oracle.compiler import ensure_compiled
from oracle.deploy import deploy_all, manifest_path
from oracle.node import stack


@click.command()
@click.option("--rpc-url", envvar="IOTSETTLE_CHAIN_RPC_URL",
              help="Use an existing node instead of starting the local anvil.")
@json_option
@click.pass_context
def demo(ctx: click.Context, rpc_url: str | None, as_json: bool) -> None:
    """Bring up the local stack, compile, deploy, and print the deployment.

    Starts anvil and mosquitto on loopback (unless --rpc-url points at a node you run), compiles
    contracts/, deploys them and prints the manifest. Stop the stack afterwards with `iotsettle node down`.
    """
    config = state(ctx).config
    report = (lambda _m: None) if as_json else progress
    if rpc_url is None:
        for service in stack(config):
            report(f"starting {service.name} on {service.endpoint}")
            service.start()
    report("compiling contracts")
    ensure_compiled(config)
    chain = connect(config, rpc_url)
    account = load_sender(config, chain)
    report(f"deploying to chain {chain.chain_id} from {account.address}")
    manifest = deploy_all(config, chain, account, report)
    table = Table("contract", "address", "block", title=f"deployed on chain {chain.chain_id} ({manifest_path(config, chain.chain_id)})")
    for name, entry in manifest["contracts"].items():
        table.add_row(name, entry["address"], str(entry["block"]))
    emit(manifest, as_json, table)
    if not as_json:
        progress("next: `iotsettle node status`, `iotsettle node down` to stop the stack")
