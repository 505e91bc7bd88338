"""DeviceRegistry operations for owners: list, show, rotate a device's key, revoke it (and register, for scripts)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from eth_utils import to_checksum_address
from iotsettle.oracle.device.keys import DeviceKey
from iotsettle.oracle.device.signer import sign_key_rotation, sign_registration
from iotsettle.oracle.ops.context import OpsContext
from iotsettle.oracle.ops.events import fetch_logs
from iotsettle.oracle.ops.sentences import DEVICE_KINDS
from iotsettle.oracle.ops.tx import TxResult, transact, transact_many
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.errors import ChainError

log = logging.getLogger(__name__)

CONTRACT = "DeviceRegistry"
DEVICE_STATUSES = ("none", "active", "revoked")
KEY_STATUSES = ("none", "current", "rotated", "revoked")
#: a signature for a registry action stays valid this long (seconds of chain time)
SIGNATURE_TTL = 3600


@dataclass(frozen=True)
class DeviceView:
    device: str
    owner: str
    kind: str
    status: str
    registered_at: int
    key: str
    rotations: int
    metadata_hash: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_of(ctx: OpsContext, device: str) -> DeviceView:
    device = to_checksum_address(device)
    raw = ctx.contract(CONTRACT).functions.deviceOf(device).call()
    status = int(raw[2])
    if status == 0:
        key_device, _kind, key_status, _retired_at = ctx.contract(CONTRACT).functions.keyInfo(device).call()
        if int(key_status) != 0:
            raise ChainError(f"{device} is not a device id but a key of device {key_device}")
        raise ChainError(f"device {device} is not registered on chain {ctx.chain.chain_id}")
    kind = int(raw[1])
    return DeviceView(
        device,
        raw[0],
        DEVICE_KINDS[kind] if kind < len(DEVICE_KINDS) else str(kind),
        DEVICE_STATUSES[status] if status < len(DEVICE_STATUSES) else str(status),
        int(raw[3]),
        raw[4],
        int(raw[5]),
        "0x" + bytes(raw[6]).hex(),
    )


def key_status(ctx: OpsContext, key: str) -> tuple[str, str]:
    """(device id, status) of a signing key."""
    device, _kind, status, _retired_at = ctx.contract(CONTRACT).functions.keyInfo(to_checksum_address(key)).call()
    return device, KEY_STATUSES[int(status)] if int(status) < len(KEY_STATUSES) else str(status)


def list_devices(ctx: OpsContext, *, owner: str | None = None, kind: str | None = None) -> list[DeviceView]:
    views = []
    for entry in fetch_logs(ctx, CONTRACT, ["DeviceRegistered"]):
        if owner and to_checksum_address(owner) != entry.args["owner"]:
            continue
        view = device_of(ctx, entry.args["device"])
        if kind and view.kind != kind:
            continue
        views.append(view)
    return views


def _deadline(ctx: OpsContext) -> int:
    return int(ctx.w3.eth.get_block("latest")["timestamp"]) + SIGNATURE_TTL


def register(ctx: OpsContext, key: DeviceKey, kind: DeviceKind, metadata_hash: bytes = b"\0" * 32) -> TxResult:
    """Register ``key``'s device to the sender, with the device key's consent signature."""
    owner = ctx.require_sender().address
    deadline = _deadline(ctx)
    _digest, signature = sign_registration(
        key,
        owner=owner,
        kind=kind,
        metadata_hash=metadata_hash,
        deadline=deadline,
        chain_id=ctx.chain.chain_id,
        registry=ctx.address(CONTRACT),
    )
    call = ctx.contract(CONTRACT).functions.register(key.address, int(kind), metadata_hash, deadline, signature)
    return transact(ctx, call, CONTRACT)


def rotate(ctx: OpsContext, device: str, new_key: DeviceKey) -> TxResult:
    """Owner moves ``device`` to ``new_key``, which signs its consent; the old key stops being accepted."""
    device = to_checksum_address(device)
    deadline = _deadline(ctx)
    _digest, signature = sign_key_rotation(
        new_key, device=device, deadline=deadline, chain_id=ctx.chain.chain_id, registry=ctx.address(CONTRACT)
    )
    call = ctx.contract(CONTRACT).functions.rotateKey(device, new_key.address, deadline, signature)
    return transact(ctx, call, CONTRACT)


def revoke(ctx: OpsContext, device: str) -> TxResult:
    """Owner revokes ``device`` for good: its key's signatures stop settling anything."""
    return transact(ctx, ctx.contract(CONTRACT).functions.revoke(to_checksum_address(device)), CONTRACT)


def register_many(ctx: OpsContext, devices: list[tuple[DeviceKey, DeviceKind]]) -> list[TxResult]:
    """Register many devices to the sender, back to back (bulk set-up)."""
    owner = ctx.require_sender().address
    deadline = _deadline(ctx)
    registry = ctx.contract(CONTRACT)
    calls = []
    for key, kind in devices:
        _digest, signature = sign_registration(
            key,
            owner=owner,
            kind=kind,
            metadata_hash=b"\0" * 32,
            deadline=deadline,
            chain_id=ctx.chain.chain_id,
            registry=ctx.address(CONTRACT),
        )
        calls.append(registry.functions.register(key.address, int(kind), b"\0" * 32, deadline, signature))
    return transact_many(ctx, calls, CONTRACT, gas=250_000)
