"""The registry follower on a real anvil with the DeviceRegistry deployed: registrations, rotations and revocations
reach the oracle's store from chain logs, and the intake follows them."""

from __future__ import annotations

import time
import uuid
from typing import Any

from iotsettle.oracle.daemon.intake import Intake, IntakeSettings
from iotsettle.oracle.daemon.metrics import Metrics
from iotsettle.oracle.daemon.registry_follower import RegistryFollower
from iotsettle.oracle.daemon.store import Store
from iotsettle.oracle.protocol import device_kinds
from iotsettle.oracle.testing.devices import Publisher

from tests.kit.devices import OWNER, ChainRegistry, Device


def follower_for(registry: ChainRegistry, store: Store, **kw: Any) -> RegistryFollower:
    return RegistryFollower(
        registry.w3,
        registry.contract,
        store,
        chain_id=registry.chain.chain_id,
        start_block=registry.deployed_block,
        **kw,
    )


def test_registrations_rotations_and_revocations_reach_the_store(registry: ChainRegistry, store: Store) -> None:
    meter = registry.register(device_kinds.DeviceKind.METER)
    tracker = registry.register(device_kinds.DeviceKind.TRACKER)
    follower = follower_for(registry, store)
    assert follower.sync() >= 2
    entries = store.registry()
    assert (entries[meter.address].device, entries[meter.address].kind, entries[meter.address].active) == (
        meter.address,
        device_kinds.DeviceKind.METER,
        True,
    )
    assert entries[tracker.address].owner == OWNER.address

    new_key = registry.rotate(meter)
    registry.revoke(tracker)
    assert follower.sync() == 2
    entries = store.registry()
    assert not entries[meter.address].active
    assert (entries[new_key.address].device, entries[new_key.address].active) == (meter.address, True)
    assert not entries[tracker.address].active

    # the cursor is durable: a new follower on the same store reads nothing twice
    assert follower_for(registry, store).sync() == 0


def test_a_device_registered_on_chain_is_accepted_after_the_next_poll(
    registry: ChainRegistry, store: Store, mosquitto: Any
) -> None:
    metrics = Metrics()
    settings = IntakeSettings(
        chain_id=registry.chain.chain_id,
        contracts=registry.contracts,
        host=mosquitto.host,
        port=mosquitto.port,
        client_id=f"oracle-{uuid.uuid4().hex[:8]}",
        batch_latency_s=0.01,
    )
    intake = Intake(settings, store, metrics)
    follower = follower_for(registry, store, poll_interval=0.2, on_change=intake.registry_changed, metrics=metrics)
    follower.sync()
    intake.start()
    follower.start()
    publisher = Publisher(mosquitto.host, mosquitto.port, registry.chain.chain_id)
    try:
        assert intake.wait_connected(10)
        early = Device(
            kind=device_kinds.DeviceKind.METER, chain_id=registry.chain.chain_id, contracts=registry.contracts
        )
        publisher.publish(early.topic, early.reading(1, 10))
        assert publisher.collect(1)[0][1]["reason"] == "unknown_device"

        device = registry.register(device_kinds.DeviceKind.METER)
        deadline = time.monotonic() + 10
        status = None
        seq = 1
        while status != "accepted" and time.monotonic() < deadline:
            publisher.publish(device.topic, device.reading(seq, 100 + seq))
            status = publisher.collect(1)[0][1]["status"]
            seq += 1
            time.sleep(0.1)
        assert status == "accepted"
        assert [e.device for e in store.events_of_device(device.address)] == [device.address]
    finally:
        publisher.close()
        follower.stop()
        intake.stop()
