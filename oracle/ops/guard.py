"""WithdrawalGuard operations: an account's own device as the second factor of its withdrawals (set, show, clear,
recover) and the device's approval of one withdrawal (sign, submit). docs/products/device-guard.md.

The account opts in at the guard (its device signs the ``GuardUpdate``) and at every ledger that credits it (each
product's ``setWithdrawalGuard``): :data:`LEDGERS` are the contracts built on the pull-payment base.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any

from eth_utils import is_address, to_checksum_address
from iotsettle.oracle.device.keys import DeviceKey
from iotsettle.oracle.ops.amounts import ZERO_ADDRESS, TokenInfo
from iotsettle.oracle.ops.context import OpsContext
from iotsettle.oracle.ops.tx import TxResult, transact
from iotsettle.oracle.ops.vocabulary import GUARDED_LEDGERS
from iotsettle.oracle.protocol import eip712
from iotsettle.oracle.protocol.errors import ProtocolError
from iotsettle.oracle.protocol.location import location_bytes32, location_geohash

log = logging.getLogger(__name__)

CONTRACT = "WithdrawalGuard"

#: The contracts whose credits leave through the pull-payment base's ``withdraw`` (the ones a guard covers).
LEDGERS = tuple(GUARDED_LEDGERS.values())

#: What an approval file says it is (``iotsettle device approve`` writes it, ``--approval FILE`` reads it).
APPROVAL_FORMAT = "iotsettle-withdrawal-approval/1"


@dataclass(frozen=True)
class LedgerGuard:
    """One ledger's side of an account's guard of one token."""

    name: str
    address: str
    guarded: bool  # the ledger sends this account's withdrawals of the token through the guard
    withdrawable: int
    spent: int  # taken without the device since it last approved
    approved: int  # an unused device approval: up to this much, once
    approved_until: int


@dataclass(frozen=True)
class GuardView:
    account: str
    token: TokenInfo
    guard: str
    enabled: bool
    threshold: int
    cells: tuple[str, ...]
    recovery_ready_at: int
    nonce: int
    ledgers: tuple[LedgerGuard, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "token": self.token.address,
            "symbol": self.token.symbol,
            "guard": self.guard,
            "enabled": self.enabled,
            "threshold": str(self.threshold),
            "cells": list(self.cells),
            "recoveryReadyAt": self.recovery_ready_at,
            "nonce": self.nonce,
            "ledgers": [
                {
                    "name": led.name,
                    "address": led.address,
                    "guarded": led.guarded,
                    "withdrawable": str(led.withdrawable),
                    "spentWithoutDevice": str(led.spent),
                    "approved": str(led.approved),
                    "approvedUntil": led.approved_until,
                }
                for led in self.ledgers
            ],
        }


@dataclass(frozen=True)
class Approval:
    """A device's signed approval of one withdrawal: what ``iotsettle device approve`` prints."""

    chain_id: int
    ledger: str
    account: str
    token: str
    amount: int
    nonce: int
    deadline: int
    location: bytes
    device: str
    signature: bytes

    def message(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "token": self.token,
            "amount": self.amount,
            "nonce": self.nonce,
            "deadline": self.deadline,
            "location": self.location,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "format": APPROVAL_FORMAT,
            "chainId": self.chain_id,
            "ledger": self.ledger,
            "account": self.account,
            "token": self.token,
            "amount": str(self.amount),
            "nonce": str(self.nonce),
            "deadline": self.deadline,
            "location": geohash_or_none(self.location),
            "device": self.device,
            "signature": "0x" + self.signature.hex(),
        }

    @classmethod
    def from_json(cls, text: str) -> Approval:
        """Parse an approval file; raises ProtocolError for anything that is not one, or whose signature is not the
        device's it names."""
        try:
            raw = json.loads(text)
            if raw.get("format") != APPROVAL_FORMAT:
                raise ProtocolError(f"not a withdrawal approval (format {raw.get('format')!r}, not {APPROVAL_FORMAT})")
            for name in ("ledger", "account", "token", "device"):
                if not is_address(raw[name]):
                    raise ProtocolError(f"the approval's {name} {raw[name]!r} is not an address")
            approval = cls(
                chain_id=int(raw["chainId"]),
                ledger=to_checksum_address(raw["ledger"]),
                account=to_checksum_address(raw["account"]),
                token=to_checksum_address(raw["token"]),
                amount=int(raw["amount"]),
                nonce=int(raw["nonce"]),
                deadline=int(raw["deadline"]),
                location=location_bytes32(raw["location"]) if raw["location"] else bytes(32),
                device=to_checksum_address(raw["device"]),
                signature=bytes.fromhex(str(raw["signature"]).removeprefix("0x")),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProtocolError(f"not a withdrawal approval: {exc}") from None
        signer = eip712.recover(approval.digest(), approval.signature)
        if signer != approval.device:
            raise ProtocolError(f"the approval is signed by {signer}, not by the device it names ({approval.device})")
        return approval

    def digest(self) -> bytes:
        return eip712.digest("WithdrawalApproval", self.message(), eip712.Domain(self.chain_id, self.ledger))


def geohash_or_none(location: bytes) -> str:
    """The geohash a device reported, or "" for the zero word (no location)."""
    return location_geohash(location) if any(location) else ""


def _token_word(token: TokenInfo) -> str:
    return to_checksum_address(token.address)


def guard_of(ctx: OpsContext, account: str, token: TokenInfo) -> GuardView:
    """The account's guard of ``token`` at the guard and at every deployed ledger."""
    guard = ctx.contract(CONTRACT)
    enabled, ready_at, threshold, cells = guard.functions.guardOf(account, token.address).call()
    ledgers: list[LedgerGuard] = []
    for name in LEDGERS:
        if not ctx.has(name):
            continue
        ledger = ctx.contract(name)
        approved, until = guard.functions.approvalAt(ledger.address, account, token.address).call()
        ledgers.append(
            LedgerGuard(
                name=name,
                address=ledger.address,
                guarded=ledger.functions.withdrawalGuardOf(token.address, account).call() == guard.address,
                withdrawable=int(ledger.functions.withdrawable(token.address, account).call()),
                spent=int(guard.functions.spentAt(ledger.address, account, token.address).call()),
                approved=int(approved),
                approved_until=int(until),
            )
        )
    return GuardView(
        account=to_checksum_address(account),
        token=token,
        guard=guard.address,
        enabled=bool(enabled),
        threshold=int(threshold),
        cells=tuple(location_geohash(bytes(c)) for c in cells),
        recovery_ready_at=int(ready_at),
        nonce=int(guard.functions.nonces(account).call()),
        ledgers=tuple(ledgers),
    )


def _deadline(ctx: OpsContext, valid_for: int) -> int:
    return int(ctx.w3.eth.get_block("latest")["timestamp"]) + valid_for


def sign_update(
    ctx: OpsContext,
    device: DeviceKey,
    account: str,
    token: TokenInfo,
    *,
    enabled: bool,
    threshold: int,
    cells: tuple[str, ...],
    deadline: int,
) -> bytes:
    """The device's signature of a ``GuardUpdate`` at the account's current nonce, checked against the guard's own
    digest (one source of truth: oracle/protocol/eip712.py)."""
    guard = ctx.contract(CONTRACT)
    words = [location_bytes32(c) for c in cells]
    nonce = int(guard.functions.nonces(account).call())
    message = {
        "account": account,
        "token": _token_word(token),
        "enabled": enabled,
        "threshold": threshold,
        "cells": words,
        "nonce": nonce,
        "deadline": deadline,
    }
    digest = eip712.digest("GuardUpdate", message, eip712.Domain(ctx.chain.chain_id, guard.address))
    on_chain = bytes(
        guard.functions.hashGuardUpdate(account, token.address, enabled, threshold, words, nonce, deadline).call()
    )
    if on_chain != digest:
        raise ProtocolError(
            f"the guard at {guard.address} computes another GuardUpdate digest than oracle/protocol/eip712.py"
        )
    return eip712.sign_digest(device.private_key, digest)


def set_guard(
    ctx: OpsContext, device: DeviceKey, token: TokenInfo, threshold: int, cells: tuple[str, ...], valid_for: int = 600
) -> list[TxResult]:
    """Guard the sender's ``token`` withdrawals (or change the guard), then point every deployed ledger at the guard."""
    account = ctx.require_sender().address
    deadline = _deadline(ctx, valid_for)
    signature = sign_update(
        ctx, device, account, token, enabled=True, threshold=threshold, cells=cells, deadline=deadline
    )
    words = [location_bytes32(c) for c in cells]
    guard = ctx.contract(CONTRACT)
    results = [transact(ctx, guard.functions.setGuard(token.address, threshold, words, deadline, signature), CONTRACT)]
    for name in LEDGERS:
        if not ctx.has(name):
            continue
        ledger = ctx.contract(name)
        if ledger.functions.withdrawalGuardOf(token.address, account).call() != guard.address:
            call = ledger.functions.setWithdrawalGuard(token.address, guard.address)
            results.append(transact(ctx, call, name))
    return results


def clear_guard(ctx: OpsContext, device: DeviceKey, token: TokenInfo, valid_for: int = 600) -> list[TxResult]:
    """Stop guarding the sender's ``token`` withdrawals with the device's consent, at the guard and every ledger."""
    account = ctx.require_sender().address
    deadline = _deadline(ctx, valid_for)
    signature = sign_update(ctx, device, account, token, enabled=False, threshold=0, cells=(), deadline=deadline)
    guard = ctx.contract(CONTRACT)
    results = [transact(ctx, guard.functions.clearGuard(token.address, deadline, signature), CONTRACT)]
    return results + _release_ledgers(ctx, token)


def _release_ledgers(ctx: OpsContext, token: TokenInfo) -> list[TxResult]:
    account = ctx.require_sender().address
    results: list[TxResult] = []
    for name in LEDGERS:
        if not ctx.has(name):
            continue
        ledger = ctx.contract(name)
        if ledger.functions.withdrawalGuardOf(token.address, account).call() != ZERO_ADDRESS:
            call = ledger.functions.setWithdrawalGuard(token.address, ZERO_ADDRESS)
            results.append(transact(ctx, call, name))
    return results


@dataclass(frozen=True)
class Recovery:
    stage: str  # "started" | "pending" | "cleared"
    ready_at: int
    txs: tuple[TxResult, ...]


def recover(ctx: OpsContext, token: TokenInfo) -> Recovery:
    """The device is lost: start the time-locked recovery, or finish it once its delay has passed."""
    account = ctx.require_sender().address
    guard = ctx.contract(CONTRACT)
    enabled, ready_at, _, _ = guard.functions.guardOf(account, token.address).call()
    if not enabled:
        return Recovery("cleared", 0, tuple(_release_ledgers(ctx, token)))
    if int(ready_at) == 0:
        tx = transact(ctx, guard.functions.startRecovery(token.address), CONTRACT)
        ready = int(guard.functions.guardOf(account, token.address).call()[1])
        return Recovery("started", ready, (tx,))
    now = int(ctx.w3.eth.get_block("latest")["timestamp"])
    if now < int(ready_at):
        return Recovery("pending", int(ready_at), ())
    tx = transact(ctx, guard.functions.finishRecovery(token.address), CONTRACT)
    return Recovery("cleared", int(ready_at), (tx, *_release_ledgers(ctx, token)))


def sign_approval(
    ctx: OpsContext,
    device: DeviceKey,
    *,
    account: str,
    ledger: str,
    token: TokenInfo,
    amount: int,
    location: str | None,
    valid_for: int = 600,
) -> Approval:
    """The device approves ``account``'s next withdrawal of up to ``amount`` from the ledger contract ``ledger``
    (a name of :data:`LEDGERS`), at the account's current guard nonce."""
    guard = ctx.contract(CONTRACT)
    ledger_address = ctx.address(ledger)
    account = to_checksum_address(account)
    approval = Approval(
        chain_id=ctx.chain.chain_id,
        ledger=to_checksum_address(ledger_address),
        account=account,
        token=_token_word(token),
        amount=amount,
        nonce=int(guard.functions.nonces(account).call()),
        deadline=_deadline(ctx, valid_for),
        location=location_bytes32(location) if location else bytes(32),
        device=device.address,
        signature=b"",
    )
    digest = approval.digest()
    on_chain = bytes(
        guard.functions.hashWithdrawalApproval(
            approval.ledger,
            account,
            token.address,
            amount,
            approval.nonce,
            approval.deadline,
            approval.location,
        ).call()
    )
    if on_chain != digest:
        raise ProtocolError(
            f"the guard at {guard.address} computes another WithdrawalApproval digest than oracle/protocol/eip712.py"
        )
    return dataclasses.replace(approval, signature=eip712.sign_digest(device.private_key, digest))


def submit_approval(ctx: OpsContext, approval: Approval, ledger: str) -> TxResult:
    """Record the device's approval at the guard before the sender withdraws from ``ledger``; refuses one written
    for another sender, ledger or chain before anything is sent."""
    sender = ctx.require_sender().address
    if approval.chain_id != ctx.chain.chain_id:
        raise ProtocolError(f"the approval is for chain {approval.chain_id}, the node is chain {ctx.chain.chain_id}")
    if approval.ledger != to_checksum_address(ctx.address(ledger)):
        raise ProtocolError(f"the approval is for the contract at {approval.ledger}, not {ledger}")
    if approval.account != sender:
        raise ProtocolError(f"the approval is for {approval.account}, the sender is {sender}")
    call = ctx.contract(CONTRACT).functions.approveWithdrawal(
        approval.ledger, approval.token, approval.amount, approval.deadline, approval.location, approval.signature
    )
    return transact(ctx, call, CONTRACT)
