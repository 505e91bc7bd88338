"""`iotsettle guard set|show|clear` and `iotsettle device approve`: an account's own device as the second factor of
its withdrawals (docs/products/device-guard.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from iotsettle.cli._common import IotSettleGroup
from iotsettle.cli._lazy import lazy_import
from iotsettle.cli._params import ADDRESS, AMOUNT, TOKEN, CommandContext, when, with_context
from iotsettle.oracle.ops.amounts import Amount
from iotsettle.oracle.ops.vocabulary import GUARDED_LEDGERS
from iotsettle.oracle.protocol.location import location_bytes32
from rich.table import Table

if TYPE_CHECKING:
    from iotsettle.oracle.device import keys as device_keys
    from iotsettle.oracle.ops import guard as ops
    from iotsettle.oracle.ops import token as token_ops
else:
    device_keys = lazy_import("iotsettle.oracle.device.keys")
    ops = lazy_import("iotsettle.oracle.ops.guard")
    token_ops = lazy_import("iotsettle.oracle.ops.token")


class GeohashType(click.ParamType):
    """A geohash cell (1..12 characters of the geohash alphabet)."""

    name = "GEOHASH"

    def convert(self, value: str, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            location_bytes32(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return value


GEOHASH = GeohashType()

device_key_option = click.option(
    "--device-key",
    "key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    envvar="IOTSETTLE_DEVICE_KEY",
    help="Keystore of one of the account's own registered devices (it signs).",
)
device_password_option = click.option(
    "--password-file",
    type=click.Path(dir_okay=False),
    envvar="IOTSETTLE_DEVICE_PASSWORD_FILE",
    help="File holding the device keystore's password (else IOTSETTLE_DEVICE_PASSWORD).",
)
token_option = click.option(
    "--token", type=TOKEN, default="TEST", show_default=True, help="The token whose withdrawals are guarded."
)


def _device(key_file: str, password_file: str | None) -> device_keys.DeviceKey:
    return device_keys.load_keystore(key_file, device_keys.resolve_password(password_file))


def read_approval(path: str) -> ops.Approval:
    """An approval file written by `iotsettle device approve` ("-" reads stdin)."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    return ops.Approval.from_json(text)


approval_option = click.option(
    "--approval",
    "approval_file",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="A device approval from `iotsettle device approve` (needed above the account's guard threshold).",
)


def submit_approval(cmd: CommandContext, approval_file: str | None, ledger: str) -> str | None:
    """Record the approval at the guard before a withdraw command withdraws; returns the transaction hash."""
    if approval_file is None:
        return None
    return ops.submit_approval(cmd.ops, read_approval(approval_file), ledger).tx_hash


@click.group(cls=IotSettleGroup)
def guard() -> None:
    """Your own device as the second factor of your withdrawals: above a threshold, it must approve.

    Opting in (and out) needs the device too, so a stolen account key alone cannot switch the guard off; if the
    device is lost, `guard clear --without-device` clears it after a 7-day delay that the device can cancel.

    \b
    Examples:
      iotsettle guard set --token TEST --threshold 10 --device-key keys/0xPHONE.json --cell u33db
      iotsettle guard show --token TEST --json
      iotsettle device approve --key keys/0xPHONE.json --account 0x7099… --contract escrow --amount 25 \\
          --location u33dbfc > approval.json
      iotsettle escrow withdraw --token TEST --approval approval.json
      iotsettle guard clear --token TEST --device-key keys/0xPHONE.json
    """


@guard.command("set")
@token_option
@click.option("--threshold", type=AMOUNT, required=True, help="What may leave without the device (e.g. 10).")
@click.option(
    "--cell",
    "cells",
    type=GEOHASH,
    multiple=True,
    help="A geohash cell the device must report being in (repeat for several, at most 8; none: anywhere).",
)
@device_key_option
@device_password_option
@with_context(sender=True)
def set_cmd(
    cmd: CommandContext, token: str, threshold: Amount, cells: tuple[str, ...], key_file: str, password_file: str | None
) -> None:
    """Guard the sender's TOKEN withdrawals from every contract, signed by one of its own devices.

    Withdrawals beyond --threshold (counted per contract since the device last approved) then need a device
    approval. Running it again changes the threshold or the cells, with the device's signature again.

    \b
    Example:
      iotsettle guard set --token TEST --threshold 10 --device-key keys/0xPHONE.json --cell u33db --dev-account 1
    """
    device = _device(key_file, password_file)
    info = token_ops.describe_token(cmd.ops, token)
    base = info.to_base(threshold)
    results = ops.set_guard(cmd.ops, device, info, base, cells)
    account = cmd.ops.require_sender().address
    cmd.emit(
        {
            "account": account,
            "token": info.address,
            "threshold": str(base),
            "cells": list(cells),
            "device": device.address,
            "txs": [r.tx_hash for r in results],
        },
        f"{account} guards its {info.symbol} withdrawals above {info.format(base)}, approved by device "
        f"{device.address}{' in ' + ', '.join(cells) if cells else ''} ({len(results)} transactions)",
    )


