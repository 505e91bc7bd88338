"""The oracle relays the insurance kinds: vehicles' telematics reports (MotorInsurance.settle) and weather stations'
observations (CropInsurance.record) — fraud rules, storage (and the schema migration of existing files), planning,
and end to end through MQTT, the daemon and the contracts on anvil."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from iotsettle.oracle.chain.artifacts import load_artifact
from iotsettle.oracle.chain.compiler import ensure_compiled
from iotsettle.oracle.chain.connection import ANVIL_DEV_KEYS
from iotsettle.oracle.chain.send import send
from iotsettle.oracle.config import Config
from iotsettle.oracle.daemon.calldata import KindSpec, decode_outcomes
from iotsettle.oracle.daemon.intake import Intake, IntakeSettings
from iotsettle.oracle.daemon.metrics import Metrics
from iotsettle.oracle.daemon.planner import Planner, PlannerSettings
from iotsettle.oracle.daemon.rules import Outcome, RuleSettings, evaluate
from iotsettle.oracle.daemon.settler import terms_reader
from iotsettle.oracle.daemon.store import (
    _MIGRATIONS,
    COLUMNS,
    EXTRA,
    SCHEMA_VERSION,
    DeviceState,
    EventRecord,
    EventStatus,
    Store,
    StoredEvent,
    extra_fields,
)
from iotsettle.oracle.ops.crop import packed_observations
from iotsettle.oracle.protocol import eip712, premium, wire
from iotsettle.oracle.protocol import settled as settled_log
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.kinds import KINDS
from iotsettle.oracle.protocol.packed import UNKNOWN_TERMS, bytes_argument, item_size, pack_item
from iotsettle.oracle.testing.devices import Publisher
from iotsettle.oracle.testing.wait import wait_for
from web3 import Web3

from tests.kit.daemon import DaemonProcess
from tests.kit.devices import ALL_CONTRACTS, CHAIN_ID, OWNER, ChainRegistry, Device, register

NOW = 1_800_000_000
KEY = os.urandom(32)
CONTRACT = "0x" + "c0" * 20


# ------------------------------------------------------------------------------------------------- fraud rules


def telematics(seq: int, odometer: int, harsh: int, speeding: int, ts: int, policy: int = 1) -> wire.SignedEvent:
    msg = {
        "policyId": policy,
        "seq": seq,
        "timestamp": ts,
        "odometer": odometer,
        "harshBraking": harsh,
        "speeding": speeding,
    }
    return wire.decode(wire.encode("telematics", CHAIN_ID, CONTRACT, eip712.address_of(KEY), msg, b"\x1b" * 65))


def observation(seq: int, rainfall: int, max_temperature: int, ts: int) -> wire.SignedEvent:
    station = eip712.address_of(KEY)
    msg = {"station": station, "seq": seq, "timestamp": ts, "rainfall": rainfall, "maxTemperature": max_temperature}
    return wire.decode(wire.encode("weather", CHAIN_ID, CONTRACT, station, msg, b"\x1b" * 65))


def run(events: list[wire.SignedEvent], kind: int, settings: RuleSettings | None = None) -> list[str]:
    """Evaluate events in order as intake does; each outcome's code."""
    state: DeviceState | None = None
    accepted: dict[int, bytes] = {}
    codes = []
    for event in events:
        verdict = evaluate(event, "0xD1", kind, state, NOW, settings or RuleSettings(), lambda d, s: accepted.get(s))
        state = verdict.state
        if verdict.outcome is Outcome.ACCEPT:
            accepted[event.seq] = event.digest
        codes.append(str(verdict.reason) if verdict.reason else str(verdict.outcome))
    return codes


