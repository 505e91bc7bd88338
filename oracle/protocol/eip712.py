"""EIP-712 typed data for every device-signed message: the single source of truth.

The contracts hard-code the same type strings (``*_TYPEHASH`` constants); ``tests/test_eip712.py`` and the
forge tests check both sides against the shared vectors in ``tests/vectors/eip712.json``.

Hashing here is done by hand (``eth_abi.encode`` + keccak) rather than through
``eth_account.messages.encode_typed_data`` because the oracle verifies thousands of signatures a second and
the generic encoder is ~3x slower; a test checks the two agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import coincurve
from eth_abi import encode as abi_encode
from eth_hash.auto import keccak
from eth_utils import to_checksum_address
from iotsettle.oracle.protocol.errors import SignatureError

DOMAIN_NAME = "iotsettle"
DOMAIN_VERSION = "1"

#: secp256k1 group order; signatures with s > N/2 are malleable and rejected (as OpenZeppelin ECDSA does).
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_N = SECP256K1_N // 2


#: Every primary type a device signs, as (solidity type, field name) in signing order.
#: - Registration: proof that the device key consents to being registered to ``owner`` (DeviceRegistry).
#: - KeyRotation: proof that ``newKey`` consents to taking over ``device`` (DeviceRegistry), signed by newKey.
#: - Reading: a cumulative register value for a metered-billing agreement (MeteredBilling).
#: - Delivery: the tracker reports arrival for an escrow, with the highest temperature seen (DeliveryEscrow).
#: - Telematics: a vehicle's cumulative odometer (metres) and cumulative counts of harsh-braking events and
#:   speeding episodes, for one motor-insurance policy (MotorInsurance).
#: - WeatherObservation: a weather station's cumulative rainfall register (0.01 mm) and the highest air temperature
#:   (0.01 °C) since its previous observation; not bound to a season (CropInsurance applies it to every open
#:   season the station serves).
#: - ActivitySummary: a wearable's activity tier (0–3) of one finished period of a health policy, computed on the
#:   device from its steps and active minutes against the policy's thresholds; the raw data is never signed, so it
#:   never reaches the oracle or the chain (HealthInsurance).
#: - WithdrawalApproval: an account's own device approves one withdrawal of ``amount`` ``token`` from a ledger (the
#:   domain's verifying contract) at the account's guard nonce, reporting its ``location`` geohash (WithdrawalGuard).
#: - GuardUpdate: an account's own device consents to setting (``enabled``) or clearing the account's guard of
#:   ``token`` (WithdrawalGuard's own domain); ``cells`` are the allowed geohash cells, as bytes32.
TYPES: dict[str, tuple[tuple[str, str], ...]] = {
    "Registration": (
        ("address", "device"),
        ("address", "owner"),
        ("uint8", "kind"),  # device_kinds.DeviceKind
        ("bytes32", "metadataHash"),
        ("uint64", "deadline"),
    ),
    "KeyRotation": (
        ("address", "device"),
        ("address", "newKey"),
        ("uint64", "deadline"),
    ),
    "Reading": (
        ("uint256", "agreementId"),
        ("uint64", "seq"),
        ("uint64", "timestamp"),
        ("uint256", "value"),
    ),
    "Delivery": (
        ("uint256", "escrowId"),
        ("uint64", "seq"),
        ("uint64", "timestamp"),
        ("bytes32", "location"),
        ("int32", "maxTemperature"),
    ),
    "Telematics": (
        ("uint256", "policyId"),
        ("uint64", "seq"),
        ("uint64", "timestamp"),
        ("uint64", "odometer"),
        ("uint32", "harshBraking"),
        ("uint32", "speeding"),
    ),
    "WeatherObservation": (
        ("address", "station"),
        ("uint64", "seq"),
        ("uint64", "timestamp"),
        ("uint64", "rainfall"),
        ("int32", "maxTemperature"),
    ),
    "ActivitySummary": (
        ("uint256", "policyId"),
        ("uint64", "seq"),
        ("uint64", "timestamp"),
        ("uint32", "period"),
        ("uint8", "tier"),
    ),
    "WithdrawalApproval": (
        ("address", "account"),
        ("address", "token"),
        ("uint256", "amount"),
        ("uint256", "nonce"),
        ("uint64", "deadline"),
        ("bytes32", "location"),
    ),
    "GuardUpdate": (
        ("address", "account"),
        ("address", "token"),
        ("bool", "enabled"),
        ("uint256", "threshold"),
        ("bytes32[]", "cells"),
        ("uint256", "nonce"),
        ("uint64", "deadline"),
    ),
}

#: The types of the first four contracts (registry, escrow, billing) and those of the insurance products; the shared
#: vectors keep them in two files (tests/vectors/eip712.json and eip712-products.json).
CORE_TYPES = ("Registration", "KeyRotation", "Reading", "Delivery")
PRODUCT_TYPES = ("Telematics", "WeatherObservation", "ActivitySummary")
#: Signed by an account's own device for its withdrawal guard (not events: they go to the chain with the account's
#: own transaction, never through the oracle).
GUARD_TYPES = ("WithdrawalApproval", "GuardUpdate")

DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"


@dataclass(frozen=True, slots=True)
class Domain:
    """The EIP-712 domain: binds a signature to one chain and one contract."""

    chain_id: int
    verifying_contract: str
    name: str = DOMAIN_NAME
    version: str = DOMAIN_VERSION

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "chainId": self.chain_id,
            "verifyingContract": to_checksum_address(self.verifying_contract),
        }


@cache
def encode_type(primary_type: str) -> str:
    """The EIP-712 type string, e.g. ``Reading(uint256 agreementId,uint64 seq,...)``."""
    fields = ",".join(f"{typ} {name}" for typ, name in TYPES[primary_type])
    return f"{primary_type}({fields})"


@cache
def type_hash(primary_type: str) -> bytes:
    return keccak(encode_type(primary_type).encode())


@cache
def domain_separator(domain: Domain) -> bytes:
    return keccak(
        abi_encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [
                keccak(DOMAIN_TYPE.encode()),
                keccak(domain.name.encode()),
                keccak(domain.version.encode()),
                domain.chain_id,
                to_checksum_address(domain.verifying_contract),
            ],
        )
    )


def _word(typ: str, value: Any) -> bytes:
    """EIP-712-encode one field as a 32-byte word: a static value ABI-encoded, an array of them hashed."""
    if typ.endswith("[]"):
        return keccak(b"".join(_word(typ[:-2], item) for item in value))
    if typ == "bool":
        if value not in (0, 1):
            raise ValueError(f"bool needs true or false, got {value!r}")
        return int(value).to_bytes(32, "big")
    if typ == "bytes32":
        raw = (
            bytes.fromhex(value[2:] if value[:2] in ("0x", "0X") else value) if isinstance(value, str) else bytes(value)
        )
        if len(raw) != 32:
            raise ValueError(f"bytes32 needs 32 bytes, got {len(raw)}")
        return raw
    if typ == "address":
        raw = bytes.fromhex(value[2:]) if isinstance(value, str) else bytes(value)
        if len(raw) != 20:
            raise ValueError(f"address needs 20 bytes, got {len(raw)}")
        return b"\x00" * 12 + raw
    number = int(value)
    bits = int(typ.removeprefix("u").removeprefix("int"))
    if typ.startswith("u"):
        if not 0 <= number < 1 << bits:
            raise ValueError(f"{number} does not fit {typ}")
        return number.to_bytes(32, "big")
    if not -(1 << (bits - 1)) <= number < 1 << (bits - 1):
        raise ValueError(f"{number} does not fit {typ}")
    return (number % (1 << 256)).to_bytes(32, "big")


def struct_hash(primary_type: str, message: Mapping[str, Any]) -> bytes:
    """keccak(typeHash ‖ enc(field1) ‖ …); raises ValueError or KeyError for a field that is missing or out of range."""
    words = b"".join(_word(typ, message[name]) for typ, name in TYPES[primary_type])
    return keccak(type_hash(primary_type) + words)


def digest(primary_type: str, message: Mapping[str, Any], domain: Domain) -> bytes:
    """The 32-byte hash a device signs: keccak(0x1901 ‖ domainSeparator ‖ structHash)."""
    return keccak(b"\x19\x01" + domain_separator(domain) + struct_hash(primary_type, message))


def sign_digest(private_key: bytes, message_digest: bytes) -> bytes:
    """65-byte signature r ‖ s ‖ v with v in {27, 28} and low s (libsecp256k1 always produces low s)."""
    rsv = coincurve.PrivateKey(private_key).sign_recoverable(message_digest, hasher=None)
    return rsv[:64] + bytes([rsv[64] + 27])


def recover(message_digest: bytes, signature: bytes) -> str:
    """The checksummed address that signed ``message_digest``, with the same rules as OpenZeppelin ECDSA.

    Raises SignatureError for a wrong length, v not in {27, 28}, s above N/2, or an invalid point.
    """
    if len(signature) != 65:
        raise SignatureError(f"signature must be 65 bytes, got {len(signature)}")
    v = signature[64]
    if v not in (27, 28):
        raise SignatureError(f"signature v must be 27 or 28, got {v}")
    if int.from_bytes(signature[32:64], "big") > SECP256K1_HALF_N:
        raise SignatureError("signature s is in the upper half of the curve order (malleable)")
    try:
        public_key = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([v - 27]), message_digest, hasher=None
        )
    except ValueError as exc:
        raise SignatureError(f"signature does not recover to a public key: {exc}") from None
    return _checksummed(keccak(public_key.format(compressed=False)[1:])[-20:])


@lru_cache(maxsize=1 << 16)
def _checksummed(address: bytes) -> str:
    """EIP-55 form of a 20-byte address, remembered: a fleet's few device addresses recur in every batch, and
    the checksum (a keccak of the hex text) was ≈ 15 % of a signature check."""
    return str(to_checksum_address(address))


def address_of(private_key: bytes) -> str:
    """The checksummed address of a secp256k1 private key."""
    public_key = coincurve.PrivateKey(private_key).public_key.format(compressed=False)
    return to_checksum_address(keccak(public_key[1:])[-20:])
