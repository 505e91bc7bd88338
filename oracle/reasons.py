"""What the oracle answers a device: the reply JSON and the rejection reason codes (docs/PROTOCOL.md, "Replies").

The oracle publishes one reply per received event on ``iotsettle/v1/{chainId}/{device}/replies`` (QoS 1, not
retained)::

    {"seq": 42, "status": "accepted"}
    {"seq": 42, "status": "rejected", "reason": "clock_skew", "detail": "timestamp is 3600 s ahead"}

``seq`` is null when the payload was too broken to read one. ``reason`` is present when the status is
"rejected", and on an "accepted" reply only as ``duplicate`` (the event was already stored; nothing to do). ``detail`` is optional human-readable text (at most ``MAX_DETAIL_CHARS``); devices must not parse it.
The list of reasons is the contract between the oracle daemon and firmware: add codes only at the end, never
rename or reuse one within protocol v1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from oracle.errors import ProtocolError

MAX_DETAIL_CHARS = 200
MAX_REPLY_BYTES = 512
_MAX_SEQ = (1 << 64) - 1


class Status(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class Reason(StrEnum):
    """Why the oracle rejected an event. The docstring of each member is the definition in docs/PROTOCOL.md."""

    MALFORMED = "malformed"
    """Not UTF-8 JSON, wrong keys, wrong types or encodings, unknown protocol version or event type."""
    OVERSIZE = "oversize"
    """The payload is larger than 1024 bytes."""
    TOPIC_MISMATCH = "topic_mismatch"
    """The payload's ``device`` or ``chainId`` differs from the topic it was published on."""
    WRONG_CHAIN = "wrong_chain"
    """``chainId`` is not the chain this oracle settles on."""
    WRONG_CONTRACT = "wrong_contract"
    """``contract`` is not the deployed contract for this event type (MeteredBilling or DeliveryEscrow)."""
    BAD_SIGNATURE = "bad_signature"
    """The signature is malformed or malleable, or it does not recover to ``device``."""
    UNKNOWN_DEVICE = "unknown_device"
    """``device`` is not registered in the DeviceRegistry."""
    REVOKED_DEVICE = "revoked_device"
    """The device was revoked, or its key was rotated away."""
    UNKNOWN_TARGET = "unknown_target"
    """The agreement or escrow does not exist or is not bound to this device."""
    REPLAYED_SEQ = "replayed_seq"
    """``seq`` is not above the highest accepted sequence number of the device and the event differs from the
    one stored under that number."""
    DUPLICATE = "duplicate"
    """Exactly this event (same digest) is already stored. Not a rejection: it comes with status "accepted"."""
    COUNTER_ROLLBACK = "counter_rollback"
    """A register reading is lower than the last accepted reading of the same device and agreement."""
    IMPOSSIBLE_RATE = "impossible_rate"
    """A register grew faster than the device kind physically can."""
    CLOCK_SKEW = "clock_skew"
    """``timestamp`` is more than the allowed skew away from the oracle's clock, or before the device's previous
    accepted event."""
    INVALID_LOCATION = "invalid_location"
    """A delivery's ``location`` is not a zero-padded ASCII geohash (all zero bytes, meaning no fix, is valid)."""
    TELEPORT = "teleport"
    """The location implies a speed no shipment reaches since the device's previous located event."""
    QUARANTINED = "quarantined"
    """The device is quarantined after repeated rule violations; an operator must release it."""
    SETTLED = "settled"
    """The agreement or escrow is already closed, e.g. a second delivery for one escrow."""
    REJECTED_ONCHAIN = "rejected_onchain"
    """Accepted earlier, but the contract reverted it at settlement (sent as a second reply for the same seq)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """The oracle's answer to one event."""

    seq: int | None
    status: Status
    reason: Reason | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        if self.status is Status.REJECTED and self.reason is None:
            raise ProtocolError("a rejected reply must carry a reason")
        if self.status is Status.ACCEPTED and self.reason not in (None, Reason.DUPLICATE):
            raise ProtocolError(f"an accepted reply cannot carry the reason {self.reason}")
        if self.seq is not None and not 0 <= self.seq <= _MAX_SEQ:
            raise ProtocolError(f"reply seq {self.seq} does not fit uint64")

    @property
    def stored(self) -> bool:
        """True when the oracle holds the event (accepted now, or a duplicate of one it accepted)."""
        return self.status is Status.ACCEPTED

    @classmethod
    def accepted(cls, seq: int) -> Reply:
        return cls(seq, Status.ACCEPTED)

    @classmethod
    def duplicate(cls, seq: int) -> Reply:
        return cls(seq, Status.ACCEPTED, Reason.DUPLICATE)

    @classmethod
    def rejected(cls, seq: int | None, reason: Reason, detail: str | None = None) -> Reply:
        return cls(seq, Status.REJECTED, reason, detail)


def encode_reply(reply: Reply) -> bytes:
    """Compact JSON bytes for a reply; ``detail`` is truncated to ``MAX_DETAIL_CHARS``."""
    body: dict[str, Any] = {"seq": reply.seq, "status": str(reply.status)}
    if reply.reason is not None:
        body["reason"] = str(reply.reason)
    if reply.detail:
        body["detail"] = reply.detail[:MAX_DETAIL_CHARS]
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode()


def decode_reply(payload: bytes) -> Reply:
    """Parse a reply; raises ProtocolError for anything that does not follow the reply schema."""
    if len(payload) > MAX_REPLY_BYTES:
        raise ProtocolError(f"reply is {len(payload)} bytes, the limit is {MAX_REPLY_BYTES}")
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"reply is not UTF-8 JSON: {exc}") from None
    if not isinstance(body, dict) or not {"seq", "status"} <= set(body) <= {"seq", "status", "reason", "detail"}:
        raise ProtocolError("reply must be an object with seq, status and optionally reason, detail")
    seq = body["seq"]
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
        raise ProtocolError("reply seq must be an integer or null")
    try:
        status = Status(body["status"])
        reason = Reason(body["reason"]) if "reason" in body else None
    except ValueError as exc:
        raise ProtocolError(f"reply has an unknown code: {exc}") from None
    detail = body.get("detail")
    if detail is not None and not isinstance(detail, str):
        raise ProtocolError("reply detail must be a string")
    return Reply(seq, status, reason, detail)
