"""Devices that sign the way the firmware does, including the ways it must not (another chain, contract or key),
and the deployed DeviceRegistry driven by an owner (registration itself is ``iotsettle.oracle.testing.devices``)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_utils import to_checksum_address
from iotsettle.oracle.chain.connection import ANVIL_DEV_KEYS
from iotsettle.oracle.chain.send import send
from iotsettle.oracle.daemon.store import RegistryEntry, Store
from iotsettle.oracle.device.keys import DeviceKey
from iotsettle.oracle.protocol import device_kinds, eip712, wire
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.kinds import CONTRACT_OF_KIND
from iotsettle.oracle.testing.devices import register_device
from web3 import Web3

CHAIN_ID = 31337
#: stand-ins for the verifying contracts when the chain is not involved
READING_CONTRACT = "0x" + "a1" * 20
DELIVERY_CONTRACT = "0x" + "b2" * 20
TELEMATICS_CONTRACT = "0x" + "c4" * 20
WEATHER_CONTRACT = "0x" + "d5" * 20
ACTIVITY_CONTRACT = "0x" + "e6" * 20
CONTRACTS = {"reading": to_checksum_address(READING_CONTRACT), "delivery": to_checksum_address(DELIVERY_CONTRACT)}
#: the stand-ins of every kind the daemon relays
ALL_CONTRACTS = {
    **CONTRACTS,
    "telematics": to_checksum_address(TELEMATICS_CONTRACT),
    "weather": to_checksum_address(WEATHER_CONTRACT),
    "activity": to_checksum_address(ACTIVITY_CONTRACT),
}


@dataclass
class Device:
    """A device with its own key that signs readings and deliveries the way the firmware does."""

    kind: int = device_kinds.DeviceKind.METER
    key: bytes = field(default_factory=lambda: os.urandom(32))
    chain_id: int = CHAIN_ID
    contracts: dict[str, str] = field(default_factory=lambda: dict(CONTRACTS))

    @property
    def address(self) -> str:
        return eip712.address_of(self.key)

    def sign(
        self,
        event_type: str,
        msg: dict[str, Any],
        *,
        chain_id: int | None = None,
        contract: str | None = None,
        key: bytes | None = None,
    ) -> bytes:
        chain = chain_id or self.chain_id
        verifying = contract or self.contracts[event_type]
        primary = wire.EVENT_TYPES[event_type]
        digest = eip712.digest(primary, msg, eip712.Domain(chain, verifying))
        sig = eip712.sign_digest(key or self.key, digest)
        return wire.encode(event_type, chain, verifying, self.address, msg, sig)

    def reading(self, seq: int, value: int, *, timestamp: int | None = None, agreement: int = 1, **kw: Any) -> bytes:
        msg = {"agreementId": agreement, "seq": seq, "timestamp": timestamp or int(time.time()), "value": value}
        return self.sign("reading", msg, **kw)

    def delivery(
        self,
        seq: int,
        location: bytes,
        *,
        timestamp: int | None = None,
        escrow: int = 1,
        temperature: int = 4,
        **kw: Any,
    ) -> bytes:
        msg = {
            "escrowId": escrow,
            "seq": seq,
            "timestamp": timestamp or int(time.time()),
            "location": location,
            "maxTemperature": temperature,
        }
        return self.sign("delivery", msg, **kw)

    def telematics(
        self,
        seq: int,
        odometer: int,
        harsh: int = 0,
        speeding: int = 0,
        *,
        policy: int = 1,
        timestamp: int | None = None,
        **kw: Any,
    ) -> bytes:
        msg = {
            "policyId": policy,
            "seq": seq,
            "timestamp": timestamp or int(time.time()),
            "odometer": odometer,
            "harshBraking": harsh,
            "speeding": speeding,
        }
        return self.sign("telematics", msg, **kw)

    def weather(
        self, seq: int, rainfall: int, max_temperature: int, *, timestamp: int | None = None, **kw: Any
    ) -> bytes:
        msg = {
            "station": self.address,
            "seq": seq,
            "timestamp": timestamp or int(time.time()),
            "rainfall": rainfall,
            "maxTemperature": max_temperature,
        }
        return self.sign("weather", msg, **kw)

    def activity(
        self, seq: int, period: int, tier: int, *, policy: int = 1, timestamp: int | None = None, **kw: Any
    ) -> bytes:
        msg = {
            "policyId": policy,
            "seq": seq,
            "timestamp": timestamp or int(time.time()),
            "period": period,
            "tier": tier,
        }
        return self.sign("activity", msg, **kw)

    @property
    def topic(self) -> str:
        return wire.events_topic(self.chain_id, self.address)


def register(store: Store, *devices: Device, active: bool = True) -> None:
    """Put devices into the store's registry mirror, as the registry follower would after DeviceRegistered."""
    store.apply_registry([RegistryEntry(d.address, d.address, None, int(d.kind), active, 1) for d in devices])


OWNER = Account.from_key(ANVIL_DEV_KEYS[3])


class ChainRegistry:
    """The deployed DeviceRegistry, driven the way an owner does: register, rotate, revoke."""

    def __init__(self, deployment: Any) -> None:
        self.deployment = deployment
        self.chain = deployment.chain
        self.w3: Web3 = deployment.chain.w3
        self.contract = deployment.contract("DeviceRegistry")
        self.deployed_block = int(deployment.manifest["contracts"]["DeviceRegistry"]["block"])
        deployed = deployment.manifest["contracts"]
        self.contracts = {kind: deployment.address(name) for kind, name in CONTRACT_OF_KIND.items() if name in deployed}

    def _deadline(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"]) + 3600

    def _sign(self, primary: str, msg: dict[str, Any], key: bytes) -> bytes:
        domain = eip712.Domain(self.chain.chain_id, self.contract.address)
        return eip712.sign_digest(key, eip712.digest(primary, msg, domain))

    def _send(self, call: Any) -> None:
        send(self.chain, OWNER, call.build_transaction({"from": OWNER.address}))

    def register(self, kind: int) -> Device:
        device = Device(kind=kind, chain_id=self.chain.chain_id, contracts=dict(self.contracts))
        register_device(self.deployment, OWNER, DeviceKind(kind), DeviceKey.from_private_key(device.key, kind))
        return device

    def rotate(self, device: Device) -> Device:
        new = Device(kind=device.kind, chain_id=device.chain_id, contracts=dict(device.contracts))
        deadline = self._deadline()
        sig = self._sign(
            "KeyRotation", {"device": device.address, "newKey": new.address, "deadline": deadline}, new.key
        )
        self._send(self.contract.functions.rotateKey(device.address, new.address, deadline, sig))
        return new

    def revoke(self, device: Device) -> None:
        self._send(self.contract.functions.revoke(device.address))
