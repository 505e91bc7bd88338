"""The device signer: payloads the oracle decodes and verifies, digests equal to the deployed contracts' own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from iotsettle.oracle.device.fleet import contracts_from_manifest
from iotsettle.oracle.device.keys import DeliveryAlreadySigned, DeliveryLog, DeviceKey, MemoryCounter, deliveries_path
from iotsettle.oracle.device.signer import Contracts, EventSigner, sign_event, sign_key_rotation, sign_registration
from iotsettle.oracle.protocol import batch_tree, wire
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.eip712 import SECP256K1_N, address_of
from iotsettle.oracle.protocol.errors import ConfigError, KeyFileError, ProtocolError

KEY = DeviceKey.from_private_key("0x" + "42" * 32)
CONTRACTS = Contracts("0x" + "11" * 20, "0x" + "22" * 20, "0x" + "33" * 20)

uint64 = st.integers(0, 2**64 - 1)
wire_uint64 = st.integers(0, 2**53 - 1)  # uint64 fields travel as JSON numbers
uint256 = st.integers(0, 2**256 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
bytes32 = st.binary(min_size=32, max_size=32)
private_keys = st.integers(1, SECP256K1_N - 1).map(lambda n: n.to_bytes(32, "big"))
addresses = st.binary(min_size=20, max_size=20).map(lambda raw: "0x" + raw.hex())
fixture_settings = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def test_signed_events_decode_and_recover_to_the_device() -> None:
    signer = EventSigner(KEY, 31337, CONTRACTS, MemoryCounter(5))
    reading = signer.reading(2**200 + 7, 123_456_789, timestamp=1_764_340_000)
    delivery = signer.delivery(9, b"u33dbfc".ljust(32, b"\0"), -1250, timestamp=1_764_340_001)
    for event, contract in ((reading, CONTRACTS.metered_billing), (delivery, CONTRACTS.delivery_escrow)):
        payload = event.to_payload()
        assert len(payload) <= wire.MAX_PAYLOAD_BYTES
        decoded = wire.decode(payload)
        assert decoded == event
        assert decoded.signer() == KEY.address
        assert decoded.contract.lower() == contract.lower()
    assert (reading.seq, delivery.seq) == (5, 6)
    assert wire.decode(reading.to_payload()).msg["agreementId"] == 2**200 + 7


def test_a_signature_binds_chain_and_contract() -> None:
    msg = {"agreementId": 1, "seq": 1, "timestamp": 1, "value": 1}
    base = sign_event(KEY, "reading", 31337, CONTRACTS.metered_billing, msg)
    other_chain = sign_event(KEY, "reading", 1, CONTRACTS.metered_billing, msg)
    other_contract = sign_event(KEY, "reading", 31337, CONTRACTS.delivery_escrow, msg)
    assert len({base.digest, other_chain.digest, other_contract.digest}) == 3
    # The base signature pasted onto another domain recovers to somebody else.
    moved = wire.SignedEvent("reading", 1, CONTRACTS.metered_billing, KEY.address, msg, base.sig)
    assert moved.signer() != KEY.address


def test_values_the_wire_cannot_carry_are_never_signed() -> None:
    msg = {"agreementId": 1, "seq": 2**53, "timestamp": 1, "value": 1}
    with pytest.raises(ProtocolError, match="wire limit"):
        sign_event(KEY, "reading", 31337, CONTRACTS.metered_billing, msg)


def _call(contract: Any, name: str, *args: Any) -> bytes:
    return bytes(getattr(contract.functions, name)(*args).call())


@fixture_settings
@given(agreement=uint256, seq=wire_uint64, timestamp=wire_uint64, value=uint256, key=private_keys)
def test_reading_digest_equals_the_contract(
    deployment: Any, agreement: int, seq: int, timestamp: int, value: int, key: bytes
) -> None:
    billing = deployment.contract("MeteredBilling")
    device = DeviceKey.from_private_key(key)
    event = sign_event(
        device,
        "reading",
        deployment.chain.chain_id,
        billing.address,
        {"agreementId": agreement, "seq": seq, "timestamp": timestamp, "value": value},
    )
    assert event.digest == _call(billing, "hashReading", agreement, seq, timestamp, value)
    assert wire.decode(event.to_payload()).signer() == device.address


@fixture_settings
@given(escrow=uint256, seq=wire_uint64, timestamp=wire_uint64, location=bytes32, temperature=int32)
def test_delivery_digest_equals_the_contract(
    deployment: Any, escrow: int, seq: int, timestamp: int, location: bytes, temperature: int
) -> None:
    escrow_contract = deployment.contract("DeliveryEscrow")
    event = sign_event(
        KEY,
        "delivery",
        deployment.chain.chain_id,
        escrow_contract.address,
        {"escrowId": escrow, "seq": seq, "timestamp": timestamp, "location": location, "maxTemperature": temperature},
    )
    assert event.digest == _call(escrow_contract, "hashDelivery", escrow, seq, timestamp, location, temperature)


@fixture_settings
@given(
    key=private_keys,
    owner=addresses,
    kind=st.sampled_from(list(DeviceKind)),
    metadata=bytes32,
    deadline=uint64,
    new_key=private_keys,
)
def test_registration_and_rotation_digests_equal_the_registry(
    deployment: Any, key: bytes, owner: str, kind: DeviceKind, metadata: bytes, deadline: int, new_key: bytes
) -> None:
    registry = deployment.contract("DeviceRegistry")
    device = DeviceKey.from_private_key(key)
    chain_id = deployment.chain.chain_id
    digest, signature = sign_registration(
        device,
        owner=owner,
        kind=kind,
        metadata_hash=metadata,
        deadline=deadline,
        chain_id=chain_id,
        registry=registry.address,
    )
    assert digest == _call(
        registry,
        "hashRegistration",
        device.address,
        registry.w3.to_checksum_address(owner),
        int(kind),
        metadata,
        deadline,
    )
    assert len(signature) == 65 and signature[64] in (27, 28)
    rotated = DeviceKey.from_private_key(new_key)
    digest, _ = sign_key_rotation(
        rotated, device=device.address, deadline=deadline, chain_id=chain_id, registry=registry.address
    )
    assert digest == _call(registry, "hashKeyRotation", device.address, address_of(new_key), deadline)


uint32 = st.integers(0, 2**32 - 1)


@fixture_settings
@given(
    policy=uint256,
    seq=wire_uint64,
    timestamp=wire_uint64,
    odometer=wire_uint64,
    harsh=uint32,
    speeding=uint32,
    key=private_keys,
)
def test_telematics_digest_equals_motor_insurance(
    deployment: Any, policy: int, seq: int, timestamp: int, odometer: int, harsh: int, speeding: int, key: bytes
) -> None:
    direct, optimistic = deployment.contract("MotorInsurance"), deployment.contract("OptimisticMotor")
    device = DeviceKey.from_private_key(key)
    contracts = Contracts(
        CONTRACTS.metered_billing,
        CONTRACTS.delivery_escrow,
        motor_insurance=direct.address,
        optimistic_motor=optimistic.address,
    )
    event = EventSigner(device, deployment.chain.chain_id, contracts, MemoryCounter(seq)).telematics(
        policy, odometer, harsh, speeding, timestamp=timestamp
    )
    # an id with OptimisticMotor's flag (bit 63) is signed for its domain, any other for MotorInsurance's
    motor = optimistic if policy & batch_tree.AGREEMENT_ID_FLAG else direct
    assert event.digest == _call(motor, "hashTelematics", policy, seq, timestamp, odometer, harsh, speeding)
    assert wire.decode(event.to_payload()).signer() == device.address


@fixture_settings
@given(seq=wire_uint64, timestamp=wire_uint64, rainfall=wire_uint64, temperature=int32, key=private_keys)
def test_observation_digest_equals_crop_insurance(
    deployment: Any, seq: int, timestamp: int, rainfall: int, temperature: int, key: bytes
) -> None:
    crop = deployment.contract("CropInsurance")
    station = DeviceKey.from_private_key(key)
    contracts = Contracts(CONTRACTS.metered_billing, CONTRACTS.delivery_escrow, crop_insurance=crop.address)
    event = EventSigner(station, deployment.chain.chain_id, contracts, MemoryCounter(seq)).weather(
        rainfall, temperature, timestamp=timestamp
    )
    assert event.msg["station"] == station.address
    assert event.digest == _call(crop, "hashObservation", station.address, seq, timestamp, rainfall, temperature)
    assert wire.decode(event.to_payload()).signer() == station.address


def test_a_reading_is_signed_for_the_contract_that_minted_its_agreement(deployment: Any) -> None:
    """An OptimisticBilling id carries ``AGREEMENT_ID_FLAG``: the SDK signs its readings for that contract's domain
    without being told, and a MeteredBilling id's for MeteredBilling."""
    contracts = contracts_from_manifest(deployment.manifest)
    chain_id = deployment.chain.chain_id
    direct_id = (int(KEY.address, 16) << 96) | (1 << 64) | 5
    optimistic_id = direct_id | batch_tree.AGREEMENT_ID_FLAG
    for agreement, name in ((direct_id, "MeteredBilling"), (optimistic_id, "OptimisticBilling")):
        event = EventSigner(KEY, chain_id, contracts, MemoryCounter(3)).reading(agreement, 250, timestamp=1_000)
        contract = deployment.contract(name)
        assert event.contract == contract.address, name
        assert event.digest == _call(contract, "hashReading", agreement, 3, 1_000, 250), name
    assert int(deployment.contract("OptimisticBilling").functions.AGREEMENT_ID_FLAG().call()) == (
        batch_tree.AGREEMENT_ID_FLAG
    )
    with pytest.raises(ConfigError, match="no OptimisticBilling address"):
        EventSigner(KEY, chain_id, CONTRACTS, MemoryCounter()).reading(optimistic_id, 250)