def test_a_vehicle_report_whose_counters_go_down_is_a_rollback_and_the_odometer_is_rate_limited() -> None:
    vehicle = DeviceKind.VEHICLE
    first = telematics(1, 10_000, 3, 2, NOW - 100)
    assert (
        run([first, telematics(2, 10_500, 4, 2, NOW - 90), telematics(3, 10_500, 4, 2, NOW - 80)], vehicle)
        == ["accepted"] * 3
    )
    # any of the three cumulative counters going down
    assert run([first, telematics(2, 9_999, 3, 2, NOW - 90)], vehicle) == ["accepted", "counter_rollback"]
    assert run([first, telematics(2, 10_100, 2, 2, NOW - 90)], vehicle) == ["accepted", "counter_rollback"]
    assert run([first, telematics(2, 10_100, 3, 1, NOW - 90)], vehicle) == ["accepted", "counter_rollback"]
    # vehicle limit 100 m/s: 10 s allow 1,000 m, not 1,001
    assert run([first, telematics(2, 11_000, 3, 2, NOW - 90)], vehicle) == ["accepted", "accepted"]
    assert run([first, telematics(2, 11_001, 3, 2, NOW - 90)], vehicle) == ["accepted", "impossible_rate"]
    assert (
        run([first, telematics(2, 11_001, 3, 2, NOW - 90)], vehicle, RuleSettings(max_rate_vehicle=0))
        == ["accepted"] * 2
    )
    # counters are compared per policy: a second policy of the same vehicle has its own baseline
    assert (
        run([first, telematics(2, 500, 0, 0, NOW - 90, policy=2), telematics(3, 10_200, 3, 2, NOW - 80)], vehicle)
        == ["accepted"] * 3
    )


def test_a_station_whose_rain_register_goes_down_is_a_rollback_but_its_temperature_may_fall() -> None:
    station = DeviceKind.WEATHER_STATION
    first = observation(1, 5_000, 3_512, NOW - 100)
    # maxTemperature is a gauge: lower than before is an honest observation
    assert (
        run([first, observation(2, 5_020, 1_800, NOW - 90), observation(3, 5_020, -250, NOW - 80)], station)
        == ["accepted"] * 3
    )
    assert run([first, observation(2, 4_999, 3_000, NOW - 90)], station) == ["accepted", "counter_rollback"]
    # weather-station limit 10 units (0.1 mm) per second: 10 s allow 100, not 101
    assert run([first, observation(2, 5_100, 3_000, NOW - 90)], station) == ["accepted", "accepted"]
    assert run([first, observation(2, 5_101, 3_000, NOW - 90)], station) == ["accepted", "impossible_rate"]
    assert run([first, first], station) == ["accepted", "duplicate"]


# ------------------------------------------------------------------------------------------------------- store


def record(kind: str, seq: int, *, device: str = "0xD1", target: int = 7, received_at: float = 1.0) -> EventRecord:
    """A stored event of ``kind`` with plausible fields (the signature is not checked by the store or planner)."""
    digest = bytes([seq % 256, target % 256]) * 16
    ts = NOW + seq
    if kind == "telematics":
        extra = (("odometer", 1_000 * seq), ("harshBraking", seq), ("speeding", 0))
        return EventRecord(
            kind,
            device,
            device,
            CHAIN_ID,
            ALL_CONTRACTS[kind],
            target,
            seq,
            ts,
            None,
            None,
            None,
            digest,
            b"\x01" * 65,
            received_at,
            extra=extra,
        )
    if kind == "weather":
        extra = (("rainfall", 100 * seq), ("maxTemperature", 2_000 - seq))
        return EventRecord(
            kind,
            device,
            device,
            CHAIN_ID,
            ALL_CONTRACTS[kind],
            target,
            seq,
            ts,
            None,
            None,
            None,
            digest,
            b"\x01" * 65,
            received_at,
            extra=extra,
        )
    return EventRecord(
        kind,
        device,
        device,
        CHAIN_ID,
        ALL_CONTRACTS[kind],
        target,
        seq,
        ts,
        1_000 + seq,
        None,
        None,
        digest,
        b"\x01" * 65,
        received_at,
    )


