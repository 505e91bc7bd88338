"""Turn a revert into a sentence: "escrow 7 was already released on block 1234".

Decoding (selector → error name and arguments, ``Error(string)``, ``Panic(uint256)``) is shared with the oracle
daemon: ``iotsettle.oracle.chain.revert.ErrorDecoder``. This module adds what an operator needs on top: given the
contract that was called and, optionally, an :class:`~iotsettle.oracle.ops.context.OpsContext`, it writes a sentence
with what only the chain knows (the block an escrow was released in, an agreement's arrears, a token's decimals).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from eth_utils import is_address, to_checksum_address
from iotsettle.oracle.chain.revert import ErrorDecoder, reason_label
from iotsettle.oracle.ops.amounts import format_amount
from iotsettle.oracle.ops.events import escrow_final_block
from iotsettle.oracle.ops.token_info import describe_token
from iotsettle.oracle.ops.vocabulary import AGREEMENT_STATUSES, ESCROW_STATES
from iotsettle.oracle.protocol import batch_tree
from iotsettle.oracle.protocol.device_kinds import DeviceKind, kind_label

if TYPE_CHECKING:
    from iotsettle.oracle.ops.context import OpsContext

log = logging.getLogger(__name__)

DEVICE_KINDS = ("none", *(kind_label(kind) for kind in DeviceKind))  # indexed by the registry's kind number


@dataclass(frozen=True)
class DecodedRevert:
    """A decoded revert: the error's name, its arguments by name, and the sentence for people."""

    name: str
    args: dict[str, Any]
    sentence: str
    contract: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "error": self.name,
            "args": {k: _jsonable(v) for k, v in self.args.items()},
            "message": self.sentence,
            "contract": self.contract,
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        return str(value)
    return value


def _checksummed(value: Any) -> Any:
    return to_checksum_address(value) if isinstance(value, str) and len(value) == 42 and is_address(value) else value


class RevertDecoder:
    """Decodes reverts of the contracts whose ABIs it was built from, into sentences."""

    def __init__(self, errors: ErrorDecoder) -> None:
        self._errors = errors

    @classmethod
    def from_abis(cls, abis: Mapping[str, Iterable[Mapping[str, Any]]]) -> RevertDecoder:
        return cls(ErrorDecoder(list(abi) for abi in abis.values()))

    def decode(
        self, data: bytes | str | None, contract: str | None = None, ctx: OpsContext | None = None
    ) -> DecodedRevert:
        """Decode revert ``data`` raised by a call to ``contract``; unknown data still gives a sentence."""
        decoded = self._errors.decode(data)
        args = {name: _checksummed(value) for name, value in decoded.args}
        if decoded.name in ("unknown", "Error", "Panic", "Reverted"):
            return DecodedRevert(decoded.name, args, f"the {_what(contract)} {decoded.sentence}", contract)
        sentence = ""
        writer = _SENTENCES.get(decoded.name)
        if writer is not None:
            try:
                sentence = writer(_Facts(args, contract, ctx))
            except Exception as exc:
                log.debug("context lookup for %s failed: %s", decoded.name, exc)
        if not sentence:
            sentence = f"the {_what(contract)} refused: {decoded.sentence}"
        return DecodedRevert(decoded.name, args, sentence, contract)


def _what(contract: str | None) -> str:
    return {
        "DeliveryEscrow": "escrow contract",
        "MeteredBilling": "billing contract",
        "OptimisticBilling": "optimistic billing contract",
        "DeviceRegistry": "device registry",
        "TestToken": "token",
    }.get(contract or "", "contract")


# ---------------------------------------------------------------------------------------------- sentences


