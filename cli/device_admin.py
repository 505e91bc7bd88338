"""`iotsettle device list | show | rotate | revoke`: owners' view of their devices in the DeviceRegistry.

Added to the `device` group of cli/device.py (keygen, register, simulate).
"""

from __future__ import annotations

import os

import click
from rich.table import Table

from iotsettle.cli._params import ADDRESS, CommandContext, short, when, with_context
from iotsettle.cli.device import device, password_file_option
from iotsettle.oracle.device.keys import DeviceKey, load_keystore, resolve_password
from iotsettle.oracle.protocol.errors import KeyFileError
from iotsettle.oracle.ops import audit, billing, escrow
from iotsettle.oracle.ops import registry as ops

KINDS = ["meter", "tracker", "vehicle", "weather station"]


@device.command("list")
@click.option("--owner", type=ADDRESS, default=None, help="Only devices registered by this owner.")
@click.option("--kind", type=click.Choice(KINDS), default=None, help="Only devices of this kind.")
@with_context(rpc=True)
def list_cmd(cmd: CommandContext, owner: str | None, kind: str | None) -> None:
    """List registered devices (from the registry's DeviceRegistered events) with kind, status and current key.

    \b
    Example:
      iotsettle device list --owner 0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266 --kind meter
    """
    views = ops.list_devices(cmd.ops, owner=owner, kind=kind)
    table = Table("device", "kind", "status", "owner", "current key", "rotations", "registered (UTC)",
                  title=f"{len(views)} devices")
    for v in views:
        table.add_row(v.device, v.kind, v.status, short(v.owner), short(v.key), str(v.rotations),
                      when(v.registered_at)[:16])
    cmd.emit([v.as_dict() for v in views], table)


@device.command("show")
@click.argument("device_id", type=ADDRESS)
@with_context(rpc=True)
def show(cmd: CommandContext, device_id: str) -> None:
    """One device: owner, kind, status, current key, and the agreements and escrows that name it.

    \b
    Example:
      iotsettle device show 0xE7Bdb680F38e39652AdAE124F801EAF18557B714
    """
    view = ops.device_of(cmd.ops, device_id)
    agreements, escrows, _tokens = audit.device_targets(cmd.ops, view.device)
    data = {**view.as_dict(), "agreements": [str(a) for a in agreements], "escrows": escrows}
    table = Table(show_header=False, title=f"device {view.device}")
    for key, value in [("kind", view.kind), ("status", view.status), ("owner", view.owner), ("current key", view.key),
                       ("rotations", str(view.rotations)), ("registered", when(view.registered_at)),
                       ("metadata hash", view.metadata_hash)]:
        table.add_row(key, value)
    for agreement_id in agreements:
        a = billing.agreement_of(cmd.ops, agreement_id)
        table.add_row("agreement", f"{hex(agreement_id)} ({a.status}, register {a.last_value})")
    for escrow_id in escrows:
        table.add_row("escrow", f"{escrow_id} ({escrow.escrow_of(cmd.ops, escrow_id).state})")
    cmd.emit(data, table)


def _new_key(keystore: str | None, key_env: str | None, password_file: str | None) -> DeviceKey:
    if (keystore is None) == (key_env is None):
        raise click.UsageError("give exactly one of --new-keystore or --new-key-env")
    if keystore is not None:
        return load_keystore(keystore, resolve_password(password_file))
    assert key_env is not None
    value = os.environ.get(key_env, "")
    if not value:
        raise KeyFileError(f"the environment variable {key_env} is empty or not set")
    return DeviceKey.from_private_key(value)


@device.command("rotate")
@click.argument("device_id", type=ADDRESS)
@click.option("--new-keystore", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Keystore of the new key (`iotsettle device keygen` makes one); it signs its consent.")
@click.option("--new-key-env", metavar="NAME", default=None, help="Or: environment variable holding the new hex key.")
@password_file_option
@with_context(sender=True)
def rotate(cmd: CommandContext, device_id: str, new_keystore: str | None, new_key_env: str | None,
           password_file: str | None) -> None:
    """Owner: move a device to a new signing key; the old key's signatures stop settling at once.

    The device id (its first key's address) stays, so agreements and escrows keep working with the new key.
    Keys are single-use: a key that was ever registered or rotated in cannot be used again.

    \b
    Example:
      iotsettle device keygen --out keys/ --kind meter            # on the device
      iotsettle device rotate 0xDEVICE --new-keystore keys/0xNEW.json
    """
    key = _new_key(new_keystore, new_key_env, password_file)
    before = ops.device_of(cmd.ops, device_id)
    result = ops.rotate(cmd.ops, device_id, key)
    cmd.emit({"device": before.device, "oldKey": before.key, "newKey": key.address, "tx": result.tx_hash,
              "block": result.block},
             f"device {before.device}: key {before.key} → {key.address} (tx {result.tx_hash})")


@device.command("revoke")
@click.argument("device_id", type=ADDRESS)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_context(sender=True)
def revoke(cmd: CommandContext, device_id: str, yes: bool) -> None:
    """Owner: revoke a device for good (a stolen or broken device); nothing it signs settles any more.

    \b
    Example:
      iotsettle device revoke 0xE7Bdb680F38e39652AdAE124F801EAF18557B714 --yes
    """
    if not yes:
        click.confirm(f"Revoke device {device_id} for good?", abort=True)
    result = ops.revoke(cmd.ops, device_id)
    cmd.emit({"device": device_id, "tx": result.tx_hash, "block": result.block},
             f"device {device_id} revoked (tx {result.tx_hash})")