def test_a_version_1_database_is_migrated_in_place_and_keeps_working(tmp_path: Path) -> None:
    db = tmp_path / "oracle.db"
    old = sqlite3.connect(db)
    old.executescript(_MIGRATIONS[0])
    old.execute("PRAGMA user_version=1")
    old.execute(
        "INSERT INTO events (kind, device, signer, chain_id, contract, target_id, seq, timestamp, value, digest, sig, "
        "received_at) VALUES ('reading', '0xD1', '0xD1', 31337, '0xC0', '7', 4, 1700000004, '1004', ?, ?, 1.0)",
        (b"d" * 32, b"s" * 65),
    )
    old.execute(
        "INSERT INTO device_state (device, last_seq, registers, last_timestamp) "
        "VALUES ('0xD1', 4, '[[\"7\",\"1004\",1700000004]]', 1700000004)"
    )
    old.commit()
    old.close()

    store = Store.open(db)
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    # the old reading is still planned and settled as before
    (reading,) = store.claim_pending("reading", 10)
    assert reading.msg == {"agreementId": 7, "seq": 4, "timestamp": 1700000004, "value": 1004}
    assert reading.extra == ()
    # the fraud rules still see the meter's register of agreement 7
    state = store.device_state("0xD1")
    assert state is not None and state.registers == ((7, (1004,), 1700000004),)
    later = wire.decode(
        wire.encode(
            "reading",
            CHAIN_ID,
            CONTRACT,
            eip712.address_of(KEY),
            {"agreementId": 7, "seq": 5, "timestamp": 1700000005, "value": 1003},
            b"\x1b" * 65,
        )
    )
    verdict = evaluate(later, "0xD1", DeviceKind.METER, state, 1700000010, RuleSettings(), lambda d, s: None)
    assert verdict.reason == "counter_rollback"

    # the new kinds are stored beside it, with their extra fields
    store.commit_batch(
        [record("telematics", 1, device="0xD2"), record("weather", 1, device="0xD3", target=0xD3)],
        [],
        [DeviceState("0xD2", 1, ((7, (1_000, 1, 0), NOW + 1),), NOW + 1)],
    )
    store.close()
    reopened = Store.open(db)  # opening a current file again is a no-op
    (report,) = reopened.claim_pending("telematics", 10)
    assert report.msg == {
        "policyId": 7,
        "seq": 1,
        "timestamp": NOW + 1,
        "odometer": 1_000,
        "harshBraking": 1,
        "speeding": 0,
    }
    (obs,) = reopened.claim_pending("weather", 10)
    assert obs.msg["station"].lower() == "0x00000000000000000000000000000000000000d3"
    assert (obs.msg["rainfall"], obs.msg["maxTemperature"]) == (100, 1_999)
    state = reopened.device_state("0xD2")
    assert state is not None and state.registers == ((7, (1_000, 1, 0), NOW + 1),)
    reopened.close()


# ----------------------------------------------------------------------------------------------------- planner


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


def test_the_newest_telematics_report_per_policy_settles_and_every_observation_settles_in_seq_order(
    store: Store,
) -> None:
    clock = Clock()
    planner = Planner(
        store, PlannerSettings(batch_max_events=100, batch_max_wait=0.0, settlement_window=60.0), clock=clock
    )
    reports = store.commit_batch(
        [record("telematics", seq, device="0xA1", target=11) for seq in (1, 2, 3)]
        + [record("telematics", 1, device="0xA2", target=22)],
        [],
        [],
    )
    observations = store.commit_batch(
        [record("weather", seq, device=f"0x{s:040x}", target=s) for seq in (1, 2, 3) for s in (0xE1, 0xE2)], [], []
    )
    planner.claim()
    assert planner.superseded == 2
    batches = planner.cut(10)
    # weather observations are not cumulative: no window, every one goes, each station's in seq order
    (weather,) = [b for b in batches if b.kind == "weather"]
    assert len(weather.events) == 6
    for station in (0xE1, 0xE2):
        assert [e.seq for e in weather.events if e.target_id == station] == [1, 2, 3]
    assert all(b.kind == "weather" for b in batches), "the policies' settlement window is still open"

    clock.now += 60
    (batch,) = planner.cut(10)
    assert batch.kind == "telematics" and batch.contract == ALL_CONTRACTS["telematics"]
    assert sorted((e.target_id, e.seq) for e in batch.events) == [(11, 3), (22, 1)]
    statuses = {e.id: e.status for e in store.events(reports + observations)}
    assert [statuses[i] for i in reports] == [EventStatus.SUPERSEDED] * 2 + [EventStatus.CLAIMED] * 2
    assert planner.held == 0


def test_observations_go_one_batch_at_a_time_and_a_replanned_batch_goes_first(store: Store) -> None:
    planner = Planner(store, PlannerSettings(batch_max_events=2, batch_max_wait=0.0), kinds=("weather",))
    store.commit_batch([record("weather", seq, device="0xE1", target=0xE1) for seq in range(1, 7)], [], [])
    planner.claim()
    (first,) = planner.cut(10)  # one batch per pass, however much room the submitter has
    assert [e.seq for e in first.events] == [1, 2]
    assert planner.cut(10, busy={"weather"}) == [], "the station's next batch waits for the one in flight"
    # that transaction ran out of gas: its observations are planned again, before the station's later ones
    store.release(first.ids)
    planner.claim()
    assert [[e.seq for e in b.events] for b in planner.cut(10)] == [[1, 2]]
    assert [[e.seq for e in b.events] for b in planner.cut(10)] == [[3, 4]]