@dataclass(frozen=True)
class _Facts:
    """The decoded arguments plus, when available, the chain to look further."""

    args: dict[str, Any]
    contract: str | None
    ctx: OpsContext | None

    def __getitem__(self, key: str) -> Any:
        return self.args[key]

    def when(self, ts: int) -> str:
        return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    def escrow_outcome(self, escrow_id: int) -> str:
        """' on block N' for the event that ended ``escrow_id``, when the chain can tell."""
        if self.ctx is None or not self.ctx.has("DeliveryEscrow"):
            return ""
        block = escrow_final_block(self.ctx, escrow_id)
        return f" on block {block}" if block is not None else ""

    def agreement(self, agreement_id: int) -> dict[str, Any] | None:
        holder = "OptimisticBilling" if batch_tree.is_optimistic(agreement_id) else "MeteredBilling"
        if self.ctx is None or not self.ctx.has(holder):
            return None
        return _agreement_tuple(self.ctx.contract(holder).functions.agreementOf(agreement_id).call())

    def token_amount(self, base: int, token: str | None = None) -> str:
        if self.ctx is None:
            return f"{base} base units"
        info = describe_token(self.ctx, token) if token is not None else None
        if info is None:
            return f"{base} base units"
        return format_amount(base, info.decimals, info.symbol)


_AGREEMENT_FIELDS = (
    "provider",
    "consumer",
    "device",
    "token",
    "tariffId",
    "status",
    "noticePeriod",
    "closeAt",
    "startValue",
    "lastValue",
    "lastSeq",
    "lastTimestamp",
    "prepaid",
    "arrears",
    "deposited",
    "withdrawn",
)


def _agreement_tuple(value: Any) -> dict[str, Any]:
    return dict(zip(_AGREEMENT_FIELDS, value, strict=True))


def _state(names: tuple[str, ...], value: int) -> str:
    return names[value] if 0 <= value < len(names) else f"state {value}"


def _not_funded(f: _Facts) -> str:
    escrow_id, state = f["escrowId"], _state(ESCROW_STATES, f["state"])
    if state == "none":
        return f"escrow {escrow_id} does not exist"
    return f"escrow {escrow_id} was already {state}{f.escrow_outcome(escrow_id)}"


def _event_rejected(f: _Facts) -> str:
    target, seq = f["targetId"], f["seq"]
    reason = reason_label(int(f["reason"]))
    if f.contract == "DeliveryEscrow":
        return _delivery_rejected(f, target, seq, reason)
    return _reading_rejected(f, target, seq, reason)


def _common_rejection(noun: str, target: int, seq: int, reason: str) -> str | None:
    event = f"{noun} event seq {seq}"
    return {
        "SignatureInvalid": f"the signature of {event} for {target} does not recover to an address",
        "SignatureMalleable": f"the signature of {event} for {target} is malleable (high s); sign again",
        "UnknownKey": f"{event} for {target} was signed by a key that was never registered",
        "KeyRotated": f"{event} for {target} was signed by a key its device had rotated out, or relayed more than "
        "the settlement grace after the rotation",
        "DeviceRevoked": f"{event} for {target} was signed by a revoked device, or relayed more than the settlement "
        "grace after the revocation",
        "WrongDevice": f"{event} for {target} was signed by another device than the one {target} names",
        "WrongDeviceKind": f"{event} for {target} comes from a device of the wrong kind",
        "TimestampInFuture": f"{event} for {target} is dated more than the allowed clock skew ahead of the chain",
        "ValueOutOfRange": f"{event} for {target} carries a value or seq that does not fit on chain",
    }.get(reason)


def _delivery_rejected(f: _Facts, escrow_id: int, seq: int, reason: str) -> str:
    common = _common_rejection("delivery", escrow_id, seq, reason)
    if common:
        return common.replace(f"for {escrow_id}", f"for escrow {escrow_id}").replace(
            f"the one {escrow_id} names", f"the tracker escrow {escrow_id} names"
        )
    if reason == "UnknownTarget":
        return f"escrow {escrow_id} does not exist"
    if reason == "Replayed":
        return f"escrow {escrow_id} was already released{f.escrow_outcome(escrow_id)}"
    if reason == "NotActive":
        state = ""
        if f.ctx is not None:
            state = _state(
                ESCROW_STATES, int(f.ctx.contract("DeliveryEscrow").functions.escrowOf(escrow_id).call()[10])
            )
        return f"escrow {escrow_id} was already {state or 'closed'}{f.escrow_outcome(escrow_id)}"
    if reason == "WrongLocation":
        return f"the delivery (seq {seq}) was signed at another location than escrow {escrow_id}'s destination"
    if reason == "DeadlinePassed":
        deadline = ""
        if f.ctx is not None:
            deadline = " (" + f.when(f.ctx.contract("DeliveryEscrow").functions.escrowOf(escrow_id).call()[7]) + ")"
        return f"the delivery (seq {seq}) is dated after escrow {escrow_id}'s deadline{deadline}"
    if reason == "TimestampTooOld":
        return f"the delivery (seq {seq}) is dated before escrow {escrow_id} was created"
    return f"delivery seq {seq} for escrow {escrow_id} was rejected: {reason}"