def test_signing_for_a_product_the_deployment_lacks_is_refused() -> None:
    signer = EventSigner(KEY, 31337, CONTRACTS, MemoryCounter())
    with pytest.raises(ConfigError, match="no MotorInsurance address"):
        signer.telematics(1, 2, 3, 4)
    with pytest.raises(ConfigError, match="no CropInsurance address"):
        signer.weather(1, 2)


def test_a_tracker_signs_one_delivery_per_escrow_even_across_restarts(tmp_path: Path) -> None:
    """The first valid delivery relayed releases an escrow; a second signed one would let the relayer choose (say,
    the one within the cold-chain limit), so the SDK never signs it, not even after the device restarts."""
    destination = b"u33dbfc".ljust(32, b"\0")
    log_path = deliveries_path(tmp_path / "tracker.json")
    signer = EventSigner(KEY, 31337, CONTRACTS, MemoryCounter(), DeliveryLog(log_path, KEY.address))
    first = signer.delivery(9, destination, 950, timestamp=1_764_340_000)
    with pytest.raises(DeliveryAlreadySigned, match="escrow 9 was already signed"):
        signer.delivery(9, destination, 650, timestamp=1_764_340_001)
    assert signer.delivery(10, destination, 650, timestamp=1_764_340_002).seq == first.seq + 1, "a refusal uses no seq"

    restarted = EventSigner(KEY, 31337, CONTRACTS, MemoryCounter(100), DeliveryLog(log_path, KEY.address))
    with pytest.raises(DeliveryAlreadySigned):
        restarted.delivery(9, destination, 650)
    other_chain = EventSigner(KEY, 1, CONTRACTS, MemoryCounter(), DeliveryLog(log_path, KEY.address))
    assert other_chain.delivery(9, destination, 650).msg["escrowId"] == 9, "escrow ids are per chain and contract"
    with pytest.raises(KeyFileError, match="belongs to another device"):
        DeliveryLog(log_path, "0x" + "ab" * 20)


def test_without_a_log_the_signer_still_refuses_a_second_delivery_in_process() -> None:
    signer = EventSigner(KEY, 31337, CONTRACTS, MemoryCounter())
    signer.delivery(3, b"u33dbfc".ljust(32, b"\0"), 0)
    with pytest.raises(DeliveryAlreadySigned):
        signer.delivery(3, b"u33dbfc".ljust(32, b"\0"), 0)
