"""The root group imports a command's module only when the command is used: its table must name each command
truly, and `iotsettle --help` must list them without loading the chain libraries."""

from __future__ import annotations

import subprocess
import sys

import click
from iotsettle.cli.main import COMMANDS, _docstring, cli


def test_each_command_loads_under_its_own_name_with_the_help_the_listing_shows() -> None:
    ctx = click.Context(cli)
    for name, target in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name, target
        listed = click.Command(name, help=_docstring(target)).get_short_help_str(60)
        assert listed and listed == command.get_short_help_str(60), target


def test_help_lists_every_command_without_loading_web3() -> None:
    probe = (
        "import sys\nfrom iotsettle.cli.main import main\nsys.argv = ['iotsettle', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\nprint('web3 loaded' if 'web3' in sys.modules else 'no web3')\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert all(f"  {name} " in out for name in COMMANDS), out
    assert out.rstrip().endswith("no web3"), out
