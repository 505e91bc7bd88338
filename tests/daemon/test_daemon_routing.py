"""A route group (docs/SCALING.md): oracle instances on plain subscriptions split the fleet, each device's events
stored, answered and relayed by one instance only, the rendezvous owner over the instances online (a real mosquitto,
real SQLite files, each instance with its own)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from iotsettle.oracle.daemon.intake import Intake, IntakeSettings
from iotsettle.oracle.daemon.intake.routing import Router, owner
from iotsettle.oracle.daemon.metrics import Metrics
from iotsettle.oracle.daemon.service import status_topic
from iotsettle.oracle.daemon.store import Store
from iotsettle.oracle.testing.devices import Publisher
from iotsettle.oracle.testing.wait import wait_for

from tests.kit.daemon import DaemonProcess
from tests.kit.devices import CHAIN_ID, CONTRACTS, Device, register

INSTANCES = 3
METERS = 6
READINGS = 5


def test_rendezvous_owner_moves_only_the_devices_of_an_instance_that_leaves() -> None:
    devices = [Device().address for _ in range(300)]
    three = {"a", "b", "c"}
    before = {d: owner(three, d) for d in devices}
    after = {d: owner(three - {"b"}, d) for d in devices}
    assert {d for d in devices if before[d] != after[d]} == {d for d in devices if before[d] == "b"}
    assert all(owner(three, d) == owner(three, d.upper().replace("0X", "0x")) for d in devices[:10])
    assert len(set(before.values())) == 3  # 300 devices over three instances: each owns some


def test_the_view_counts_online_instances_of_its_own_group_and_is_ready_at_its_own_echo() -> None:
    me, other, stranger = (status_topic(CHAIN_ID, name) for name in ("a", "b", "c"))
    router = Router(me, "fleet", CHAIN_ID)

    def status(state: str, group: str = "fleet", boot: str = "") -> bytes:
        return json.dumps({"status": state, "routeGroup": group, "boot": boot}).encode()

    router.observe(me, status("online", boot="an earlier run"))  # a retained status of our previous life
    assert not router.ready
    router.observe(other, status("online"))
    router.observe(stranger, status("online", group="another fleet"))
    router.observe(stranger, b"not json")
    assert router.instances == {me, other}
    router.observe(me, status("online", boot=router.boot))
    assert router.ready
    router.observe(other, status("offline"))  # its last will
    assert router.instances == {me}
    assert all(router.owns(Device().address.lower()) for _ in range(20)), "alone, it owns every device"


@pytest.fixture
def group(mosquitto, tmp_path: Path) -> Iterator[tuple[list[Intake], list[Store]]]:
    """Three started intakes of one route group, each with its own store; every one sees all three online."""
    name = f"r{uuid.uuid4().hex[:6]}"
    intakes: list[Intake] = []
    stores: list[Store] = []
    for number in range(INSTANCES):
        stores.append(Store.open(tmp_path / f"oracle-{number}.db"))
        settings = IntakeSettings(
            chain_id=CHAIN_ID,
            contracts=CONTRACTS,
            host=mosquitto.host,
            port=mosquitto.port,
            client_id=f"{name}-{number}",
            route_group=name,
            status_topic=status_topic(CHAIN_ID, f"{name}-{number}"),
            batch_latency_s=0.01,
        )
        intakes.append(Intake(settings, stores[-1], Metrics()))
    try:
        for intake in intakes:
            intake.start()
        wait_for(
            lambda: all(i.router is not None and len(i.router.instances) == INSTANCES for i in intakes),
            20,
            "every instance to see the three online",
        )
        yield intakes, stores
    finally:
        for intake in intakes:
            intake.stop()
        for db in stores:
            db.close()


def test_each_device_is_stored_and_answered_by_its_owner_only(
    group: tuple[list[Intake], list[Store]], publisher: Publisher
) -> None:
    intakes, stores = group
    members = {i.settings.status_topic for i in intakes}
    devices = [Device() for _ in range(METERS)]
    for intake, db in zip(intakes, stores, strict=True):
        register(db, *devices)
        intake.registry_changed()
    now = int(time.time())
    publisher.publish_many(
        [
            (d.topic, d.reading(seq, 100 + seq, timestamp=now - 60 + seq))
            for seq in range(1, READINGS + 1)
            for d in devices
        ]
    )
    wait_for(lambda: sum(db.event_count() for db in stores) == METERS * READINGS, 20, "every reading stored")
    for device in devices:
        holders = [n for n, db in enumerate(stores) if db.events_of_device(device.address)]
        assert len(holders) == 1, f"{device.address} stored by instances {holders}"
        assert intakes[holders[0]].settings.status_topic == owner(members, device.address)
        assert [e.seq for e in stores[holders[0]].events_of_device(device.address)] == list(range(1, READINGS + 1))
    replies = publisher.collect(METERS * READINGS)
    assert {body["status"] for _, body in replies} == {"accepted"}  # one answer each: none "duplicate"
    for intake, db in zip(intakes, stores, strict=True):
        # every copy reached every instance; what it did not store it acknowledged unread
        assert intake.metrics.routed_away._value.get() >= METERS * READINGS - db.event_count()

    # An instance that stops goes offline; the two others take its devices over from the next reading on.
    leaving = intakes[0]
    leaving.stop()
    wait_for(lambda: all(len(i.router.instances) == 2 for i in intakes[1:] if i.router), 20, "two instances online")
    remaining = members - {leaving.settings.status_topic}
    publisher.publish_many([(d.topic, d.reading(READINGS + 1, 200, timestamp=now)) for d in devices])

    def holders_of_next(device: Device) -> list[int]:
        return [
            n for n, db in enumerate(stores) if any(e.seq == READINGS + 1 for e in db.events_of_device(device.address))
        ]

    wait_for(lambda: all(holders_of_next(d) for d in devices), 20, "the next readings stored")
    for device in devices:
        holders = holders_of_next(device)
        assert len(holders) == 1 and holders[0] != 0, holders
        assert intakes[holders[0]].settings.status_topic == owner(remaining, device.address)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"IOTSETTLE_ORACLE_SHARED_GROUP": "oracles", "IOTSETTLE_ORACLE_ROUTE_GROUP": "oracles"},
            "shared_group and route_group exclude each other",
        ),
        ({"IOTSETTLE_ORACLE_ROUTE_GROUP": "fleet/a"}, "route_group without / + #"),
    ],
)
def test_a_route_group_the_daemon_cannot_work_with_is_refused_in_one_line(
    tmp_path: Path, deployment: Any, mosquitto: Any, overrides: dict[str, str], message: str
) -> None:
    code, output = DaemonProcess(tmp_path, deployment, mosquitto).run_to_exit(**overrides)
    assert code != 0
    assert message in output and "Traceback" not in output