def _reading_rejected(f: _Facts, agreement_id: int, seq: int, reason: str) -> str:
    common = _common_rejection("reading", agreement_id, seq, reason)
    if common:
        return common.replace(f"for {agreement_id}", f"for agreement {agreement_id}").replace(
            f"the one {agreement_id} names", "the agreement's meter"
        )
    a = (
        f.agreement(agreement_id)
        if reason in {"Replayed", "NotActive", "CounterRollback", "Suspended", "TimestampTooOld", "AfterEnd"}
        else None
    )
    if reason == "UnknownTarget":
        return f"agreement {agreement_id} does not exist"
    if reason == "Replayed":
        last = f" (the last settled seq is {a['lastSeq']})" if a else ""
        return f"reading seq {seq} of agreement {agreement_id} was already settled or superseded{last}"
    if reason == "NotActive":
        status = _state(AGREEMENT_STATUSES, a["status"]) if a else "not active"
        return f"agreement {agreement_id} is {status}, so it settles no readings"
    if reason == "CounterRollback":
        last = f" {a['lastValue']}" if a else ""
        return f"reading seq {seq} of agreement {agreement_id} goes below the last settled register value{last}"
    if reason == "TimestampTooOld":
        return f"reading seq {seq} of agreement {agreement_id} is dated before the last settled reading"
    if reason == "Suspended":
        owed = f" of {f.token_amount(a['arrears'], a['token'])}" if a else ""
        return f"agreement {agreement_id} is suspended for arrears{owed}; top it up first"
    if reason == "AfterEnd":
        end = f" ({f.when(a['closeAt'])})" if a else ""
        return (
            f"reading seq {seq} of agreement {agreement_id} is dated after the agreement's close time{end}, "
            "so there is nothing to bill"
        )
    return f"reading seq {seq} for agreement {agreement_id} was rejected: {reason}"


def _agreement_status(f: _Facts) -> str:
    status = _state(AGREEMENT_STATUSES, f["status"])
    agreement_id = f["agreementId"]
    if status == "offered":
        return f"agreement {agreement_id} is only offered: the consumer has not accepted it yet"
    return f"agreement {agreement_id} is {status}, which does not allow this"


def _nothing_to_withdraw(f: _Facts) -> str:
    token = f["token"]
    what = "ETH" if int(token, 16) == 0 else f"token {token}"
    if f.ctx is not None and int(token, 16) != 0:
        what = describe_token(f.ctx, token).symbol
    return f"{f['account']} has no {what} to withdraw from the {_what(f.contract)}"


# ---- ICommonErrors as MeteredBilling and DeliveryEscrow raise them (one sentence each, the noun from the contract)


def _noun(contract: str | None) -> str:
    return {"DeliveryEscrow": "escrow", "MeteredBilling": "agreement", "OptimisticBilling": "agreement"}.get(
        contract or "", "id"
    )


def _too_early(f: _Facts) -> str:
    target, not_before = f["id"], int(f["notBefore"])
    wait = not_before - int(f["timestamp"])
    act = {
        "DeliveryEscrow": ("refunded", "deliveries signed by the deadline may still arrive until then"),
        "MeteredBilling": ("closed", "readings signed by closeAt may still arrive until then"),
        "OptimisticBilling": (
            "closed",
            "readings signed by closeAt may still be committed, challenged and claimed until then",
        ),
    }.get(f.contract or "", ("ended", "events signed before the end may still arrive until then"))
    return f"{_noun(f.contract)} {target} can be {act[0]} from {f.when(not_before)}, {wait} s from now: {act[1]}"


