"""What the contract-operation commands share: parameter types that fail in one line, and the one decorator that
adds the shared options (sender, RPC endpoint, --json) and hands a command its ready context."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click
from iotsettle.cli._common import emit, state
from iotsettle.cli._lazy import lazy_import
from iotsettle.oracle.config import Config
from iotsettle.oracle.ops.amounts import Amount, parse_amount
from iotsettle.oracle.protocol.errors import IotSettleError

if TYPE_CHECKING:
    import eth_utils
    from iotsettle.oracle.ops import context, views
else:
    eth_utils = lazy_import("eth_utils")
    context = lazy_import("iotsettle.oracle.ops.context")
    views = lazy_import("iotsettle.oracle.ops.views")

F = TypeVar("F", bound=Callable[..., Any])


class AddressType(click.ParamType):
    """A 0x address; all-lowercase or all-uppercase hex is accepted, mixed case must have a valid EIP-55 checksum."""

    name = "ADDRESS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if not eth_utils.is_address(text) and not (
            text.startswith("0x") and len(text) == 42 and eth_utils.is_address(text.lower())
        ):
            self.fail(f"{value!r} is not an address (0x followed by 40 hex digits)", param, ctx)
        body = text[2:]
        if body != body.lower() and body != body.upper() and not eth_utils.is_checksum_address(text):
            self.fail(f"{value!r} has a wrong EIP-55 checksum (a typo?)", param, ctx)
        return eth_utils.to_checksum_address(text.lower())


class AmountType(click.ParamType):
    """Whole tokens scaled by the token's decimals ("1.5"), or base units with a wei suffix ("1500wei")."""

    name = "AMOUNT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Amount:
        if isinstance(value, Amount):
            return value
        try:
            amount = parse_amount(str(value))
        except IotSettleError as exc:
            self.fail(str(exc), param, ctx)
        return amount


class TokenType(click.ParamType):
    """ETH, TEST (the local test token) or an ERC-20 address."""

    name = "TOKEN"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if text.upper() in ("ETH", "TEST"):
            return text.upper()
        return ADDRESS.convert(text, param, ctx)


