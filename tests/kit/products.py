"""Product events signed by a device key (deliveries, readings, telematics, weather), chain time, token balances."""

from __future__ import annotations

from typing import Any

from iotsettle.oracle.device.keys import DeviceKey
from iotsettle.oracle.device.signer import sign_event
from iotsettle.oracle.protocol import eip712
from iotsettle.oracle.protocol.eip712 import Domain
from iotsettle.oracle.protocol.wire import SignedEvent

from tests.kit.cli import Cli, User


def chain_now(w3: Any) -> int:
    return int(w3.eth.get_block("latest")["timestamp"])


def warp_to(w3: Any, timestamp: int) -> None:
    w3.provider.make_request("evm_setNextBlockTimestamp", [timestamp])
    w3.provider.make_request("evm_mine", [])


def token_balance(deployment: Any, address: str) -> int:
    return int(deployment.contract("TestToken").functions.balanceOf(address).call())


def delivery(
    key: DeviceKey,
    chain_id: int,
    escrow_contract: str,
    escrow_id: int,
    seq: int,
    timestamp: int,
    location: bytes,
    max_temperature: int = 400,
) -> SignedEvent:
    msg = {
        "escrowId": escrow_id,
        "seq": seq,
        "timestamp": timestamp,
        "location": location,
        "maxTemperature": max_temperature,
    }
    return sign_event(key, "delivery", chain_id, escrow_contract, msg)


def reading(
    key: DeviceKey, chain_id: int, billing_contract: str, agreement_id: int, seq: int, timestamp: int, value: int
) -> SignedEvent:
    msg = {"agreementId": agreement_id, "seq": seq, "timestamp": timestamp, "value": value}
    return sign_event(key, "reading", chain_id, billing_contract, msg)


def _sign(key: DeviceKey, event_type: str, primary: str, chain_id: int, contract: str, msg: dict[str, Any]) -> str:
    """One wire payload line, signed with the device key (the simulator is not needed for this)."""
    digest = eip712.digest(primary, msg, Domain(chain_id, contract))
    event = SignedEvent(event_type, chain_id, contract, key.address, msg, eip712.sign_digest(key.private_key, digest))
    return event.to_payload().decode()


def telematics(
    key: DeviceKey, w3: Any, contract: str, policy_id: int, seq: int, odometer: int, harsh: int = 0, speeding: int = 0
) -> str:
    msg = {
        "policyId": policy_id,
        "seq": seq,
        "timestamp": chain_now(w3),
        "odometer": odometer,
        "harshBraking": harsh,
        "speeding": speeding,
    }
    return _sign(key, "telematics", "Telematics", w3.eth.chain_id, contract, msg)


def weather(key: DeviceKey, w3: Any, contract: str, seq: int, rainfall: int, max_temperature: int = 2500) -> str:
    msg = {
        "station": key.address,
        "seq": seq,
        "timestamp": chain_now(w3),
        "rainfall": rainfall,
        "maxTemperature": max_temperature,
    }
    return _sign(key, "weather", "WeatherObservation", w3.eth.chain_id, contract, msg)


def allow_insurer(cli: Cli, owner: User, stations: list[DeviceKey]) -> None:
    """The stations' owner lets itself name them in its seasons (a season needs the consent of every station's
    owner)."""
    for station in stations:
        cli.ok(["crop", "allow-insurer", station.address, "--insurer", owner.address], owner)


def activity(key: DeviceKey, w3: Any, contract: str, policy_id: int, seq: int, period: int, tier: int) -> str:
    """A wearable's summary of ``period``, signed now (chain time)."""
    msg = {"policyId": policy_id, "seq": seq, "timestamp": chain_now(w3), "period": period, "tier": tier}
    return _sign(key, "activity", "ActivitySummary", w3.eth.chain_id, contract, msg)