@guard.command("show")
@token_option
@click.option("--account", type=ADDRESS, default=None, help="Whose guard (default: the sender).")
@with_context(sender=True)
def show(cmd: CommandContext, token: str, account: str | None) -> None:
    """Show an account's guard of TOKEN: threshold, cells, recovery, and per contract what is credited, taken
    without the device, and approved.

    \b
    Examples:
      iotsettle guard show --token TEST --dev-account 1
      iotsettle guard show --token TEST --account 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 --json
    """
    who = account or cmd.ops.require_sender().address
    info = token_ops.describe_token(cmd.ops, token)
    view = ops.guard_of(cmd.ops, who, info)
    if cmd.as_json:
        cmd.emit(view.as_json())
        return
    if not view.enabled:
        head = f"{view.account} does not guard its {info.symbol} withdrawals"
    else:
        head = (
            f"{view.account} guards its {info.symbol} withdrawals above {info.format(view.threshold)}, "
            f"{'in ' + ', '.join(view.cells) if view.cells else 'anywhere'}; guard nonce {view.nonce}"
        )
        if view.recovery_ready_at:
            head += f"; recovery without the device clears it at {when(view.recovery_ready_at)}"
    table = Table(title=head, title_justify="left")
    for column in ("contract", "through the guard", "withdrawable", "taken without device", "approved"):
        table.add_column(column)
    for led in view.ledgers:
        approved = f"{info.format(led.approved)} until {when(led.approved_until)}" if led.approved else "-"
        table.add_row(
            led.name, "yes" if led.guarded else "no", info.format(led.withdrawable), info.format(led.spent), approved
        )
    cmd.emit(view.as_json(), table)


@guard.command("clear")
@token_option
@click.option(
    "--device-key",
    "key_file",
    type=click.Path(exists=True, dir_okay=False),
    envvar="IOTSETTLE_DEVICE_KEY",
    help="Keystore of one of the account's own devices: clears at once.",
)
@device_password_option
@click.option(
    "--without-device",
    is_flag=True,
    help="The device is lost: start the 7-day recovery, or finish it once the delay has passed.",
)
@with_context(sender=True)
def clear(
    cmd: CommandContext, token: str, key_file: str | None, password_file: str | None, without_device: bool
) -> None:
    """Stop guarding the sender's TOKEN withdrawals: at once with the device, or after a delay without it.

    Without the device the first run starts a recovery that clears the guard 7 days later (run it again then); any
    approval or `guard set` signed by the device before that cancels it, so a thief holding only the account key
    cannot switch the guard off unseen.

    \b
    Examples:
      iotsettle guard clear --token TEST --device-key keys/0xPHONE.json --dev-account 1
      iotsettle guard clear --token TEST --without-device --dev-account 1
    """
    if (key_file is None) == (not without_device):
        raise click.UsageError("give either --device-key or --without-device")
    info = token_ops.describe_token(cmd.ops, token)
    account = cmd.ops.require_sender().address
    if key_file is not None:
        results = ops.clear_guard(cmd.ops, _device(key_file, password_file), info)
        cmd.emit(
            {"account": account, "token": info.address, "stage": "cleared", "txs": [r.tx_hash for r in results]},
            f"{account} no longer guards its {info.symbol} withdrawals",
        )
        return
    recovery = ops.recover(cmd.ops, info)
    sentence = {
        "started": f"recovery started: the guard clears at {when(recovery.ready_at)}; run this again then",
        "pending": f"the recovery clears the guard at {when(recovery.ready_at)}; run this again then",
        "cleared": f"{account} no longer guards its {info.symbol} withdrawals",
    }[recovery.stage]
    cmd.emit(
        {
            "account": account,
            "token": info.address,
            "stage": recovery.stage,
            "readyAt": recovery.ready_at,
            "txs": [r.tx_hash for r in recovery.txs],
        },
        sentence,
    )


@click.command("approve")
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    envvar="IOTSETTLE_DEVICE_KEY",
    help="The device's keystore file.",
)
@device_password_option
@click.option("--account", type=ADDRESS, required=True, help="The device owner's account that will withdraw.")
@click.option(
    "--contract",
    type=click.Choice(sorted(GUARDED_LEDGERS)),
    required=True,
    help="The contract the money leaves (the approval is bound to it).",
)
@token_option
@click.option("--amount", type=AMOUNT, required=True, help="Up to how much the account may withdraw, once.")
@click.option("--location", type=GEOHASH, default=None, help="Where the device is, as a geohash (e.g. u33dbfc).")
@click.option(
    "--valid-for", type=click.IntRange(30, 86_400), default=600, show_default=True, help="Seconds the approval lasts."
)
@with_context(rpc=True, json_output=False)
def approve(
    cmd: CommandContext,
    key_file: str,
    password_file: str | None,
    account: str,
    contract: str,
    token: str,
    amount: Amount,
    location: str | None,
    valid_for: int,
) -> None:
    """Sign, with a device's keystore, its owner's next withdrawal from a contract and print the approval (JSON).

    The approval binds the account, token, amount, the account's current guard nonce, a deadline, the chain and the
    contract; the withdraw command takes it with --approval FILE.

    \b
    Example:
      iotsettle device approve --key keys/0xPHONE.json --account 0x7099… --contract escrow --token TEST \\
          --amount 25 --location u33dbfc > approval.json
    """
    device = _device(key_file, password_file)
    info = token_ops.describe_token(cmd.ops, token)
    approval = ops.sign_approval(
        cmd.ops,
        device,
        account=account,
        ledger=GUARDED_LEDGERS[contract],
        token=info,
        amount=info.to_base(amount),
        location=location,
        valid_for=valid_for,
    )
    click.echo(json.dumps(approval.to_json()))
