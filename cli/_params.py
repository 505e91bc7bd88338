"""What the contract-operation commands share: parameter types that fail in one line, sender and RPC options."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from eth_utils import is_address, is_checksum_address, to_checksum_address

from iotsettle.cli._common import state
from iotsettle.oracle.protocol.errors import IotSettleError
from iotsettle.oracle.ops.amounts import Amount, parse_amount
from iotsettle.oracle.ops.context import OpsContext, SenderChoice, open_context

F = TypeVar("F", bound=Callable[..., Any])


class AddressType(click.ParamType):
    """A 0x address; all-lowercase or all-uppercase hex is accepted, mixed case must have a valid EIP-55 checksum."""

    name = "ADDRESS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if not is_address(text) and not (text.startswith("0x") and len(text) == 42 and is_address(text.lower())):
            self.fail(f"{value!r} is not an address (0x followed by 40 hex digits)", param, ctx)
        body = text[2:]
        if body != body.lower() and body != body.upper() and not is_checksum_address(text):
            self.fail(f"{value!r} has a wrong EIP-55 checksum (a typo?)", param, ctx)
        return to_checksum_address(text.lower())


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


def rpc_option(func: F) -> F:
    return click.option("--rpc-url", envvar="IOTSETTLE_CHAIN_RPC_URL",
                        help="RPC endpoint (default from config: [chain] rpc_url).")(func)


def sender_options(func: F) -> F:
    """Who signs: by default the configured key ([chain] keystore / IOTSETTLE_CHAIN_PRIVATE_KEY / anvil account 0)."""
    func = click.option("--dev-account", type=click.IntRange(0, 4), default=None,
                        help="Send from anvil development account N (0-4; local chains only).")(func)
    func = click.option("--from-key-env", metavar="NAME", default=None,
                        help="Send with the hex private key held in environment variable NAME.")(func)
    return func


def ops_context(ctx: click.Context, rpc_url: str | None, *, from_key_env: str | None = None,
                dev_account: int | None = None, send: bool = True) -> OpsContext:
    choice = SenderChoice(from_key_env, dev_account) if send else None
    return open_context(state(ctx).config, rpc_url, sender=choice)


def chain_time(ops: OpsContext, spec: tuple[str, int]) -> int:
    kind, seconds = spec
    if kind == "absolute":
        return seconds
    return int(ops.w3.eth.get_block("latest")["timestamp"]) + seconds


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