def test_kinds_without_a_deployed_contract_stay_pending(store: Store) -> None:
    planner = Planner(store, PlannerSettings(batch_max_wait=0.0), kinds=("reading", "delivery"))
    store.commit_batch(
        [
            record("telematics", 1, device="0xD7"),
            record("weather", 1, device="0xD8", target=0xD8),
            record("reading", 1, device="0xD9"),
        ],
        [],
        [],
    )
    planner.claim()
    assert [b.kind for b in planner.cut(10)] == ["reading"]
    assert store.pending_count("telematics") == 1 and store.pending_count("weather") == 1
    assert store.backlog()["pending"] == 2


def test_the_kind_table_names_every_wire_type_and_its_contract() -> None:
    assert set(KINDS) == set(wire.EVENT_TYPES)
    assert {
        k: (v.contract, v.batch_function, v.settled_event, v.rejected_event, v.cumulative) for k, v in KINDS.items()
    } == {
        "reading": ("MeteredBilling", "settle", "ReadingsSettled", "ReadingRejected", True),
        "delivery": ("DeliveryEscrow", "confirmDeliveries", "DeliveryConfirmed", "DeliveryRejected", False),
        "telematics": ("MotorInsurance", "settle", "PremiumCharged", "TelematicsRejected", True),
        "weather": ("CropInsurance", "record", "ObservationRecorded", "ObservationRejected", False),
        "activity": ("HealthInsurance", "settle", "SummarySettled", "SummaryRejected", False),
    }
    assert extra_fields("telematics") == ("odometer", "harshBraking", "speeding")


def stored_random(kind: str, rng: random.Random) -> StoredEvent:
    """A stored event of ``kind`` with every signed field at a random value of its type."""
    sig = os.urandom(32) + rng.randrange(1, eip712.SECP256K1_HALF_N).to_bytes(32, "big") + bytes([rng.choice((27, 28))])
    spec = KINDS[kind]
    bits = {"uint64": 64, "uint32": 32}
    extra = tuple(
        (name, rng.randrange(-(2**31), 2**31) if typ == "int32" else rng.randrange(2 ** bits[typ]))
        for name, typ, column in COLUMNS[kind]
        if column == EXTRA
    )
    target = rng.randrange(2**160) if spec.target_field == "station" else rng.randrange(2**256)
    return StoredEvent(
        kind,
        CONTRACT,
        CONTRACT,
        CHAIN_ID,
        CONTRACT,
        target,
        rng.randrange(2**64),
        rng.randrange(2**64),
        None,
        None,
        None,
        os.urandom(32),
        sig,
        0.0,
        1,
        EventStatus.CLAIMED,
        None,
        None,
        None,
        None,
        None,
        None,
        extra=extra,
    )


@pytest.mark.parametrize(("kind", "name"), [("telematics", "MotorInsurance"), ("weather", "CropInsurance")])
def test_batch_calldata_and_outcome_logs_follow_the_product_abi(test_config: Config, kind: str, name: str) -> None:
    ensure_compiled(test_config)
    abi = load_artifact(test_config, name)["abi"]
    spec = KindSpec.from_abi(kind, CONTRACT, abi)
    rng = random.Random(9)
    events = [stored_random(kind, rng) for _ in range(13)]
    contract = Web3().eth.contract(address=Web3.to_checksum_address(CONTRACT), abi=abi)
    values = [spec.values(e) for e in events]
    if KINDS[kind].target_field == "station":  # stored as an integer, web3 wants the address text
        values = [(Web3.to_checksum_address(v[0].to_bytes(20, "big")), *v[1:]) for v in values]
    function = KINDS[kind].batch_function
    # telematics reports and weather observations go in packed batches (their signed fields at the contract's
    # widths, then r ‖ vs: IMotorInsurance.settle, ICropInsurance.record); a report then carries its policy's terms
    # (174 bytes a report: without a terms reader each carries the unknown terms)
    assert spec.packed == (kind in ("telematics", "weather"))
    if spec.packed:
        packed = b"".join(pack_item(kind, v[:-2], v[-2], v[-1], UNKNOWN_TERMS.get(kind)) for v in values)
        assert len(packed) == item_size(kind) * len(events) and item_size("telematics") == 174
        expected = contract.encode_abi(function, args=[packed])
    else:
        expected = contract.encode_abi(function, args=[values])
    assert "0x" + spec.calldata([spec.item(e) for e in events]).hex() == expected
    # one settled and one rejected log as the contract emits them: topic 1 = target, data word 0 = seq (for
    # PremiumCharged the record word, seq in its top 64 bits)
    settled, rejected = (KINDS[kind].settled_event, KINDS[kind].rejected_event)
    first, second = events[0], events[1]
    word0 = premium.pack(first.seq, 1_000, 1, 0, 12_000) if kind == "telematics" else first.seq
    logs = [
        {
            "address": CONTRACT,
            "topics": ["0x" + spec.settled_topic.hex(), "0x" + first.target_id.to_bytes(32, "big").hex()],
            "data": "0x" + word0.to_bytes(32, "big").hex() + "00" * 32 * 5,
        },
        {
            "address": CONTRACT,
            "topics": ["0x" + spec.rejected_topic.hex(), "0x" + second.target_id.to_bytes(32, "big").hex()],
            "data": "0x" + second.seq.to_bytes(32, "big").hex() + (13).to_bytes(32, "big").hex(),
        },
    ]
    outcomes = decode_outcomes(spec, logs)
    assert [(o.target_id, o.seq, o.settled, o.reason) for o in outcomes] == [
        (first.target_id, first.seq, True, 0),
        (second.target_id, second.seq, False, 13),
    ]
    assert (settled, rejected) == (contract.events[settled].event_name, contract.events[rejected].event_name)


