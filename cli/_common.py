"""What the root group and every command share: the loaded config in ``ctx.obj``, one-line errors, JSON or rich
output. Cheap to import (no web3): the root group loads it for `iotsettle --help`; the command options are in
``iotsettle.cli._params``."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import click
from iotsettle.oracle.config import Config, load_config
from iotsettle.oracle.protocol.errors import IotSettleError
from rich.console import Console, RenderableType

err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)

#: exit status after SIGINT (Ctrl-C), as a shell reports a process ended by it (128 + 2)
EXIT_INTERRUPTED = 130


@dataclass
class Stop:
    """Set by SIGTERM or SIGINT; a command's loop ends after the action in progress."""

    event: threading.Event = field(default_factory=threading.Event)
    signal: int | None = None

    def handler(self, signum: int, _frame: object) -> None:
        self.signal = signum
        self.event.set()


@contextmanager
def stop_on_signals() -> Iterator[Stop]:
    """SIGTERM and SIGINT set the yielded ``Stop`` instead of ending the process, for long-running commands
    (`keeper run`, `watch`); the previous handlers come back on leaving."""
    stop = Stop()
    previous = {sig: signal.signal(sig, stop.handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class State:
    config_path: str | None
    _config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config


class IotSettleGroup(click.Group):
    """A click group that turns IotSettleError into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except IotSettleError as exc:
            raise click.ClickException(str(exc)) from None


def state(ctx: click.Context) -> State:
    return ctx.ensure_object(State)


def emit(data: Any, as_json: bool, human: RenderableType | None = None) -> None:
    """Print ``data`` as JSON for scripts, or ``human`` (rich markup or a renderable, e.g. a table) for people."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        out_console.print(human if human is not None else data)


def progress(message: str) -> None:
    """A progress line for people, on stderr so stdout stays clean for --json."""
    err_console.print(f"[dim]•[/dim] {message}")