_DURATION = re.compile(r"^\+?(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class DeadlineType(click.ParamType):
    """A point in chain time: a duration from the latest block ("+2h", "30m", "7d"), a unix timestamp, or an
    ISO-8601 date-time ("2026-12-24T18:00:00+00:00"). Converted to (relative seconds | absolute timestamp)."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        match = _DURATION.match(text)
        if match:
            return ("relative", int(match.group(1)) * _UNITS[match.group(2)])
        if text.isdigit():
            return ("absolute", int(text))
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{value!r} is not a time: use +2h / 30m / 7d, a unix timestamp or an ISO date-time", param, ctx)
        if moment.tzinfo is None:
            self.fail(f"{value!r} has no time zone; add one, e.g. +00:00", param, ctx)
        return ("absolute", int(moment.timestamp()))


class DurationType(click.ParamType):
    """A duration: "0", "90s", "30m", "2h", "7d"."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if text.isdigit():
            return int(text)
        match = _DURATION.match(text)
        if not match:
            self.fail(f"{value!r} is not a duration (examples: 0, 90s, 30m, 2h, 7d)", param, ctx)
        return int(match.group(1)) * _UNITS[match.group(2)]


class IdType(click.ParamType):
    """An escrow or agreement id: decimal or 0x-hex (agreement ids are large)."""

    name = "ID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        try:
            number = int(text, 16) if text.lower().startswith("0x") else int(text)
        except ValueError:
            self.fail(f"{value!r} is not an id (a decimal or 0x-hex number)", param, ctx)
        if not 0 <= number < 1 << 256:
            self.fail(f"{value!r} does not fit a uint256", param, ctx)
        return number


ADDRESS = AddressType()
AMOUNT = AmountType()
TOKEN = TokenType()
DEADLINE = DeadlineType()
DURATION = DurationType()
ID = IdType()


RPC_URL_HELP = "RPC endpoint (default from config: [chain] rpc_url)."


def rpc_url_option(help: str = RPC_URL_HELP) -> Callable[[F], F]:
    return click.option("--rpc-url", envvar="IOTSETTLE_CHAIN_RPC_URL", help=help)


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
_from_key_env_option = click.option(
    "--from-key-env",
    metavar="NAME",
    default=None,
    help="Send with the hex private key held in environment variable NAME.",
)
_dev_account_option = click.option(
    "--dev-account",
    type=click.IntRange(0, 4),
    default=None,
    help="Send from anvil development account N (0-4; local chains only).",
)


class CommandContext:
    """What a command gets from ``with_context``: the configuration, the chain (opened on first use), --json."""

    def __init__(
        self, click_ctx: click.Context, *, as_json: bool, rpc_url: str | None, sender: context.SenderChoice | None
    ) -> None:
        self.click = click_ctx
        self.as_json = as_json
        self.rpc_url = rpc_url
        self._sender = sender
        self._ops: context.OpsContext | None = None
        self._reads: views.ReadContext | None = None

    @property
    def config(self) -> Config:
        return state(self.click).config

    @property
    def ops(self) -> context.OpsContext:
        """The deployment on the chain, with the chosen sender on sending commands. Opened on first use, so a
        command checks its own arguments (files, keys) before it reaches the chain."""
        if self._ops is None:
            self._ops = context.open_context(self.config, self.rpc_url, sender=self._sender)
        return self._ops

    @property
    def reads(self) -> views.ReadContext:
        """The deployment for a command that only reads: over http(s) without web3 (``ops.views``, a fraction of
        a second sooner), over a websocket through web3's provider."""
        if self._reads is None:
            if self._ops is None and (self.rpc_url or self.config.chain.rpc_url).startswith(("http://", "https://")):
                self._reads = views.open_reads(self.config, self.rpc_url)
            else:
                ops = self.ops
                self._reads = views.ReadContext(self.config, ops.rpc, ops.chain.chain_id, ops.manifest)
        return self._reads

    @property
    def default_sender(self) -> bool:
        """True when neither --from-key-env nor --dev-account was given: the configured key signs."""
        return self._sender == context.SenderChoice()

    def emit(self, data: Any, human: Any = None) -> None:
        """``data`` as JSON with --json, else ``human`` (rich markup or a table) for people."""
        emit(data, self.as_json, human)

    def chain_time(self, spec: tuple[str, int]) -> int:
        """A DEADLINE value as a unix time: relative ones count from the latest block."""
        kind, seconds = spec
        if kind == "absolute":
            return seconds
        return int(self.ops.w3.eth.get_block("latest")["timestamp"]) + seconds


def with_context(
    *, sender: bool = False, rpc: bool = False, json_output: bool = True
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the options commands share and pass a ``CommandContext`` as the command's first argument.

    ``sender=True`` adds --from-key-env and --dev-account (who signs: by default the configured key, [chain]
    keystore / IOTSETTLE_CHAIN_PRIVATE_KEY / anvil account 0) and implies ``rpc``; ``rpc=True`` adds --rpc-url;
    ``json_output`` adds --json. Put it directly above the ``def``: the shared options then follow the command's
    own in --help, in that order.
    """
    rpc = rpc or sender

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            # Take only the options added here: a command may have an option of the same name of its own.
            as_json = kwargs.pop("as_json") if json_output else False
            rpc_url = kwargs.pop("rpc_url") if rpc else None
            choice = context.SenderChoice(kwargs.pop("from_key_env"), kwargs.pop("dev_account")) if sender else None
            cmd = CommandContext(click.get_current_context(), as_json=as_json, rpc_url=rpc_url, sender=choice)
            return func(cmd, *args, **kwargs)

        # click lists options in the reverse order of their application: the last applied comes first.
        wrapped: Callable[..., Any] = command
        if json_output:
            wrapped = json_option(wrapped)
        if rpc:
            wrapped = rpc_url_option()(wrapped)
        if sender:
            wrapped = _from_key_env_option(_dev_account_option(wrapped))
        return wrapped

    return decorate


def read_payloads(source: str) -> str:
    """The text of FILE, or stdin for "-"."""
    if source == "-":
        return sys.stdin.read()
    try:
        with open(source, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {source}: {exc.strerror}") from None


def short(address: str) -> str:
    return f"{address[:6]}…{address[-4:]}"


def short_id(value: int) -> str:
    """A large agreement id for a table cell: 0xa6a140…000001 (--json has it in full)."""
    text = hex(value)
    return text if len(text) <= 16 else f"{text[:8]}…{text[-6:]}"


def when(ts: int) -> str:
    if not ts:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
