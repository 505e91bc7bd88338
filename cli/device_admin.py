"""`iotsettle device list | show | rotate | revoke`: owners' view of their devices in the DeviceRegistry.

Added to the `device` group of cli/device.py (keygen, register, simulate).
"""

from __future__ import annotations

import os

import click
from rich.table import Table

from iotsettle.cli._common import emit, json_option
from iotsettle.cli._params import ADDRESS, ops_context, rpc_option, sender_options, short, when
from iotsettle.cli.device import device, password_file_option
from iotsettle.oracle.device.keys import DeviceKey, load_keystore, resolve_password
from iotsettle.oracle.protocol.device_kinds import DeviceKind, kind_label
from iotsettle.oracle.protocol.errors import KeyFileError
from iotsettle.oracle.ops import audit, billing, escrow
from iotsettle.oracle.ops import registry as ops

KINDS = [kind_label(kind) for kind in DeviceKind]


@device.command("list")
@click.option("--owner", type=ADDRESS, default=None, help="Only devices registered by this owner.")
@click.option("--kind", type=click.Choice(KINDS), default=None, help="Only devices of this kind.")
@rpc_option
@json_option
@click.pass_context
def list_cmd(ctx: click.Context, owner: str | None, kind: str | None, rpc_url: str | None, as_json: bool) -> None:
    """List registered devices (from the registry's DeviceRegistered events) with kind, status and current key.

    \b
    Example:
      iotsettle device list --owner 0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266 --kind meter
    """
    ops_ctx = ops_context(ctx, rpc_url, send=False)
    views = ops.list_devices(ops_ctx, owner=owner, kind=kind)
    table = Table("device", "kind", "status", "owner", "current key", "rotations", "registered (UTC)",
                  title=f"{len(views)} devices")
    for v in views:
        table.add_row(v.device, v.kind, v.status, short(v.owner), short(v.key), str(v.rotations),
                      when(v.registered_at)[:16])
    emit([v.as_dict() for v in views], as_json, table)


@device.command("show")
@click.argument("device_id", type=ADDRESS)
@rpc_option
@json_option
@click.pass_context
def show(ctx: click.Context, device_id: str, rpc_url: str | None, as_json: bool) -> None:
    """One device: owner, kind, status, current key, and the agreements and escrows that name it.

    \b
    Example:
      iotsettle device show 0xE7Bdb680F38e39652AdAE124F801EAF18557B714
    """
    ops_ctx = ops_context(ctx, rpc_url, send=False)
    view = ops.device_of(ops_ctx, device_id)
    agreements, escrows, _tokens = audit.device_targets(ops_ctx, view.device)
    data = {**view.as_dict(), "agreements": [str(a) for a in agreements], "escrows": escrows}
    table = Table(show_header=False, title=f"device {view.device}")
    for key, value in [("kind", view.kind), ("status", view.status), ("owner", view.owner), ("current key", view.key),
                       ("rotations", str(view.rotations)), ("registered", when(view.registered_at)),
                       ("metadata hash", view.metadata_hash)]:
        table.add_row(key, value)
    for agreement_id in agreements:
        a = billing.agreement_of(ops_ctx, agreement_id)
        table.add_row("agreement", f"{hex(agreement_id)} ({a.status}, register {a.last_value})")
    for escrow_id in escrows:
        table.add_row("escrow", f"{escrow_id} ({escrow.escrow_of(ops_ctx, escrow_id).state})")
    emit(data, as_json, table)


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
@sender_options
@rpc_option
@json_option
@click.pass_context
def rotate(ctx: click.Context, device_id: str, new_keystore: str | None, new_key_env: str | None,
           password_file: str | None, from_key_env: str | None, dev_account: int | None, rpc_url: str | None,
           as_json: bool) -> None:
    """Owner: move a device to a new signing key; the old key's signatures stop settling at once.

    The device id (its first key's address) stays, so agreements and escrows keep working with the new key.
    Keys are single-use: a key that was ever registered or rotated in cannot be used again.

    \b
    Example:
      iotsettle device keygen --out keys/ --kind meter            # on the device
      iotsettle device rotate 0xDEVICE --new-keystore keys/0xNEW.json
    """
    key = _new_key(new_keystore, new_key_env, password_file)
    ops_ctx = ops_context(ctx, rpc_url, from_key_env=from_key_env, dev_account=dev_account)
    before = ops.device_of(ops_ctx, device_id)
    result = ops.rotate(ops_ctx, device_id, key)
    emit({"device": before.device, "oldKey": before.key, "newKey": key.address, "tx": result.tx_hash,
          "block": result.block}, as_json,
         f"device {before.device}: key {before.key} → {key.address} (tx {result.tx_hash})")


@device.command("revoke")
@click.argument("device_id", type=ADDRESS)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@sender_options
@rpc_option
@json_option
@click.pass_context
def revoke(ctx: click.Context, device_id: str, yes: bool, from_key_env: str | None, dev_account: int | None,
           rpc_url: str | None, as_json: bool) -> None:
    """Owner: revoke a device for good (a stolen or broken device); nothing it signs settles any more.

    \b
    Example:
      iotsettle device revoke 0xE7Bdb680F38e39652AdAE124F801EAF18557B714 --yes
    """
    if not yes:
        click.confirm(f"Revoke device {device_id} for good?", abort=True)
    ops_ctx = ops_context(ctx, rpc_url, from_key_env=from_key_env, dev_account=dev_account)
    result = ops.revoke(ops_ctx, device_id)
    emit({"device": device_id, "tx": result.tx_hash, "block": result.block}, as_json,
         f"device {device_id} revoked (tx {result.tx_hash})")