def test_reading_outcomes_come_from_the_refusals_and_the_batch_log_records(test_config: Config) -> None:
    ensure_compiled(test_config)
    spec = KindSpec.from_abi("reading", CONTRACT, load_artifact(test_config, "MeteredBilling")["abi"])
    assert spec.settled_topic == settled_log.TOPIC
    # as the contract emits them: each refusal when it happens, then one log with the settled items' records
    logs = [
        {
            "address": CONTRACT,
            "topics": ["0x" + spec.rejected_topic.hex(), "0x" + (7).to_bytes(32, "big").hex()],
            "data": "0x" + (2).to_bytes(32, "big").hex() + (3).to_bytes(32, "big").hex(),
        },
        {
            "address": CONTRACT,
            "topics": ["0x" + spec.settled_topic.hex()],
            "data": "0x" + bytes_argument([settled_log.encode_records([(5, 1, 30), (9, 4, 0), (5, 2, 12)])]).hex(),
        },
    ]
    outcomes = decode_outcomes(spec, logs)
    assert [(o.target_id, o.seq, o.settled, o.reason) for o in outcomes] == [
        (7, 2, False, 3),
        (5, 1, True, 0),
        (9, 4, True, 0),
        (5, 2, True, 0),
    ]


# ------------------------------------------------------------------------------------------ intake over MQTT


@pytest.fixture
def start_intake(mosquitto, store: Store) -> Iterator[Callable[[], Intake]]:
    started: list[Intake] = []

    def start() -> Intake:
        settings = IntakeSettings(
            chain_id=CHAIN_ID,
            contracts=ALL_CONTRACTS,
            host=mosquitto.host,
            port=mosquitto.port,
            client_id=f"oracle-{uuid.uuid4().hex[:8]}",
            batch_latency_s=0.01,
        )
        intake = Intake(settings, store, Metrics())
        intake.start()
        assert intake.wait_connected(10), "intake did not connect to the broker"
        started.append(intake)
        return intake

    yield start
    for intake in started:
        intake.stop()


