"""Build and sign device events into wire payloads (docs/PROTOCOL.md, "Signing").

Hashing and signing go through ``iotsettle.oracle.protocol.eip712`` (coincurve, ~10k signatures/s on one core) and
the payload bytes through ``iotsettle.oracle.protocol.wire.encode``, so a payload built here is byte-for-byte what the
oracle expects.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from functools import lru_cache
from typing import Any, Protocol

from eth_utils import to_checksum_address
from iotsettle.oracle.device.keys import DeviceKey, MemoryDeliveryLog
from iotsettle.oracle.protocol import batch_tree, eip712, wire
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.eip712 import Domain
from iotsettle.oracle.protocol.errors import ConfigError, ProtocolError
from iotsettle.oracle.protocol.kinds import CONTRACT_OF_KIND
from iotsettle.oracle.protocol.wire import SignedEvent


@lru_cache(maxsize=1024)
def _checksummed(address: str) -> str:
    """Checksumming costs a keccak; a device signs for the same two or three contracts over and over."""
    return to_checksum_address(address)


class Counter(Protocol):
    def next(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Contracts:
    """The verifying contracts of the EIP-712 domains a device signs for (from ``deployments/<chainId>.json``).

    The insurance products are optional: a deployment made before them still signs readings and deliveries. Each
    field's metadata names its contract as the manifest does.
    """

    metered_billing: str = field(metadata={"contract": "MeteredBilling"})
    delivery_escrow: str = field(metadata={"contract": "DeliveryEscrow"})
    device_registry: str | None = field(default=None, metadata={"contract": "DeviceRegistry"})
    motor_insurance: str | None = field(default=None, metadata={"contract": "MotorInsurance"})
    crop_insurance: str | None = field(default=None, metadata={"contract": "CropInsurance"})
    health_insurance: str | None = field(default=None, metadata={"contract": "HealthInsurance"})
    #: readings of an agreement it minted (``batch_tree.is_optimistic``) are signed for its domain
    optimistic_billing: str | None = field(default=None, metadata={"contract": "OptimisticBilling"})
    #: telematics of a policy it minted (``batch_tree.is_optimistic``) are signed for its domain
    optimistic_motor: str | None = field(default=None, metadata={"contract": "OptimisticMotor"})

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The manifest names of the contracts, required ones first."""
        return tuple(item.metadata["contract"] for item in fields(cls))

    @classmethod
    def from_names(cls, addresses: Mapping[str, str]) -> Contracts:
        """From manifest name → address; the registry and the insurance products may be absent, and a missing
        required contract raises KeyError naming it."""
        # str for the required fields, str | None for the optional ones: one type per field, so Any here
        values: dict[str, Any] = {
            item.name: addresses[item.metadata["contract"]]
            if item.default is MISSING
            else addresses.get(item.metadata["contract"])
            for item in fields(cls)
        }
        return cls(**values)

    def by_name(self) -> dict[str, str]:
        """Manifest name → address of every contract the deployment has."""
        return {
            item.metadata["contract"]: getattr(self, item.name) for item in fields(self) if getattr(self, item.name)
        }

    def address(self, contract: str) -> str | None:
        """The address of ``contract`` (a manifest name such as "MotorInsurance"); None when the deployment has none."""
        for item in fields(self):
            if item.metadata["contract"] == contract:
                return getattr(self, item.name)
        raise ProtocolError(f"devices sign for no contract named {contract!r}")

    def for_type(self, event_type: str) -> str:
        """The verifying contract of ``event_type`` (``protocol.kinds``); ConfigError when the deployment has none."""
        if event_type not in CONTRACT_OF_KIND:
            raise ProtocolError(f"unknown event type {event_type!r}")
        address = self.address(CONTRACT_OF_KIND[event_type])
        if not address:
            raise ConfigError(
                f"no {CONTRACT_OF_KIND[event_type]} address to sign {event_type} events for "
                "(deploy the insurance contracts, or name it in the fleet file's contracts)"
            )
        return address

    def for_reading(self, agreement_id: int) -> str:
        """The verifying contract of a reading: OptimisticBilling for an id it minted, else MeteredBilling."""
        return self._for_target("reading", agreement_id, "agreement", "OptimisticBilling", self.optimistic_billing)

    def for_telematics(self, policy_id: int) -> str:
        """The verifying contract of a telematics report: OptimisticMotor for an id it minted, else MotorInsurance."""
        return self._for_target("telematics", policy_id, "policy", "OptimisticMotor", self.optimistic_motor)

    def _for_target(self, event_type: str, target: int, noun: str, optimistic: str, address: str | None) -> str:
        """``event_type``'s contract for a direct target, ``optimistic``'s (at ``address``) for a flagged one."""
        if not batch_tree.is_optimistic(target):
            return self.for_type(event_type)
        if not address:
            raise ConfigError(
                f"{noun} {target:#x} is an {optimistic} {noun}, and no {optimistic} address is known to sign its "
                f"{event_type} events for (deploy it, or name it in the fleet file's contracts)"
            )
        return address

    def signs(self, event_type: str) -> bool:
        """Whether a verifying contract for ``event_type`` is known."""
        try:
            self.for_type(event_type)
        except (ConfigError, ProtocolError):
            return False
        return True


