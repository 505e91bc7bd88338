"""Every --help of the click tree answers, and none of them loads the chain libraries (cli/_lazy.py): help texts
come from click, the docstrings and the pure protocol vocabulary, so they print at once."""

from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner
from iotsettle.cli.main import cli

# What --help must never import: each costs a tenth of a second to most of a second of start-up.
HEAVY = ("web3", "eth_account", "eth_abi", "eth_utils", "eth_keyfile", "solcx", "paho", "requests")


def _command_paths(group: click.Group = cli, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    ctx = click.Context(group)
    paths = [path]
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, f"{' '.join((*path, name))} is listed but cannot be loaded"
        if isinstance(command, click.Group):
            paths += _command_paths(command, (*path, name))
        else:
            paths.append((*path, name))
    return paths


def test_every_help_answers_with_its_usage() -> None:
    paths = _command_paths()
    assert ("agreement", "status") in paths and ("device", "sign", "reading") in paths
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(cli, [*path, "--help"], prog_name="iotsettle")
        assert result.exit_code == 0, f"iotsettle {' '.join(path)} --help: {result.output}"
        assert result.output.startswith(f"Usage: {' '.join(('iotsettle', *path))} "), result.output


def test_no_help_imports_the_chain_libraries() -> None:
    # A fresh interpreter: this one has imported everything already. It prints every help text of the tree, the
    # way `iotsettle <path> --help` does, then names the heavy modules it holds.
    probe = f"""
import sys
import click
from iotsettle.cli.main import cli

def walk(command, ctx):
    assert command.get_help(ctx).startswith("Usage: ")
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            walk(sub, click.Context(sub, info_name=name, parent=ctx))

walk(cli, click.Context(cli, info_name="iotsettle"))
print(",".join(name for name in {HEAVY!r} if name in sys.modules) or "none")
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "none", f"--help imported {out.strip()}"


def test_agreement_help_does_not_import_web3() -> None:
    """The case from the issue, end to end through `main()`: a group's help in a fresh process."""
    probe = (
        "import sys\nfrom iotsettle.cli.main import main\nsys.argv = ['iotsettle', 'agreement', 'status', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\nprint('web3 loaded' if 'web3' in sys.modules else 'no web3')\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "Usage: iotsettle agreement status" in out
    assert out.rstrip().endswith("no web3"), out
