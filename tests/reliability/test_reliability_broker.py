"""Broker restarts under a running daemon (docs/RELIABILITY.md, item 12; the meters' kill -9 with ``--runslow``), on a
mosquitto of the test's own (the session's broker is shared): persistent session (fixed client id,
``clean_start=False``, session expiry), QoS 1.

- graceful restart (SIGTERM: mosquitto writes its persistence file): the daemon reconnects and resubscribes by
  itself; events the broker queued for the daemon's session while the daemon was away survive the restart;
  nothing is lost, nothing is paid twice.
- kill -9: mosquitto saves its state every ``autosave_interval`` (1 s in oracle/chain/node.py), so what it took
  in during the last second before the kill may be gone, although the broker had acknowledged it to the device.
  Meters (a raw client here, deleting on PUBACK as the SDK does for cumulative kinds): the test counts what the
  window cost (lost_at_broker), then sends each meter's next reading, whose cumulative register pays what the lost
  one was worth (lost=0). Deliveries and weather observations (the device SDK, which keeps them until the oracle's
  reply and publishes them again on reconnect): nothing is lost in the first place (lost=0, default run).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from iotsettle.oracle.chain.node import Mosquitto
from iotsettle.oracle.device.buffer import OfflineBuffer
from iotsettle.oracle.device.publisher import BrokerSettings
from iotsettle.oracle.device.publisher import Publisher as DevicePublisher
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.wire import TOPIC_ROOT
from iotsettle.oracle.testing.devices import Publisher
from iotsettle.oracle.testing.wait import wait_for

from tests.kit.reliability import Fleet, daemon, fund_relayer, nonce_report, store_statuses, summary
from tests.kit.settlement import Scenario

METERS = 4


def _stored(process: Any) -> int:
    return sum(store_statuses(process.db).values()) if process.db.exists() else 0


def _unsettled(process: Any) -> int:
    counts = store_statuses(process.db)
    return counts["pending"] + counts["claimed"] + counts["submitted"]


def _mqtt_state(process: Any) -> str | None:
    report = process.health()
    return report["checks"]["mqtt"]["status"] if report else None


@pytest.mark.parametrize("how", ["graceful", pytest.param("kill9", marks=pytest.mark.slow)])
def test_broker_restart_with_a_persistent_session(how: str, broker: Mosquitto, tmp_path: Path, deployment: Any) -> None:
    fleet = Fleet(deployment, METERS)
    key = fund_relayer(deployment)
    process = daemon(tmp_path / "oracle", deployment, broker, key)
    publisher = Publisher(broker.host, broker.port, deployment.chain.chain_id)
    restarts = 0
    try:
        process.start().wait_ready()
        # 1. live traffic, then the broker goes away under the connected daemon and comes back
        publisher.publish_many(fleet.readings(1, timestamp=fleet.started + 1))
        wait_for(lambda: _stored(process) == METERS, 20, "round 1 stored")
        (broker.stop if how == "graceful" else broker.kill)()
        wait_for(lambda: _mqtt_state(process) == "down", 10, "health to say the broker is gone")
        broker.start()
        restarts += 1
        wait_for(lambda: _mqtt_state(process) == "ok", 40, "the daemon to reconnect on its own")
        wait_for(publisher.client.is_connected, 20, "the device to reconnect")
        publisher.publish_many(fleet.readings(2, timestamp=fleet.started + 2))  # resubscribed: these arrive too
        wait_for(lambda: _stored(process) == 2 * METERS, 20, "round 2 stored after the reconnect")

        # 2. the daemon is away; the broker queues round 3 for its session; then the broker restarts
        process.signal(signal.SIGTERM)
        assert process.wait(60) == 0
        publisher.publish_many(fleet.readings(3, timestamp=fleet.started + 3))
        time.sleep(2.5)  # > autosave_interval: a kill -9 now happens after mosquitto saved round 3
        (broker.stop if how == "graceful" else broker.kill)()
        broker.start()
        restarts += 1
        process.start().wait_ready()
        wait_for(lambda: _stored(process) == 3 * METERS, 30, "round 3 delivered from the restarted broker")

        # 3. only for kill -9: events published just before the kill (inside the autosave window) may be lost
        window_lost = 0
        retried = None
        if how == "kill9":
            process.signal(signal.SIGTERM)
            assert process.wait(60) == 0
            wait_for(publisher.client.is_connected, 20, "the device to reconnect")
            publisher.publish_many(fleet.readings(4, timestamp=fleet.started + 4))
            broker.kill()
            broker.start()
            restarts += 1
            process.start().wait_ready()
            time.sleep(3.0)
            window_lost = 4 * METERS - _stored(process)
            # what survived settles; an agreement whose round 4 was lost stays paid up to round 3
            wait_for(lambda: _unsettled(process) == 0, 30, "what survived settled")
            ledger = fleet.ledger()
            assert ledger.double == 0 and ledger.lost <= window_lost, ledger
            # The device SDK forgets an event once the broker acknowledged it (oracle/device/buffer.py), so a lost
            # reading is not sent again; the meter's next reading carries the cumulative register and pays it.
            wait_for(publisher.client.is_connected, 20, "the device to reconnect")
            publisher.publish_many(fleet.readings(5, timestamp=fleet.started + 5))
            retried = fleet.wait_paid(30)
        else:
            ledger = fleet.wait_paid(30)
    finally:
        publisher.close()
        process.kill()
    assert ledger.double == 0, ledger
    if how == "graceful":
        assert ledger.lost == 0, ledger
    else:
        assert retried.clean, f"after the device's retry nothing is missing and nothing paid twice: {retried}"
    assert nonce_report(process.db, deployment.chain.w3, key).gapless
    final = ledger if how == "graceful" else retried
    summary(
        f"broker-{how}",
        restarts=restarts,
        events=final.events_sent,
        lost_at_broker=window_lost,
        lost=final.lost,
        double=final.double,
    )


# ------------------------------------------------------------------ deliveries and weather observations (kill -9)

LOCATION = b"u33dc0".ljust(32, b"\0")
DEVICES = 4


def _sdk(broker: Mosquitto, tmp_path: Path, chain_id: int) -> DevicePublisher:
    """The device SDK as a gateway for the test's devices: a durable outbox, replies of every device."""
    return DevicePublisher(
        OfflineBuffer(tmp_path / "outbox.db"),
        BrokerSettings(broker.host, broker.port, "gw-reliability", reconnect_min_delay=1, reconnect_max_delay=2),
        reply_topics=[f"{TOPIC_ROOT}/{chain_id}/+/replies"],
        reply_timeout=5.0,
        reply_timeout_max=20.0,
    )