def test_signed_reports_and_observations_are_stored_as_signed_and_checked_by_kind(
    mosquitto,
    store: Store,
    start_intake: Callable[[], Intake],
) -> None:
    vehicle, station = (
        Device(kind=DeviceKind.VEHICLE, contracts=dict(ALL_CONTRACTS)),
        Device(kind=DeviceKind.WEATHER_STATION, contracts=dict(ALL_CONTRACTS)),
    )
    register(store, vehicle, station)
    start_intake()
    now = int(time.time())
    publisher = Publisher(mosquitto.host, mosquitto.port)
    try:
        publisher.publish_many(
            [
                (vehicle.topic, vehicle.telematics(1, 5_000, 1, 0, policy=77, timestamp=now - 30)),
                (vehicle.topic, vehicle.telematics(2, 5_400, 1, 1, policy=77, timestamp=now - 20)),
                (vehicle.topic, vehicle.telematics(3, 5_300, 2, 1, policy=77, timestamp=now - 10)),  # odometer back
                (station.topic, station.weather(1, 1_000, 2_950, timestamp=now - 30)),
                (station.topic, station.weather(2, 1_010, 3_120, timestamp=now - 20)),
            ]
        )
        replies = sorted(
            (body["seq"], topic.split("/")[3], body["status"], body.get("reason"))
            for topic, body in publisher.collect(5)
        )
    finally:
        publisher.close()
    assert replies == sorted(
        [
            (1, vehicle.address, "accepted", None),
            (2, vehicle.address, "accepted", None),
            (3, vehicle.address, "rejected", "counter_rollback"),
            (1, station.address, "accepted", None),
            (2, station.address, "accepted", None),
        ]
    )
    stored = store.events_of_device(vehicle.address) + store.events_of_device(station.address)
    assert [(e.kind, e.seq) for e in stored] == [("telematics", 1), ("telematics", 2), ("weather", 1), ("weather", 2)]
    for event in stored:
        # what is stored re-derives the digest the device signed: the contract will verify the same message
        domain = eip712.Domain(CHAIN_ID, event.contract)
        assert eip712.digest(KINDS[event.kind].primary_type, event.msg, domain) == event.digest
    assert stored[1].msg["odometer"] == 5_400 and stored[3].msg["maxTemperature"] == 3_120
    assert stored[3].target_id == int(station.address, 16)
    row = store.conn.execute("SELECT extra FROM events WHERE device = ? AND seq = 2", (vehicle.address,)).fetchone()
    assert json.loads(row[0]) == {"odometer": 5_400, "harshBraking": 1, "speeding": 1}


# ---------------------------------------------------------------------------- end to end: MQTT → daemon → chain


def _require(deployment: Any, *names: str) -> None:
    missing = [n for n in names if n not in deployment.manifest["contracts"]]
    if missing:
        pytest.skip(f"{', '.join(missing)} not in the deployment plan yet")