def _terms_mismatch(f: _Facts) -> str:
    target = f["id"]
    expected, accepted = int.from_bytes(f["expected"], "big"), int.from_bytes(f["accepted"], "big")
    if f.contract in ("MeteredBilling", "OptimisticBilling"):
        return (
            f"the offer of agreement {target} bills the meter from register {expected}, not {accepted}: "
            "check the meter and accept the value the offer names, or ask the provider for a new offer"
        )
    return (
        f"{_noun(f.contract)} {target} is on other terms than the ones accepted "
        f"(0x{f['expected'].hex()} on chain, 0x{f['accepted'].hex()} accepted)"
    )


def _wrong_value(f: _Facts) -> str:
    if f["received"] != f["expected"] and f["expected"] == 0:
        return "this payment is in a token, so no ETH may be sent with it"
    return f"the contract expected {f['expected']} base units but received {f['received']}"


def _insufficient_balance(f: _Facts) -> str:
    token = f.ctx.address("TestToken") if f.ctx is not None and f.ctx.has("TestToken") else None
    return (
        f"{f['sender']} holds {f.token_amount(f['balance'], token)} but the transfer needs "
        f"{f.token_amount(f['needed'], token)}"
    )


def _insufficient_allowance(f: _Facts) -> str:
    token = f.ctx.address("TestToken") if f.ctx is not None and f.ctx.has("TestToken") else None
    return (
        f"the contract {f['spender']} may only take {f.token_amount(f['allowance'], token)} but needs "
        f"{f.token_amount(f['needed'], token)}; approve more first"
    )