def _settled(contract: Any, event: str, from_block: int) -> Counter[tuple[int | str, int]]:
    """(target, seq) → how many outcome logs of ``event`` say it settled."""
    logs = getattr(contract.events, event)().get_logs(from_block=from_block)
    return Counter(
        (
            int(log["args"]["escrowId"]) if "escrowId" in log["args"] else str(log["args"]["station"]).lower(),
            int(log["args"]["seq"]),
        )
        for log in logs
    )


@pytest.mark.parametrize("kind", ["delivery", "weather"])
def test_broker_kill9_loses_no_delivery_and_no_weather_observation(
    kind: str, broker: Mosquitto, tmp_path: Path, deployment: Any
) -> None:
    """kill -9 right after the broker acknowledged a burst (the daemon away, so the burst sits in its session
    queue): the device SDK keeps these kinds until the oracle's reply and publishes them again after reconnecting;
    every event settles once (lost=0, double=0). Weather observations must also reach the chain in seq order per
    station (CropInsurance takes seq = last + 1 only), so a round after the restart checks that nothing overtook."""
    scenario = Scenario(deployment)
    from_block = scenario.w3.eth.block_number
    key = fund_relayer(deployment)
    process = daemon(tmp_path / "oracle", deployment, broker, key)
    sent: list[tuple[int | str, int]] = []  # (escrow id or station, seq) of every event signed
    if kind == "delivery":
        contract = scenario.escrow
        escrows = [scenario.tracker_escrow(LOCATION) for _ in range(2 * DEVICES)]

        def round_of(index: int) -> list[tuple[str, bytes]]:
            # round 1 delivers the first half of the escrows, round 2 (the burst before the kill) the second half
            batch = escrows[:DEVICES] if index == 1 else escrows[DEVICES:] if index == 2 else []
            sent.extend((escrow, 1) for _, escrow, _ in batch)
            ts = max(int(time.time()), scenario.now())
            return [(device.topic, device.sign("delivery", _delivery(escrow, ts))) for device, escrow, _ in batch]

        outcome = "DeliveryConfirmed"
    else:
        contract = deployment.contract("CropInsurance")
        stations = [scenario.register(DeviceKind.WEATHER_STATION) for _ in range(DEVICES)]
        for station in stations:
            station.contracts["weather"] = contract.address
        started = max(int(time.time()), scenario.now())

        def round_of(index: int) -> list[tuple[str, bytes]]:
            sent.extend((station.address.lower(), index) for station in stations)
            return [(s.topic, s.weather(index, 5 * index, 2_400 + index, timestamp=started + index)) for s in stations]

        outcome = "ObservationRecorded"
    rounds = 3 if kind == "weather" else 2
    publisher = _sdk(broker, tmp_path, deployment.chain.chain_id)
    try:
        process.start().wait_ready()
        publisher.start()
        assert publisher.wait_connected(20)
        # 1. live traffic, answered and deleted from the outbox
        publisher.submit_many(round_of(1))
        assert publisher.wait_answered(30), f"round 1 not answered: {publisher.stats}"
        # 2. the daemon is away; the broker acknowledges the burst, queues it for the daemon's session, and is
        #    killed before its next autosave: the burst is gone from the broker
        process.signal(signal.SIGTERM)
        assert process.wait(60) == 0
        publisher.submit_many(round_of(2))
        assert publisher.flush(20), f"burst not acknowledged: {publisher.stats}"
        broker.kill()
        broker.start()
        process.start().wait_ready()
        # 3. (weather) the stations report on after the restart
        #    (submitted at once: the SDK publishes what waits for a reply first when it reconnects)
        for index in range(3, rounds + 1):
            publisher.submit_many(round_of(index))
        answered = publisher.wait_answered(60)
        stats = publisher.stats

        def all_settled() -> bool:
            settled = _settled(contract, outcome, from_block)
            return all(settled[item] for item in sent)

        with contextlib.suppress(TimeoutError):  # counted and reported below
            wait_for(all_settled, 60, f"every {kind} settled on chain")
    finally:
        publisher.stop()
        process.kill()
    settled = _settled(contract, outcome, from_block)
    lost = sum(1 for item in sent if settled[item] == 0)
    double = sum(1 for item in sent if settled[item] > 1)
    summary(
        f"broker-kill9-{kind}",
        restarts=1,
        events=len(sent),
        published_again=stats.republished,
        lost=lost,
        double=double,
    )
    assert answered, f"the oracle did not answer every event: {stats}"
    assert lost == 0 and double == 0, f"lost={lost} double={double} of {len(sent)}: {settled}"
    assert nonce_report(process.db, deployment.chain.w3, key).gapless


def _delivery(escrow: int, timestamp: int) -> dict[str, Any]:
    return {"escrowId": escrow, "seq": 1, "timestamp": timestamp, "location": LOCATION, "maxTemperature": 4}
