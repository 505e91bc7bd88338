"""`iotsettle audit device|agreement|escrow ID`: settlement history re-derived from chain events."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import click
from iotsettle.cli._common import IotSettleGroup, emit
from iotsettle.cli._lazy import lazy_import
from iotsettle.cli._params import ADDRESS, ID, CommandContext, short, short_id, when, with_context
from rich.table import Table

if TYPE_CHECKING:
    from iotsettle.oracle.ops import audit as ops
    from iotsettle.oracle.ops import context as ops_context
    from iotsettle.oracle.ops import token as token_ops
else:
    ops = lazy_import("iotsettle.oracle.ops.audit")
    ops_context = lazy_import("iotsettle.oracle.ops.context")
    token_ops = lazy_import("iotsettle.oracle.ops.token")


@click.group(cls=IotSettleGroup)
def audit() -> None:
    """Settlement history from the contracts' own event logs (no oracle database involved): every entry has its
    block, time, transaction hash and amount, so anyone with an RPC endpoint can check it.

    \b
    Examples:
      iotsettle audit escrow 7
      iotsettle audit agreement 0x5fbd…0001
      iotsettle audit device 0xDEVICE --json > history.json     # a device's verifiable payment history
    """


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}\b")
_LONG_ID = re.compile(r"0x[0-9a-f]{41,64}\b")


def _compact(text: str) -> str:
    """Addresses and agreement ids shortened for a table cell (--json keeps them whole)."""
    text = _LONG_ID.sub(lambda m: short_id(int(m.group(0), 16)), text)
    return _ADDRESS.sub(lambda m: short(m.group(0)), text)


def _render(ops_ctx: ops_context.OpsContext, report: ops.AuditReport, as_json: bool) -> None:
    with_subject = len({e.subject for e in report.entries}) > 1
    table = Table(
        "block",
        "time (UTC)",
        *(["subject"] if with_subject else []),
        "event",
        "amount",
        "tx",
        "detail",
        title=report.subject,
    )
    for e in report.entries:
        amount = token_ops.describe_token(ops_ctx, e.token).format(e.amount) if e.amount is not None and e.token else ""
        table.add_row(
            str(e.block),
            when(e.time).removesuffix(" UTC"),
            *([_compact(e.subject)] if with_subject else []),
            e.event,
            amount,
            e.tx_hash[:10] + "…",
            _compact(e.detail),
        )
    totals = Table("total", "value", title="totals")
    token = report.totals.get("token")
    if token is None:
        used = {e.token for e in report.entries if e.token}
        token = used.pop() if len(used) == 1 else None
    fmt = token_ops.describe_token(ops_ctx, token).format if isinstance(token, str) else None
    for key, value in report.totals.items():
        if key == "token":
            continue
        is_money = key in (
            "funded",
            "toSeller",
            "toBuyer",
            "refunded",
            "cancelled",
            "deposited",
            "billed",
            "withdrawn",
            "releasedToSeller",
        )
        totals.add_row(key, fmt(value) if fmt and is_money else str(value))
    emit(report.as_dict(), as_json, table)
    if not as_json:
        emit(None, False, totals)


@audit.command()
@click.argument("escrow_id", type=ID)
@with_context(rpc=True)
def escrow(cmd: CommandContext, escrow_id: int) -> None:
    """History of one escrow: funding, delivery (or rejections), refund or cancellation.

    \b
    Example:
      iotsettle audit escrow 7
    """
    _render(cmd.ops, ops.audit_escrow(cmd.ops, escrow_id), cmd.as_json)


@audit.command()
@click.argument("agreement_id", type=ID)
@with_context(rpc=True)
def agreement(cmd: CommandContext, agreement_id: int) -> None:
    """History of one agreement: offer, deposit and top-ups, every settled or rejected reading, payouts, close.

    \b
    Example:
      iotsettle audit agreement 0x5fbd…0001
    """
    _render(cmd.ops, ops.audit_agreement(cmd.ops, agreement_id), cmd.as_json)


@audit.command()
@click.argument("device", type=ADDRESS)
@with_context(rpc=True)
def device(cmd: CommandContext, device: str) -> None:
    """History of one device: registration, key rotations, revocation, and everything its signatures settled.

    Transaction hashes are shortened in the table; --json has them in full.

    Totals sum base units over all of the device's agreements and escrows.

    \b
    Example:
      iotsettle audit device 0xE7Bdb680F38e39652AdAE124F801EAF18557B714
    """
    _render(cmd.ops, ops.audit_device(cmd.ops, device), cmd.as_json)
