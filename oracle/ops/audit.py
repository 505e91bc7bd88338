"""Settlement history re-derived from chain event logs: what happened to an escrow, an agreement or a device.

Nothing here reads the oracle's database: the contracts' events are the record a lender or an auditor can
check independently. Each entry carries the block, its time, the transaction hash and the amount moved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from eth_utils import to_checksum_address
from iotsettle.oracle.chain.revert import reason_label
from iotsettle.oracle.ops.context import OpsContext
from iotsettle.oracle.ops.events import LogEntry, fetch_logs, settled_records
from iotsettle.oracle.ops.sentences import DEVICE_KINDS
from iotsettle.oracle.ops.token_info import describe_token
from iotsettle.oracle.protocol import settled
from iotsettle.oracle.protocol.errors import ChainError

log = logging.getLogger(__name__)

ESCROW_EVENTS = ("EscrowCreated", "DeliveryConfirmed", "DeliveryRejected", "EscrowRefunded", "EscrowCancelled")
AGREEMENT_EVENTS = (
    "AgreementOffered",
    "OfferCancelled",
    "AgreementAccepted",
    "ToppedUp",
    settled.EVENT,
    "ReadingRejected",
    "AgreementSuspended",
    "AgreementResumed",
    "EarningsWithdrawn",
    "CloseRequested",
    "AgreementClosed",
)
DEVICE_EVENTS = ("DeviceRegistered", "KeyRotated", "DeviceRevoked", "MetadataUpdated")
#: event → the argument holding the money it moved
AMOUNT_FIELD = {
    "EscrowCreated": "amount",
    "DeliveryConfirmed": "toSeller",
    "EscrowRefunded": "amount",
    "EscrowCancelled": "amount",
    "AgreementAccepted": "deposit",
    "ToppedUp": "amount",
    settled.EVENT: "amount",
    "EarningsWithdrawn": "amount",
    "AgreementClosed": "refund",
}


# ------------------------------------------------------------------------------------------------ reports


@dataclass(frozen=True)
class AuditEntry:
    block: int
    time: int
    tx_hash: str
    subject: str  # "escrow 3", "agreement 0x…", "device 0x…"
    event: str
    amount: int | None
    token: str | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "block": self.block,
            "time": self.time,
            "tx": self.tx_hash,
            "subject": self.subject,
            "event": self.event,
            "amount": None if self.amount is None else str(self.amount),
            "token": self.token,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class AuditReport:
    subject: str
    entries: list[AuditEntry]
    totals: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "entries": [e.as_dict() for e in self.entries],
            "totals": {
                k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in self.totals.items()
            },
        }


class _Clock:
    """Block timestamps, one RPC call per distinct block."""

    def __init__(self, ctx: OpsContext) -> None:
        self._ctx = ctx
        self._seen: dict[int, int] = {}

    def __call__(self, block: int) -> int:
        if block not in self._seen:
            self._seen[block] = int(self._ctx.rpc.header(block)["timestamp"], 16)
        return self._seen[block]


def _date(ts: int) -> str:
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%d %H:%M UTC")


def _detail(entry: LogEntry, fmt: Callable[[int], str]) -> str:
    a = entry.args
    match entry.event:
        case "EscrowCreated":
            return f"buyer {a['buyer']} → seller {a['seller']}, tracker {a['device']}, deadline {_date(a['deadline'])}"
        case "DeliveryConfirmed":
            back = f"; {fmt(int(a['toBuyer']))} back to the buyer (cold-chain penalty)" if a["toBuyer"] else ""
            return f"delivery seq {a['seq']}: seller credited {fmt(int(a['toSeller']))}{back}"
        case "DeliveryRejected" | "ReadingRejected":
            return f"seq {a['seq']} rejected: {reason_label(int(a['reason']))}"
        case "EscrowRefunded":
            return "refunded to the buyer after the deadline"
        case "EscrowCancelled":
            return "cancelled by the seller; buyer credited"
        case "AgreementOffered":
            return (
                f"provider {a['provider']} → consumer {a['consumer']}, meter {a['device']}, tariff {a['tariffId']}, "
                f"start value {a['startValue']}"
            )
        case "AgreementAccepted":
            return "accepted with a prepaid deposit"
        case "ToppedUp":
            return f"top-up from {a['from']}" + (
                f", {fmt(int(a['arrearsPaid']))} paid arrears" if a["arrearsPaid"] else ""
            )
        case settled.EVENT:
            return f"reading seq {a['seq']} billed"
        case "AgreementSuspended":
            return f"suspended, arrears {fmt(int(a['arrears']))}"
        case "EarningsWithdrawn":
            return f"provider {a['provider']} withdrew earnings"
        case "CloseRequested":
            return f"close requested: readings signed until {_date(a['closeAt'])} still bill"
        case "AgreementClosed":
            return "closed; unbilled prepaid balance refunded to the consumer"
        case "DeviceRegistered":
            kind = int(a["kind"])
            return f"registered by {a['owner']} as {DEVICE_KINDS[kind] if kind < len(DEVICE_KINDS) else kind}"
        case "KeyRotated":
            return f"key {a['oldKey']} → {a['newKey']}"
        case "DeviceRevoked":
            return f"revoked (key {a['key']})"
        case "MetadataUpdated":
            return "metadata hash replaced"
    return ", ".join(f"{k}={v}" for k, v in a.items())


def _entries(ctx: OpsContext, logs: Iterable[LogEntry], subject_of: Any, token_of: dict[Any, str]) -> list[AuditEntry]:
    clock = _Clock(ctx)
    out = []
    for entry in logs:
        field_name = AMOUNT_FIELD.get(entry.event)
        key = entry.args.get("escrowId", entry.args.get("agreementId", entry.args.get("device")))
        token = token_of.get(key)
        fmt: Callable[[int], str] = describe_token(ctx, token).format if token else str
        out.append(
            AuditEntry(
                entry.block,
                clock(entry.block),
                entry.tx_hash,
                subject_of(entry),
                entry.event,
                int(entry.args[field_name]) if field_name else None,
                token,
                _detail(entry, fmt),
            )
        )
    return out


def audit_escrow(ctx: OpsContext, escrow_id: int) -> AuditReport:
    logs = fetch_logs(ctx, "DeliveryEscrow", ESCROW_EVENTS, escrow_id)
    if not logs:
        raise ChainError(f"escrow {escrow_id} does not exist on chain {ctx.chain.chain_id}")
    token = logs[0].args["token"]
    entries = _entries(ctx, logs, lambda _e: f"escrow {escrow_id}", {escrow_id: token})
    totals = _escrow_totals(logs)
    return AuditReport(f"escrow {escrow_id}", entries, {"token": token, **totals})


def _escrow_totals(logs: Iterable[LogEntry]) -> dict[str, int]:
    totals = {"funded": 0, "toSeller": 0, "toBuyer": 0, "refunded": 0, "cancelled": 0, "rejectedDeliveries": 0}
    for entry in logs:
        a = entry.args
        if entry.event == "EscrowCreated":
            totals["funded"] += int(a["amount"])
        elif entry.event == "DeliveryConfirmed":
            totals["toSeller"] += int(a["toSeller"])
            totals["toBuyer"] += int(a["toBuyer"])
        elif entry.event == "EscrowRefunded":
            totals["refunded"] += int(a["amount"])
        elif entry.event == "EscrowCancelled":
            totals["cancelled"] += int(a["amount"])
        elif entry.event == "DeliveryRejected":
            totals["rejectedDeliveries"] += 1
    return totals


def audit_agreement(ctx: OpsContext, agreement_id: int) -> AuditReport:
    logs = _agreement_logs(ctx, [agreement_id])
    if not logs:
        raise ChainError(f"agreement {agreement_id} does not exist on chain {ctx.chain.chain_id}")
    token = logs[0].args["token"]
    entries = _entries(ctx, logs, lambda _e: f"agreement {hex(agreement_id)}", {agreement_id: token})
    return AuditReport(f"agreement {hex(agreement_id)}", entries, {"token": token, **_agreement_totals(logs)})


def _agreement_logs(ctx: OpsContext, agreement_ids: list[int]) -> list[LogEntry]:
    """The agreements' events: the indexed ones by agreement id, and their ``ReadingsSettled`` records from one scan
    of the batch logs since the earliest offer (a reading cannot settle before its agreement is offered)."""
    indexed = tuple(e for e in AGREEMENT_EVENTS if e != settled.EVENT)
    logs = [entry for i in agreement_ids for entry in fetch_logs(ctx, "MeteredBilling", indexed, i)]
    if logs:
        start = min(entry.block for entry in logs)
        logs += settled_records(ctx, "MeteredBilling", set(agreement_ids), start)
    return sorted(logs, key=lambda e: (e.block, e.log_index, e.record or 0))


def _agreement_totals(logs: Iterable[LogEntry]) -> dict[str, int]:
    totals = {"deposited": 0, "billed": 0, "readingsSettled": 0, "readingsRejected": 0, "withdrawn": 0, "refunded": 0}
    for entry in logs:
        a = entry.args
        if entry.event in ("AgreementAccepted", "ToppedUp"):
            totals["deposited"] += int(a["deposit" if entry.event == "AgreementAccepted" else "amount"])
        elif entry.event == settled.EVENT:
            totals["billed"] += int(a["amount"])
            totals["readingsSettled"] += 1
        elif entry.event == "ReadingRejected":
            totals["readingsRejected"] += 1
        elif entry.event == "EarningsWithdrawn":
            totals["withdrawn"] += int(a["amount"])
        elif entry.event == "AgreementClosed":
            totals["refunded"] += int(a["refund"])
    return totals


def device_targets(ctx: OpsContext, device: str) -> tuple[list[int], list[int], dict[int, str]]:
    """Agreement ids and escrow ids that name ``device``, and the token of each."""
    device = to_checksum_address(device)
    agreements, escrows, tokens = [], [], {}
    for entry in fetch_logs(ctx, "MeteredBilling", ("AgreementOffered",)):
        if entry.args["device"] == device:
            agreements.append(int(entry.args["agreementId"]))
            tokens[int(entry.args["agreementId"])] = entry.args["token"]
    for entry in fetch_logs(ctx, "DeliveryEscrow", ("EscrowCreated",)):
        if entry.args["device"] == device:
            escrows.append(int(entry.args["escrowId"]))
            tokens[int(entry.args["escrowId"])] = entry.args["token"]
    return agreements, escrows, tokens


def audit_device(ctx: OpsContext, device: str) -> AuditReport:
    """The device's identity events plus everything settled from its signatures: a verifiable history."""
    device = to_checksum_address(device)
    logs = fetch_logs(ctx, "DeviceRegistry", DEVICE_EVENTS, device)
    if not logs:
        raise ChainError(f"device {device} was never registered on chain {ctx.chain.chain_id}")
    agreements, escrows, tokens = device_targets(ctx, device)
    totals: dict[str, Any] = {"agreements": len(agreements), "escrows": len(escrows)}
    agreement_logs = _agreement_logs(ctx, agreements)
    escrow_logs: list[LogEntry] = []
    for escrow_id in escrows:
        escrow_logs += fetch_logs(ctx, "DeliveryEscrow", ESCROW_EVENTS, escrow_id)
    history = sorted(
        logs + agreement_logs + escrow_logs, key=lambda e: (e.block, e.log_index, e.record or 0, e.contract)
    )

    def subject(entry: LogEntry) -> str:
        if "escrowId" in entry.args:
            return f"escrow {entry.args['escrowId']}"
        if "agreementId" in entry.args:
            return f"agreement {hex(entry.args['agreementId'])}"
        return "device"  # the report's subject itself

    entries = _entries(ctx, history, subject, tokens)
    a_totals, e_totals = _agreement_totals(agreement_logs), _escrow_totals(escrow_logs)
    totals.update(
        {
            "billed": a_totals["billed"],
            "readingsSettled": a_totals["readingsSettled"],
            "readingsRejected": a_totals["readingsRejected"],
            "releasedToSeller": e_totals["toSeller"],
            "deliveriesRejected": e_totals["rejectedDeliveries"],
        }
    )
    return AuditReport(f"device {device}", entries, totals)