def test_vehicle_reports_and_station_observations_settle_through_the_daemon(
    tmp_path: Path,
    deployment: Any,
    mosquitto: Any,
    registry: ChainRegistry,
) -> None:
    _require(deployment, "MotorInsurance", "CropInsurance", "TestToken")
    chain = deployment.chain
    motor, crop, token = (deployment.contract(n) for n in ("MotorInsurance", "CropInsurance", "TestToken"))
    holder = Account.from_key(ANVIL_DEV_KEYS[2])

    def tx(account: Any, call: Any) -> dict[str, Any]:
        return send(chain, account, call.build_transaction({"from": account.address}))

    # an accepted pay-per-km policy: 0.01 token per km, factor 0.80–1.50, +0.01 per event per 100 km
    rate, min_bps, max_bps, step_bps, start = 10**16, 8_000, 15_000, 100, 100_000
    vehicle = registry.register(DeviceKind.VEHICLE)
    receipt = tx(
        OWNER,
        motor.functions.offer(
            holder.address, vehicle.address, token.address, rate, min_bps, max_bps, step_bps, start, 0, 0, 0
        ),
    )
    policy = motor.events.PolicyOffered().process_receipt(receipt)[0]["args"]["policyId"]
    deposit = 10**20
    tx(holder, token.functions.mint(holder.address, deposit))
    tx(holder, token.functions.approve(motor.address, deposit))
    tx(holder, motor.functions.accept(policy, deposit, start, 0, 0))
    policy_fields = [c["name"] for c in motor.get_function_by_name("policyOf").abi["outputs"][0]["components"]]

    # a season of three stations (2 of 3 must agree) counting hot days at or above 30.00 °C
    stations = [registry.register(DeviceKind.WEATHER_STATION) for _ in range(3)]
    for s in stations:  # the stations' owner opens the season itself, as an insurer it allowed
        tx(OWNER, crop.functions.allowInsurer(s.address, OWNER.address, True))
    now = int(chain.w3.eth.get_block("latest")["timestamp"])
    receipt = tx(OWNER, crop.functions.createPool(token.address))
    pool = crop.events.PoolCreated().process_receipt(receipt)[0]["args"]["poolId"]
    terms = (
        now - 3_600,
        now + 86_400,
        now - 3_600,
        3_600,
        3_600,
        1,
        3_000,
        1,
        100,
        2,
        bytes(32),
        [s.address for s in stations],
    )
    receipt = tx(OWNER, crop.functions.createSeason(pool, terms))
    season = crop.events.SeasonCreated().process_receipt(receipt)[0]["args"]["seasonId"]

    daemon = DaemonProcess(tmp_path, deployment, mosquitto, IOTSETTLE_ORACLE_BATCH_MAX_WAIT="0.1")
    publisher: Publisher | None = None
    try:
        daemon.start().wait_ready()
        publisher = Publisher(mosquitto.host, mosquitto.port, chain.chain_id)

        def publish(items: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
            assert publisher is not None
            publisher.publish_many(items)
            return sorted((body for _, body in publisher.collect(len(items), 20)), key=lambda b: b["seq"])

        def policy_view() -> dict[str, Any]:
            return dict(zip(policy_fields, motor.functions.policyOf(policy).call(), strict=True))

        # each report settles before the next one is sent; the premium is priced on the totals since the offer
        # (seq, odometer, harsh, speeding), 40 s apart: at most 75 m/s, below the vehicle limit of the fraud rules
        periods = [(1, 101_000, 0, 0), (2, 104_000, 1, 1), (4, 105_000, 1, 1)]
        expected = 0
        for seq, odometer, harsh, speeding in periods:
            replies = publish(
                [
                    (
                        vehicle.topic,
                        vehicle.telematics(seq, odometer, harsh, speeding, policy=policy, timestamp=now + 40 * seq),
                    )
                ]
            )
            assert [r["status"] for r in replies] == ["accepted"], replies
            metres, events = odometer - start, harsh + speeding
            expected = min(metres * min_bps + events * step_bps * 100_000, metres * max_bps) * rate // 10_000_000
            wait_for(lambda seq=seq: policy_view()["lastSeq"] == seq, 20, f"telematics seq {seq} on chain")
            if seq == 2:
                # a report whose harsh-braking count went back is refused by the oracle, before any gas is spent
                (bad,) = publish(
                    [(vehicle.topic, vehicle.telematics(3, 104_500, 0, 1, policy=policy, timestamp=now + 120))]
                )
                assert (bad["status"], bad["reason"]) == ("rejected", "counter_rollback")
        # totals 5 km and 2 events = 40 per 100 km → 0.80 + 40 × 0.01 = ×1.20: 5 km × 0.01 × 1.2
        assert expected == 5 * rate * 12_000 // 10_000
        # a report for a policy the vehicle does not have passes the oracle's rules; the contract refuses it and
        # the oracle keeps it as dead with the contract's reason (and tells the device)
        unknown = (int(vehicle.address, 16) << 96) | 999_999
        (sent,) = publish([(vehicle.topic, vehicle.telematics(5, 105_000, 1, 1, policy=unknown, timestamp=now + 200))])
        assert sent["status"] == "accepted"
        (onchain,) = (body for _, body in publisher.collect(1, 20))
        assert (onchain["seq"], onchain["status"], onchain["reason"]) == (5, "rejected", "rejected_onchain")
        view = policy_view()
        assert view["charged"] == expected and view["prepaid"] == deposit - expected
        assert (view["lastOdometer"], view["lastHarsh"], view["lastSpeeding"], view["lastFactorBps"]) == (
            105_000,
            1,
            1,
            12_000,
        )

        # three observations per station in one burst: every one is recorded, in seq order
        hot = {stations[0].address: 3_120, stations[1].address: 3_000, stations[2].address: 2_999}
        burst = [
            (s.topic, s.weather(seq, 500 + 25 * seq, hot[s.address] if seq == 2 else 1_800, timestamp=now + 10 * seq))
            for seq in (1, 2, 3)
            for s in stations
        ]
        assert {r["status"] for r in publish(burst)} == {"accepted"}
        # a replayed sequence number with other figures: refused by the oracle
        (replayed,) = publish([(stations[0].topic, stations[0].weather(2, 600, 4_000, timestamp=now + 40))])
        assert (replayed["status"], replayed["reason"]) == ("rejected", "replayed_seq")
        wait_for(
            lambda: all(crop.functions.stationState(s.address).call()[0] == 3 for s in stations),
            20,
            "every station's third observation on chain",
        )
        for s in stations:
            first_ts, first_rain, last_ts, last_rain, hot_days, _ = crop.functions.stationSeason(
                season, s.address
            ).call()
            assert (first_ts, first_rain, last_ts, last_rain) == (now + 10, 525, now + 30, 575)
            assert hot_days == (1 if hot[s.address] >= 3_000 else 0)

        # a gap: seq 5 reaches this oracle, seq 4 only another relayer. The contract takes a station's seqs without
        # gaps, so it refuses 5 (SequenceGap) until 4 is on chain; the oracle keeps 5 and relays it again.
        gapped = stations[1]
        (ahead,) = publish([(gapped.topic, gapped.weather(5, 650, 1_800, timestamp=now + 50))])
        assert ahead["status"] == "accepted"
        time.sleep(1.5)
        assert crop.functions.stationState(gapped.address).call()[0] == 3, "seq 5 waits for seq 4"
        missing = wire.decode(gapped.weather(4, 600, 1_800, timestamp=now + 40))
        tx(holder, crop.functions.record(packed_observations([missing])))
        wait_for(
            lambda: crop.functions.stationState(gapped.address).call()[0] == 5,
            20,
            "seq 5 relayed again once seq 4 is on chain",
        )
    finally:
        if publisher is not None:
            publisher.close()
        daemon.signal(signal.SIGTERM)
        code = daemon.wait(60)
    assert code == 0

    store = Store.open(daemon.db)
    try:
        events = store.events_of_device(vehicle.address)
        events += [e for s in stations for e in store.events_of_device(s.address)]
    finally:
        store.close()
    assert [(e.kind, e.seq) for e in events[:4]] == [("telematics", s) for s in (1, 2, 4, 5)]
    assert len(events) == 4 + 10
    dead = events.pop(3)
    assert dead.status is EventStatus.DEAD and (dead.reason or "").startswith("UnknownTarget")
    assert {e.status for e in events} <= {EventStatus.SETTLED, EventStatus.FINAL}


def test_telematics_items_carry_the_terms_of_their_policy(test_config: Config) -> None:
    ensure_compiled(test_config)
    abi = load_artifact(test_config, "MotorInsurance")["abi"]
    asked: list[int] = []

    def terms_of(policy_id: int) -> bytes:
        asked.append(policy_id)
        return policy_id.to_bytes(46, "big")

    spec = KindSpec.from_abi("telematics", CONTRACT, abi, terms_of)
    event = stored_random("telematics", random.Random(3))
    item = spec.item(event)
    assert (len(item), item[128:], asked) == (174, event.target_id.to_bytes(46, "big"), [event.target_id])


def test_the_daemon_sends_each_report_with_its_policys_sealed_terms(deployment: Any, registry: ChainRegistry) -> None:
    _require(deployment, "MotorInsurance", "TestToken")
    chain = deployment.chain
    motor, token = deployment.contract("MotorInsurance"), deployment.contract("TestToken")
    holder = Account.from_key(ANVIL_DEV_KEYS[2])

    def tx(account: Any, call: Any) -> dict[str, Any]:
        return send(chain, account, call.build_transaction({"from": account.address}))

    vehicle = registry.register(DeviceKind.VEHICLE)
    rate, factors = 10**16, (8_000, 15_000, 100)
    offer = motor.functions.offer(holder.address, vehicle.address, token.address, rate, *factors, 0, 0, 0, 0)
    receipt = tx(OWNER, offer)
    policy = motor.events.PolicyOffered().process_receipt(receipt)[0]["args"]["policyId"]
    tx(holder, token.functions.mint(holder.address, 10**20))
    tx(holder, token.functions.approve(motor.address, 10**20))
    tx(holder, motor.functions.accept(policy, 10**20, 0, 0, 0))

    terms_of = terms_reader(chain.w3, motor.address, motor.abi, "telematics")
    assert terms_of is not None
    assert terms_of(policy) == bytes(motor.functions.telematicsTerms(policy).call())
    assert terms_of((int(vehicle.address, 16) << 96) | 999_999) == UNKNOWN_TERMS["telematics"]

    # the same report with the sealed terms and with unknown ones: the contract prices both alike (the relayer
    # cannot change an outcome) but reads two more slots for the unknown terms
    now = int(chain.w3.eth.get_block("latest")["timestamp"])
    event = wire.decode(vehicle.telematics(1, 1_000, 0, 0, policy=policy, timestamp=now))
    *fields, r, vs = event.contract_tuple()
    gas = {}
    for name, terms in (("sealed", terms_of(policy)), ("unknown", None)):
        call = motor.functions.settle(pack_item("telematics", fields, r, vs, terms))
        assert call.call({"from": OWNER.address}) == 1, name
        gas[name] = call.estimate_gas({"from": OWNER.address})
    assert gas["unknown"] - gas["sealed"] > 3_000, gas
