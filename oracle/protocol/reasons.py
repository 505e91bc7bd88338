"""What the oracle answers a device: the reply JSON and the rejection reason codes (docs/PROTOCOL.md, "Replies").

The oracle publishes one reply per received event on ``iotsettle/v1/{chainId}/{device}/replies`` (QoS 1, not
retained)::

    {"v":1,"status":"accepted","seq":42,"digest":"0x…"}
    {"v":1,"status":"duplicate","seq":42,"digest":"0x…","reason":"duplicate"}
    {"v":1,"status":"rejected","seq":42,"digest":"0x…","reason":"clock_skew","detail":"timestamp is 3600 s ahead"}

``seq`` and ``digest`` (the event's EIP-712 digest) are left out when the payload was too broken to read them.
"accepted" and "duplicate" both mean the oracle holds the event; "duplicate" says an identical copy was stored
before (a retry) and carries the reason ``duplicate``, so every reply that is not "accepted" has a code.
``detail`` is optional human-readable text (at most ``MAX_DETAIL_CHARS``); devices must not parse it.
The list of reasons is the contract between the oracle daemon and firmware: add codes only at the end, never
rename or reuse one within protocol v1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from iotsettle.oracle.protocol.errors import ProtocolError

REPLY_VERSION = 1
MAX_DETAIL_CHARS = 200
MAX_REPLY_BYTES = 512
_MAX_SEQ = (1 << 64) - 1
_REPLY_KEYS = frozenset({"v", "status", "seq", "digest", "reason", "detail"})


class Status(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
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
    """``contract`` is not the deployed contract for this event type (MeteredBilling, DeliveryEscrow,
    MotorInsurance or CropInsurance)."""
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
    """Exactly this event (same digest) is already stored. Not a rejection: it comes with status "duplicate"."""
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
    digest: bytes | None = None

    def __post_init__(self) -> None:
        if self.status is Status.REJECTED and self.reason in (None, Reason.DUPLICATE):
            raise ProtocolError("a rejected reply must carry a rejection reason")
        if self.status is Status.ACCEPTED and self.reason is not None:
            raise ProtocolError(f"an accepted reply cannot carry the reason {self.reason}")
        if self.status is Status.DUPLICATE and self.reason not in (None, Reason.DUPLICATE):
            raise ProtocolError(f"a duplicate reply cannot carry the reason {self.reason}")
        if self.seq is not None and not 0 <= self.seq <= _MAX_SEQ:
            raise ProtocolError(f"reply seq {self.seq} does not fit uint64")
        if self.digest is not None and len(self.digest) != 32:
            raise ProtocolError("reply digest must be 32 bytes")

    @property
    def stored(self) -> bool:
        """True when the oracle holds the event (accepted now, or an identical copy accepted before)."""
        return self.status is not Status.REJECTED

    @property
    def code(self) -> str:
        """ "accepted", or the reason code: one label per outcome for counters and logs."""
        return str(self.reason) if self.reason is not None else str(self.status)

    @classmethod
    def accepted(cls, seq: int, digest: bytes | None = None) -> Reply:
        return cls(seq, Status.ACCEPTED, digest=digest)

    @classmethod
    def duplicate(cls, seq: int, digest: bytes | None = None) -> Reply:
        return cls(seq, Status.DUPLICATE, Reason.DUPLICATE, digest=digest)

    @classmethod
    def rejected(cls, seq: int | None, reason: Reason, detail: str | None = None, digest: bytes | None = None) -> Reply:
        return cls(seq, Status.REJECTED, reason, detail, digest)


def encode_reply(reply: Reply) -> bytes:
    """Compact JSON bytes for a reply; ``detail`` is truncated to ``MAX_DETAIL_CHARS``."""
    body: dict[str, Any] = {"v": REPLY_VERSION, "status": str(reply.status)}
    if reply.seq is not None:
        body["seq"] = reply.seq
    if reply.digest is not None:
        body["digest"] = "0x" + reply.digest.hex()
    if reply.reason is not None:
        body["reason"] = str(reply.reason)
    if reply.detail:
        body["detail"] = reply.detail[:MAX_DETAIL_CHARS]
    return json.dumps(body, separators=(",", ":")).encode()


def decode_reply(payload: bytes) -> Reply:
    """Parse a reply; raises ProtocolError for anything that does not follow the reply schema."""
    if len(payload) > MAX_REPLY_BYTES:
        raise ProtocolError(f"reply is {len(payload)} bytes, the limit is {MAX_REPLY_BYTES}")
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"reply is not UTF-8 JSON: {exc}") from None
    if not isinstance(body, dict) or "status" not in body or not set(body) <= _REPLY_KEYS:
        raise ProtocolError(f"reply must be an object with status and optionally {sorted(_REPLY_KEYS - {'status'})}")
    version = body.get("v", REPLY_VERSION)
    if isinstance(version, bool) or version != REPLY_VERSION:
        raise ProtocolError(f"unsupported reply version {version!r}")
    seq = body.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
        raise ProtocolError("reply seq must be an integer")
    try:
        status = Status(body["status"])
        reason = Reason(body["reason"]) if "reason" in body else None
    except ValueError as exc:
        raise ProtocolError(f"reply has an unknown code: {exc}") from None
    detail = body.get("detail")
    if detail is not None and not isinstance(detail, str):
        raise ProtocolError("reply detail must be a string")
    digest = None
    if "digest" in body:
        text = body["digest"]
        if not (isinstance(text, str) and len(text) == 66 and text[:2] == "0x"):
            raise ProtocolError("reply digest must be a 0x-prefixed 32-byte hex string")
        try:
            digest = bytes.fromhex(text[2:])
        except ValueError:
            raise ProtocolError("reply digest is not hex") from None
    return Reply(seq, status, reason, detail, digest)
