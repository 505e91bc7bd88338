"""The device → oracle wire format (JSON over MQTT): the single source of truth; docs/PROTOCOL.md describes it.

A payload is one UTF-8 JSON object of at most ``MAX_PAYLOAD_BYTES``::

    {"v": 1, "type": "reading", "chainId": 31337,
     "contract": "0x…",            # the verifying contract of the EIP-712 domain
     "device": "0x…",              # the signing key's address (must equal the recovered signer)
     "msg": {"agreementId": "7", "seq": 3, "timestamp": 1764340000, "value": "12345"},
     "sig": "0x…"}                 # 65 bytes r ‖ s ‖ v, v ∈ {27, 28}, low s

Integer encoding inside ``msg``: uint256 fields are decimal strings (they exceed JSON's safe integer range);
uint8/uint32/uint64/int32 fields are JSON integers no larger than 2**53 - 1 in magnitude; bytes32 fields are
0x-prefixed 64-digit hex strings; address fields are 0x-prefixed 40-digit hex strings (any case; checksummed
when encoded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from eth_utils import is_hex_address, to_checksum_address
from iotsettle.oracle.protocol import eip712
from iotsettle.oracle.protocol.errors import ProtocolError

PROTOCOL_VERSION = 1
MAX_PAYLOAD_BYTES = 1024
TOPIC_ROOT = "iotsettle/v1"
MAX_SAFE_JSON_INT = (1 << 53) - 1

#: payload "type" → EIP-712 primary type, for the events devices send over MQTT.
EVENT_TYPES: dict[str, str] = {
    "reading": "Reading",
    "delivery": "Delivery",
    "telematics": "Telematics",
    "weather": "WeatherObservation",
    "activity": "ActivitySummary",
}
#: payload "type" → the ``msg`` field naming what the event settles against: an agreement, an escrow, a policy, or
#: (weather observations serve every season of a station) the station itself.
TARGET_FIELDS: dict[str, str] = {
    "reading": "agreementId",
    "delivery": "escrowId",
    "telematics": "policyId",
    "weather": "station",
    "activity": "policyId",
}
_PAYLOAD_KEYS = frozenset({"v", "type", "chainId", "contract", "device", "msg", "sig"})


@lru_cache(maxsize=65_536)
def _checksummed(value: str) -> str | None:
    """``to_checksum_address`` of a valid hex address, else None; cached because a fleet repeats the same few
    addresses and the checksum (a keccak over the hex text) dominated ``decode``."""
    return to_checksum_address(value) if is_hex_address(value) else None


def _checksum(value: str) -> str:
    cached = _checksummed(value) if isinstance(value, str) else None
    return cached if cached is not None else to_checksum_address(value)


def events_topic(chain_id: int, device: str) -> str:
    """Where a device publishes its signed events (QoS 1, not retained)."""
    return f"{TOPIC_ROOT}/{chain_id}/{_checksum(device)}/events"


def replies_topic(chain_id: int, device: str) -> str:
    """Where the oracle answers a device (accepted / rejected with a reason code)."""
    return f"{TOPIC_ROOT}/{chain_id}/{_checksum(device)}/replies"


def alerts_topic(chain_id: int) -> str:
    """Where the oracle publishes its early alerts (QoS 1, not retained; ``iotsettle.oracle.protocol.alerts``)."""
    return f"{TOPIC_ROOT}/{chain_id}/alerts"


def events_filter(chain_id: int) -> str:
    """The subscription that receives every device's events on one chain."""
    return f"{TOPIC_ROOT}/{chain_id}/+/events"


@dataclass(frozen=True)
class SignedEvent:
    """One decoded, schema-checked device event. The signature is not verified here: see ``signer``."""

    type: str  # a key of EVENT_TYPES: "reading" | "delivery" | "telematics" | "weather" | "activity"
    chain_id: int
    contract: str  # checksummed
    device: str  # checksummed, as claimed by the payload
    msg: dict[str, Any]  # field name → int | bytes (bytes32)
    sig: bytes

    @property
    def primary_type(self) -> str:
        return EVENT_TYPES[self.type]

    @property
    def seq(self) -> int:
        return int(self.msg["seq"])

    @property
    def target_id(self) -> int:
        """The agreement id of a reading, the escrow id of a delivery, the policy id of a telematics report, or the
        station address (as an integer) of a weather observation."""
        value = self.msg[TARGET_FIELDS[self.type]]
        return int(value, 16) if isinstance(value, str) else int(value)

    @cached_property
    def digest(self) -> bytes:
        return eip712.digest(self.primary_type, self.msg, eip712.Domain(self.chain_id, self.contract))

    def signer(self) -> str:
        """The recovered signer; raises SignatureError if the signature is malformed or malleable."""
        return eip712.recover(self.digest, self.sig)

    def to_payload(self) -> bytes:
        return encode(self.type, self.chain_id, self.contract, self.device, self.msg, self.sig)

    def compact_signature(self) -> tuple[bytes, bytes]:
        """The ERC-2098 form (r, vs) the contracts' batch calls take: vs is s with the top bit set when v is 28."""
        v = self.sig[64]
        if v not in (27, 28):
            raise ProtocolError(f"signature v is {v}, expected 27 or 28")
        s = int.from_bytes(self.sig[32:64], "big")
        return self.sig[:32], (s | ((v - 27) << 255)).to_bytes(32, "big")

    def contract_tuple(self) -> tuple[Any, ...]:
        """The contract's SignedReading / SignedDelivery struct: the signed fields in signing order, then r, vs."""
        return (*(self.msg[name] for _, name in eip712.TYPES[self.primary_type]), *self.compact_signature())


