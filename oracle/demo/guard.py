"""The demo's device-guard step: the shop makes its own phone the second factor of its withdrawals, and takes its
parcel payments (above the threshold) with the phone's approval (docs/products/device-guard.md)."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
from typing import Any

from eth_account.signers.local import LocalAccount
from iotsettle.oracle.device.keys import DeviceKey
from iotsettle.oracle.ops import escrow, guard, registry, token
from iotsettle.oracle.ops.context import OpsContext
from iotsettle.oracle.ops.tx import RevertedError
from iotsettle.oracle.protocol.device_kinds import DeviceKind

#: The phone's allowed cell and where it is when it approves (inside the cell).
CELL = "u33d"
PHONE_AT = "u33dc0cr"


def guarded_withdrawal(ctx: OpsContext, shop: LocalAccount, report: Callable[[str], None]) -> dict[str, Any] | None:
    """Opt the shop in with a fresh phone, show the key alone refused, then withdraw with the phone's approval.

    Returns what happened, or None when the shop has nothing credited (no parcel was delivered)."""
    as_shop = dataclasses.replace(ctx, sender=shop)
    test = token.describe_token(ctx, token.TEST)
    credit = escrow.withdrawable(ctx, test, shop.address)
    if credit == 0:
        report("device guard: the shop has no parcel payment to withdraw; step skipped")
        return None
    phone = DeviceKey.from_private_key(secrets.token_bytes(32))
    registry.register(as_shop, phone, DeviceKind.TRACKER)
    threshold = credit // 4
    guard.set_guard(as_shop, phone, test, threshold, (CELL,))
    report(
        f"device guard: the shop guards its withdrawals above {test.format(threshold)} with its phone {phone.address} "
        f"(allowed cell {CELL})"
    )
    try:
        escrow.withdraw(as_shop, test)
        refused = ""
    except RevertedError as exc:
        refused = str(exc)
    report(f"  the shop's key alone, for {test.format(credit)}: {refused or 'paid (unexpected)'}")
    approval = guard.sign_approval(
        as_shop, phone, account=shop.address, ledger=escrow.CONTRACT, token=test, amount=credit, location=PHONE_AT
    )
    guard.submit_approval(as_shop, approval, escrow.CONTRACT)
    result, paid = escrow.withdraw(as_shop, test)
    report(f"  with the phone's approval (at {PHONE_AT}): {test.format(paid)} withdrawn (tx {result.tx_hash})")
    return {
        "account": shop.address,
        "device": phone.address,
        "threshold": str(threshold),
        "cells": [CELL],
        "refusedWithoutDevice": refused,
        "withdrawn": str(paid),
        "tx": result.tx_hash,
    }