def sign_event(key: DeviceKey, event_type: str, chain_id: int, contract: str, msg: Mapping[str, Any]) -> SignedEvent:
    """Sign ``msg`` (field name → int, or bytes for bytes32) as ``event_type`` and return the wire event.

    No field is checked beyond what EIP-712 encoding needs: the caller decides seq and timestamp.
    """
    if event_type not in wire.EVENT_TYPES:
        raise ProtocolError(f"unknown event type {event_type!r}")
    primary = wire.EVENT_TYPES[event_type]
    fields = {name: msg[name] for _, name in eip712.TYPES[primary]}
    for typ, name in eip712.TYPES[primary]:
        # JSON carries these as numbers: beyond 2^53 - 1 a payload would be refused as malformed, so never sign it.
        if typ not in ("uint256", "bytes32", "address") and abs(int(fields[name])) > wire.MAX_SAFE_JSON_INT:
            raise ProtocolError(f"{event_type} {name} {fields[name]} exceeds the wire limit 2^53 - 1")
    try:
        message_digest = eip712.digest(primary, fields, Domain(chain_id, contract))
    except (ValueError, KeyError) as exc:
        raise ProtocolError(f"cannot encode {event_type}: {exc}") from None
    signature = eip712.sign_digest(key.private_key, message_digest)
    return SignedEvent(event_type, chain_id, _checksummed(contract), key.address, dict(fields), signature)


class DeliveryRecord(Protocol):
    def claim(self, chain_id: int, contract: str, escrow_id: int) -> None: ...