_SENTENCES: dict[str, Callable[[_Facts], str]] = {
    # DeliveryEscrow
    "NotFunded": _not_funded,
    "UnknownEscrow": lambda f: f"escrow {f['escrowId']} does not exist",
    "NotBuyer": lambda f: f"only the buyer of escrow {f['escrowId']} may do this, not {f['caller']}",
    "NotSeller": lambda f: f"only the seller of escrow {f['escrowId']} may do this, not {f['caller']}",
    "DeadlineNotInFuture": lambda f: (
        f"the deadline {f.when(f['deadline'])} is not in the future (chain time {f.when(f['timestamp'])})"
    ),
    "AmountTooLarge": lambda f: (
        f"an escrow of {f.token_amount(f['amount'])} is more than the contract accepts (2^128 - 1 base units)"
    ),
    "PenaltyTooHigh": lambda f: f"a penalty of {f['penaltyBps']} basis points is more than 10000 (100 %)",
    "EventRejected": _event_rejected,
    # MeteredBilling
    "UnknownAgreement": lambda f: f"agreement {f['agreementId']} does not exist",
    "NotProvider": lambda f: f"only the provider of agreement {f['agreementId']} may do this, not {f['caller']}",
    "NotConsumer": lambda f: f"only the consumer of agreement {f['agreementId']} may do this, not {f['caller']}",
    "WrongStatus": _agreement_status,
    "NoEarnings": lambda f: f"agreement {f['agreementId']} has no unwithdrawn earnings",
    "UnknownTariff": lambda f: f"tariff {f['tariffId']} does not exist",
    "InvalidTariff": lambda f: (
        "the tariff is invalid: 1 to 8 blocks, each but the last with units > 0, the last with 0"
    ),
    "BalanceOverflow": lambda f: f"the balance {f['balance']} would not fit the contract's storage",
    # shared (ICommonErrors), as MeteredBilling and DeliveryEscrow raise them
    "TooEarly": _too_early,
    "TermsMismatch": _terms_mismatch,
    "CloseNotRequested": lambda f: f"{_noun(f.contract)} {f['id']} has no close request; request one first",
    # shared
    "NothingToWithdraw": _nothing_to_withdraw,
    "WrongValue": _wrong_value,
    "ZeroAmount": lambda f: "the amount must be more than zero",
    "ZeroAddress": lambda f: "an address argument is the zero address",
    "UnknownDevice": lambda f: f"device {f['device']} is not registered or not active",
    "WrongDeviceKind": lambda f: f"device {f['device']} is of the wrong kind for this product",
    "PaymentFailed": lambda f: (
        f"paying {f['amount']} base units of {f['token']} to {f['to']} failed and could not be "
        "credited either (a paused or broken token?)"
    ),
    "NotParty": lambda f: f"{f['caller']} is not a party of {f['id']} and may not do this",
    # DeviceRegistry
    "NotDeviceOwner": lambda f: f"only the owner of device {f['device']} may do this, not {f['caller']}",
    "DeviceNotActive": lambda f: f"device {f['device']} is revoked",
    "KeyAlreadyUsed": lambda f: f"key {f['key']} was already registered or rotated in once; keys are single-use",
    "SignatureExpired": lambda f: f"the signature expired at {f.when(f['deadline'])}",
    "SignatureInvalid": lambda f: "the signature does not recover to an address",
    "SignatureMalleable": lambda f: "the signature is malleable (high s)",
    "SignatureLength": lambda f: f"the signature is {f['length']} bytes, not 65",
    "WrongSigner": lambda f: f"the signature was made by {f['recovered']}, not by {f['expected']}",
    "InvalidDeviceKind": lambda f: f"device kind {f['kind']} does not exist",
    # tokens
    "ERC20InsufficientBalance": _insufficient_balance,
    "ERC20InsufficientAllowance": _insufficient_allowance,
    "ERC20InvalidReceiver": lambda f: f"tokens cannot be sent to {f['receiver']}",
    "ERC20InvalidSender": lambda f: f"tokens cannot be sent from {f['sender']}",
    "ERC20InvalidSpender": lambda f: f"{f['spender']} cannot be approved as a spender",
    "ERC20InvalidApprover": lambda f: f"{f['approver']} cannot approve a spender",
    "InsufficientBalance": lambda f: (
        f"the contract holds {f['balance']} wei of ether but the payment needs {f['needed']}"
    ),
    "FailedCall": lambda f: "sending ether to the recipient failed (a contract that refuses payments?)",
    "SafeERC20FailedOperation": lambda f: f"the token {f['token']} refused the transfer",
    "ReentrancyGuardReentrantCall": lambda f: "a re-entrant call was refused",
    # the withdrawal guard (WithdrawalGuard, and the ledgers that call it)
    "DeviceApprovalRequired": lambda f: (
        f"withdrawing {_amount(f, f['amount'])} needs the account's device: only {_amount(f, f['allowance'])} is "
        "left below its guard's threshold; sign an approval with `iotsettle device approve` and pass it with --approval"
    ),
    "ApprovalExpired": lambda f: f"the device's approval expired at {f.when(f['deadline'])}; sign a fresh one",
    "NotAccountDevice": lambda f: (
        f"{f['signer']} is not the current key of an active device owned by {f['account']} (another device, a "
        "rotated or revoked key, or an approval signed for another amount, token, nonce, chain or contract)"
    ),
    "OutsideAllowedCells": lambda f: (
        f"the device reported {_geohash(f['location'])}, outside every cell the account's guard allows"
    ),
    "BadCells": lambda f: f"{f['count']} cells: give at most 8 geohash cells, none of them empty",
    "NotGuarded": lambda f: f"{f['account']} has no withdrawal guard for token {f['token']}",
    "RecoveryNotReady": lambda f: (
        "no recovery is pending; `iotsettle guard clear --without-device` starts one"
        if int(f["readyAt"]) == 0
        else f"the recovery clears the guard at {f.when(f['readyAt'])}, not before"
    ),
    "StillGuarded": lambda f: (
        f"{f['account']}'s withdrawals of token {f['token']} still go through its guard {f['guard']}: clear the guard "
        "first, with the device (`iotsettle guard clear`)"
    ),
}


def _amount(f: _Facts, base: Any) -> str:
    """An amount of the error's token, in its units when the token can be read."""
    token = f["token"]
    if f.ctx is None:
        return f"{base} base units"
    return describe_token(f.ctx, token).format(int(base))


def _geohash(location: Any) -> str:
    raw = bytes.fromhex(location[2:]) if isinstance(location, str) else bytes(location)
    text = raw.rstrip(b"\x00")
    return text.decode("ascii", "replace") if text else "no location"