def _encode_field(typ: str, value: Any) -> Any:
    if typ == "address":
        return _checksum(value)
    if typ == "bytes32":
        return "0x" + bytes(value).hex() if not isinstance(value, str) else value
    if typ == "uint256":
        return str(int(value))
    return int(value)


def encode(event_type: str, chain_id: int, contract: str, device: str, msg: dict[str, Any], sig: bytes) -> bytes:
    """The canonical payload bytes for an event (compact JSON, fields in signing order)."""
    fields = eip712.TYPES[EVENT_TYPES[event_type]]
    body = {
        "v": PROTOCOL_VERSION,
        "type": event_type,
        "chainId": chain_id,
        "contract": _checksum(contract),
        "device": _checksum(device),
        "msg": {name: _encode_field(typ, msg[name]) for typ, name in fields},
        "sig": "0x" + sig.hex(),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _decode_field(typ: str, name: str, value: Any) -> Any:
    if typ == "address":
        checksummed = _checksummed(value) if isinstance(value, str) else None
        if checksummed is None:
            raise ProtocolError(f"msg.{name} must be a 0x-prefixed 20-byte hex address")
        return checksummed
    if typ == "bytes32":
        if not (isinstance(value, str) and len(value) == 66 and value[:2] == "0x"):
            raise ProtocolError(f"msg.{name} must be a 0x-prefixed 32-byte hex string")
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            raise ProtocolError(f"msg.{name} is not hex") from None
    if typ == "uint256":
        if not (isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 78):
            raise ProtocolError(f"msg.{name} must be a decimal string")
        number = int(value)
        if number >= 1 << 256:
            raise ProtocolError(f"msg.{name} does not fit uint256")
        return number
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_SAFE_JSON_INT:
        raise ProtocolError(f"msg.{name} must be a JSON integer within ±2^53-1")
    bits = int(typ.removeprefix("u").removeprefix("int"))
    low, high = (0, 1 << bits) if typ.startswith("u") else (-(1 << (bits - 1)), 1 << (bits - 1))
    if not low <= value < high:
        raise ProtocolError(f"msg.{name} does not fit {typ}")
    return value


def _address(body: dict[str, Any], key: str) -> str:
    value = body[key]
    checksummed = _checksummed(value) if isinstance(value, str) else None
    if checksummed is None:
        raise ProtocolError(f"{key} must be a 0x-prefixed 20-byte hex address")
    return checksummed


def decode(payload: bytes) -> SignedEvent:
    """Parse and schema-check a payload; raises ProtocolError naming the first problem found."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"payload is {len(payload)} bytes, the limit is {MAX_PAYLOAD_BYTES}")
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"payload is not UTF-8 JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError("payload must be a JSON object")
    if set(body) != _PAYLOAD_KEYS:
        missing, extra = _PAYLOAD_KEYS - set(body), set(body) - _PAYLOAD_KEYS
        raise ProtocolError(f"payload keys wrong (missing {sorted(missing)}, unexpected {sorted(extra)})")
    if body["v"] != PROTOCOL_VERSION or isinstance(body["v"], bool):
        raise ProtocolError(f"unsupported protocol version {body['v']!r}")
    event_type = body["type"]
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:  # a list or object is not hashable
        raise ProtocolError(f"unknown event type {event_type!r}")
    chain_id = body["chainId"]
    if isinstance(chain_id, bool) or not isinstance(chain_id, int) or not 0 < chain_id <= MAX_SAFE_JSON_INT:
        raise ProtocolError("chainId must be a positive JSON integer")
    raw_msg = body["msg"]
    fields = eip712.TYPES[EVENT_TYPES[event_type]]
    if not isinstance(raw_msg, dict) or set(raw_msg) != {name for _, name in fields}:
        raise ProtocolError(f"msg must have exactly the fields {[name for _, name in fields]}")
    msg = {name: _decode_field(typ, name, raw_msg[name]) for typ, name in fields}
    sig_hex = body["sig"]
    if not (isinstance(sig_hex, str) and len(sig_hex) == 132 and sig_hex[:2] == "0x"):
        raise ProtocolError("sig must be a 0x-prefixed 65-byte hex string")
    try:
        sig = bytes.fromhex(sig_hex[2:])
    except ValueError:
        raise ProtocolError("sig is not hex") from None
    return SignedEvent(event_type, chain_id, _address(body, "contract"), _address(body, "device"), msg, sig)
