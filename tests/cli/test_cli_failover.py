"""The CLI with several RPC endpoints (``[chain] rpc_urls``): a command whose first endpoint is down or frozen
works through the next one — sending and read-only commands alike — and prints no endpoint's path."""

from __future__ import annotations

from typing import Any

from iotsettle.oracle.chain.node import Anvil, free_port

from tests.kit.cli import Cli
from tests.kit.proxy import Proxy


def test_commands_move_to_the_next_endpoint(deployment: Any, anvil: Anvil) -> None:
    cli = Cli(deployment.config)
    user = cli.user(deployment.chain.w3)
    down = f"http://127.0.0.1:{free_port()}/?apikey=SECRETKEY"
    env = {"IOTSETTLE_CHAIN_RPC_URLS": f"{down},{anvil.endpoint}", "IOTSETTLE_CHAIN_TIMEOUT": "2"}
    cli.ok(["token", "mint", "--amount", "3"], user, **env)
    assert cli.ok(["token", "balance", user.address], **env) == {user.address: str(3 * 10**18)}

    frozen = Proxy(("127.0.0.1", anvil.port)).start()
    frozen.freeze()
    try:
        env["IOTSETTLE_CHAIN_RPC_URLS"] = f"{frozen.url},{anvil.endpoint}"
        cli.ok(["token", "mint", "--amount", "4"], user, **env)
        assert cli.ok(["token", "balance", user.address], **env) == {user.address: str(7 * 10**18)}
    finally:
        frozen.stop()

    shown = cli.run(["config", "show", "--json"], **{**env, "IOTSETTLE_CHAIN_RPC_URLS": f"{down},{anvil.endpoint}"})
    assert shown.exit_code == 0 and "SECRETKEY" not in shown.output and "/***" in shown.output
