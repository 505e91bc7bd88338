"""Turn what the contracts say back into sentences: custom-error revert data and per-item reject reasons.

Batch settlement never reverts for one bad item: the contract skips it and emits ``ReadingRejected`` /
``DeliveryRejected`` with an ``IDeviceEvents.RejectReason`` code. Single-item calls (and gas estimation of a
batch that fails as a whole) revert with custom errors; ``ErrorDecoder`` knows every error of the given ABIs
plus Solidity's own ``Error(string)`` and ``Panic(uint256)``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_hash.auto import keccak
from eth_utils import to_checksum_address
from iotsettle.oracle.chain.abi import abi_type
from iotsettle.oracle.chain.artifacts import load_artifact
from iotsettle.oracle.config import Config
from web3.exceptions import ContractLogicError

log = logging.getLogger(__name__)


class RejectReason(IntEnum):
    """``IDeviceEvents.RejectReason``, same numbering (append-only; tests compare with the Solidity source)."""

    NONE = 0
    SIGNATURE_INVALID = 1
    SIGNATURE_MALLEABLE = 2
    UNKNOWN_KEY = 3
    KEY_ROTATED = 4
    DEVICE_REVOKED = 5
    WRONG_DEVICE = 6
    WRONG_DEVICE_KIND = 7
    UNKNOWN_TARGET = 8
    NOT_ACTIVE = 9
    REPLAYED = 10
    TIMESTAMP_IN_FUTURE = 11
    TIMESTAMP_TOO_OLD = 12
    COUNTER_ROLLBACK = 13
    VALUE_OUT_OF_RANGE = 14
    WRONG_LOCATION = 15
    DEADLINE_PASSED = 16
    SUSPENDED = 17
    SEQUENCE_GAP = 18
    AFTER_END = 19

    @property
    def solidity_name(self) -> str:
        """The enum member as the contracts spell it, e.g. ``Replayed``, ``SignatureInvalid``."""
        return "".join(part.capitalize() for part in self.name.split("_"))

    @property
    def sentence(self) -> str:
        return _REASON_TEXT[self]


_REASON_TEXT: dict[RejectReason, str] = {
    RejectReason.NONE: "no reason (never emitted)",
    RejectReason.SIGNATURE_INVALID: "the signature does not recover to an address",
    RejectReason.SIGNATURE_MALLEABLE: "the signature's s is in the upper half of the curve order",
    RejectReason.UNKNOWN_KEY: "the signing key was never registered on chain",
    RejectReason.KEY_ROTATED: "the signing key was rotated out of its device",
    RejectReason.DEVICE_REVOKED: "the device was revoked by its owner",
    RejectReason.WRONG_DEVICE: "the signer belongs to another device than the agreement, escrow or policy names",
    RejectReason.WRONG_DEVICE_KIND: "the device kind cannot be used by this product",
    RejectReason.UNKNOWN_TARGET: "no such agreement or escrow (or insurance policy)",
    RejectReason.NOT_ACTIVE: "the agreement, escrow or policy is not active (offered, closed, refunded or cancelled)",
    RejectReason.REPLAYED: (
        "already consumed on chain (sequence number not above the last settled one, or escrow released)"
    ),
    RejectReason.TIMESTAMP_IN_FUTURE: "the timestamp lies too far ahead of the block time",
    RejectReason.TIMESTAMP_TOO_OLD: "the timestamp is before the last settled event (or the escrow's creation)",
    RejectReason.COUNTER_ROLLBACK: "the cumulative register is below the last settled value",
    RejectReason.VALUE_OUT_OF_RANGE: "the register value or sequence number does not fit the stored width",
    RejectReason.WRONG_LOCATION: "the delivery location differs from the escrow destination",
    RejectReason.DEADLINE_PASSED: "the delivery happened after the escrow deadline",
    RejectReason.SUSPENDED: "the agreement or policy is suspended for arrears until a top-up",
    RejectReason.SEQUENCE_GAP: (
        "an earlier event of the device has not settled yet (sequence numbers settle without gaps)"
    ),
    RejectReason.AFTER_END: "the event was signed after the agreement or policy ended",
}


def reason_of(code: int) -> RejectReason | None:
    try:
        return RejectReason(code)
    except ValueError:
        return None


def reason_label(code: int) -> str:
    """``Replayed``-style name of an on-chain reject code; ``RejectReason(99)`` for a code this oracle does not know."""
    reason = reason_of(code)
    return reason.solidity_name if reason is not None else f"RejectReason({code})"


PANIC_CODES: dict[int, str] = {
    0x01: "assertion failed",
    0x11: "arithmetic overflow or underflow",
    0x12: "division by zero",
    0x21: "invalid enum value",
    0x22: "bad storage byte array",
    0x31: "pop on an empty array",
    0x32: "array index out of bounds",
    0x41: "out of memory",
    0x51: "call to an uninitialised function",
}

_ERROR_STRING = bytes.fromhex("08c379a0")  # Error(string)
_PANIC = bytes.fromhex("4e487b71")  # Panic(uint256)


@dataclass(frozen=True, slots=True)
class DecodedError:
    """A revert, decoded: ``name`` is the custom error (or ``Error`` / ``Panic`` / ``unknown``)."""

    name: str
    args: tuple[tuple[str, Any], ...]
    sentence: str
    reject_reason: RejectReason | None = None  # set for ``EventRejected``

    @property
    def label(self) -> str:
        """Short, stable text for metrics and the dead-letter reason: ``EventRejected:Replayed``, ``NotFunded``."""
        if self.reject_reason is not None:
            return f"{self.name}:{self.reject_reason.solidity_name}"
        return self.name


@dataclass(frozen=True, slots=True)
class _ErrorSpec:
    name: str
    names: tuple[str, ...]
    types: tuple[str, ...]
    internal: tuple[str, ...]


def _render(value: Any, internal: str) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if internal.endswith("RejectReason") and isinstance(value, int):
        return reason_label(value)
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        return to_checksum_address(value)
    return str(value)


class ErrorDecoder:
    """Custom errors of a set of contract ABIs by selector."""

    def __init__(self, abis: Iterable[Sequence[Mapping[str, Any]]]) -> None:
        self._errors: dict[bytes, _ErrorSpec] = {}
        for abi in abis:
            for entry in abi:
                if entry.get("type") != "error":
                    continue
                inputs = entry.get("inputs", ())
                types = tuple(abi_type(p) for p in inputs)
                selector = keccak(f"{entry['name']}({','.join(types)})".encode())[:4]
                self._errors[selector] = _ErrorSpec(
                    entry["name"],
                    tuple(p.get("name", "") or f"arg{i}" for i, p in enumerate(inputs)),
                    types,
                    tuple(str(p.get("internalType", "")) for p in inputs),
                )

    @classmethod
    def from_artifacts(cls, config: Config, names: Iterable[str]) -> ErrorDecoder:
        return cls(load_artifact(config, name)["abi"] for name in names)

    def decode(self, data: bytes | str | None) -> DecodedError:
        """Decode revert data (bytes or 0x-hex). Unknown or empty data still gives a readable result."""
        raw = _as_bytes(data)
        if not raw:
            return DecodedError(
                "Reverted", (), "reverted without a reason (malformed calldata, out of gas, or a bare revert)"
            )
        selector, body = raw[:4], raw[4:]
        try:
            if selector == _ERROR_STRING:
                (text,) = abi_decode(["string"], body)
                return DecodedError("Error", (("message", text),), f"reverted: {text}")
            if selector == _PANIC:
                (code,) = abi_decode(["uint256"], body)
                what = PANIC_CODES.get(code, "unknown panic")
                return DecodedError("Panic", (("code", code),), f"panic 0x{code:02x}: {what}")
            spec = self._errors.get(selector)
            if spec is None:
                return DecodedError(
                    "unknown", (("data", "0x" + raw.hex()),), f"unknown custom error 0x{selector.hex()}"
                )
            values = abi_decode(list(spec.types), body)
        except (DecodingError, ValueError, OverflowError) as exc:
            return DecodedError("unknown", (("data", "0x" + raw.hex()),), f"undecodable revert data ({exc})")
        args = tuple(zip(spec.names, values, strict=True))
        rendered = ", ".join(f"{n}={_render(v, t)}" for (n, v), t in zip(args, spec.internal, strict=True))
        sentence = f"{spec.name}({rendered})"
        reject = None
        if spec.name == "EventRejected":
            reject = reason_of(int(dict(args)["reason"]))
            if reject is not None:
                sentence += f": {reject.sentence}"
        return DecodedError(spec.name, args, sentence, reject)

    def decode_exception(self, exc: BaseException) -> DecodedError:
        """Decode what web3 raised for a reverting call or estimate."""
        data = revert_data(exc)
        if data is None:
            message = getattr(exc, "message", None) or str(exc)
            return DecodedError("unknown", (), f"reverted: {message}")
        return self.decode(data)


def _as_bytes(data: bytes | str | None) -> bytes:
    if data is None:
        return b""
    if isinstance(data, bytes):
        return data
    text = data[2:] if data[:2] in ("0x", "0X") else data
    try:
        return bytes.fromhex(text)
    except ValueError:
        return b""


def revert_data(exc: BaseException) -> bytes | None:
    """The raw revert data carried by a web3 exception, if any."""
    if isinstance(exc, ContractLogicError):
        data = exc.data
        if isinstance(data, dict):
            data = data.get("data")
        if isinstance(data, str) and data.startswith("0x"):
            return _as_bytes(data)
        return None
    return None