class EventSigner:
    """Signs one device's events, taking sequence numbers from its counter and timestamps from the clock.

    A tracker signs at most one delivery per escrow: ``deliveries`` records each before it is signed (pass a
    persistent ``keys.DeliveryLog`` on a real device; the default only remembers this process's deliveries).
    """

    def __init__(
        self,
        key: DeviceKey,
        chain_id: int,
        contracts: Contracts,
        counter: Counter,
        deliveries: DeliveryRecord | None = None,
    ) -> None:
        self.key = key
        self.chain_id = chain_id
        self.contracts = contracts
        self._counter = counter
        self._deliveries = deliveries if deliveries is not None else MemoryDeliveryLog()

    def _stamp(self, timestamp: int | None) -> int:
        return int(time.time()) if timestamp is None else timestamp

    def reading(self, agreement_id: int, value: int, *, timestamp: int | None = None) -> SignedEvent:
        """A cumulative register reading for a MeteredBilling or an OptimisticBilling agreement (the id says which)."""
        contract = self.contracts.for_reading(agreement_id)
        msg = {
            "agreementId": agreement_id,
            "seq": self._counter.next(),
            "timestamp": self._stamp(timestamp),
            "value": value,
        }
        return sign_event(self.key, "reading", self.chain_id, contract, msg)

    def delivery(
        self, escrow_id: int, location: bytes, max_temperature: int, *, timestamp: int | None = None
    ) -> SignedEvent:
        """Arrival at the destination of a DeliveryEscrow; ``max_temperature`` in hundredths of a degree Celsius.

        Raises ``keys.DeliveryAlreadySigned`` for an escrow this device already signed a delivery for: the first
        valid delivery relayed releases the escrow, so a second one would let the relayer pick the outcome.
        """
        self._deliveries.claim(self.chain_id, self.contracts.for_type("delivery"), escrow_id)
        msg = {
            "escrowId": escrow_id,
            "seq": self._counter.next(),
            "timestamp": self._stamp(timestamp),
            "location": location,
            "maxTemperature": max_temperature,
        }
        return sign_event(self.key, "delivery", self.chain_id, self.contracts.for_type("delivery"), msg)

    def telematics(
        self, policy_id: int, odometer: int, harsh_braking: int, speeding: int, *, timestamp: int | None = None
    ) -> SignedEvent:
        """A vehicle's cumulative odometer (metres) and event counters for a MotorInsurance policy (signed for
        OptimisticMotor when the policy id carries its flag)."""
        msg = {
            "policyId": policy_id,
            "seq": self._counter.next(),
            "timestamp": self._stamp(timestamp),
            "odometer": odometer,
            "harshBraking": harsh_braking,
            "speeding": speeding,
        }
        return sign_event(self.key, "telematics", self.chain_id, self.contracts.for_telematics(policy_id), msg)

    def activity(self, policy_id: int, period: int, tier: int, *, timestamp: int | None = None) -> SignedEvent:
        """A wearable's activity tier (0–3) of one finished period of a HealthInsurance policy (only the tier: the
        steps and minutes it was computed from stay on the device)."""
        msg = {
            "policyId": policy_id,
            "seq": self._counter.next(),
            "timestamp": self._stamp(timestamp),
            "period": period,
            "tier": tier,
        }
        return sign_event(self.key, "activity", self.chain_id, self.contracts.for_type("activity"), msg)

    def weather(self, rainfall: int, max_temperature: int, *, timestamp: int | None = None) -> SignedEvent:
        """A weather station's cumulative rainfall (0.01 mm) and highest temperature (0.01 °C) since its previous
        observation, for CropInsurance (every season the station serves)."""
        msg = {
            "station": self.key.address,
            "seq": self._counter.next(),
            "timestamp": self._stamp(timestamp),
            "rainfall": rainfall,
            "maxTemperature": max_temperature,
        }
        return sign_event(self.key, "weather", self.chain_id, self.contracts.for_type("weather"), msg)


def sign_registration(
    key: DeviceKey,
    *,
    owner: str,
    kind: DeviceKind,
    metadata_hash: bytes,
    deadline: int,
    chain_id: int,
    registry: str,
) -> tuple[bytes, bytes]:
    """The device's consent to be registered to ``owner``: returns (digest, 65-byte signature)."""
    msg = {
        "device": key.address,
        "owner": owner,
        "kind": int(kind),
        "metadataHash": metadata_hash,
        "deadline": deadline,
    }
    message_digest = eip712.digest("Registration", msg, Domain(chain_id, registry))
    return message_digest, eip712.sign_digest(key.private_key, message_digest)


def sign_key_rotation(
    new_key: DeviceKey, *, device: str, deadline: int, chain_id: int, registry: str
) -> tuple[bytes, bytes]:
    """The new key's consent to take over ``device``: returns (digest, 65-byte signature by the new key)."""
    msg = {"device": device, "newKey": new_key.address, "deadline": deadline}
    message_digest = eip712.digest("KeyRotation", msg, Domain(chain_id, registry))
    return message_digest, eip712.sign_digest(new_key.private_key, message_digest)
