"""A throw-away local stack for one benchmark run: anvil + mosquitto on free ports, the contracts deployed, meters
with funded agreements, trackers with funded escrows, vehicles with prepaid motor policies and weather stations in
open crop seasons, and signing helpers that keep every device's sequence, registers and clock consistent across the
phases of the run.

Everything goes through the project's own code (``iotsettle.oracle.chain.node``, ``iotsettle.oracle.chain.deploy``,
``iotsettle.oracle.ops``), so the benchmark measures what users run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import event_abi_to_log_topic
from iotsettle.oracle.chain.compiler import ensure_compiled
from iotsettle.oracle.chain.connection import ANVIL_DEV_KEYS, Chain, connect
from iotsettle.oracle.chain.deploy import deploy_all
from iotsettle.oracle.chain.node import Anvil, Mosquitto, free_port
from iotsettle.oracle.chain.send import send
from iotsettle.oracle.config import Config, local_stack_config
from iotsettle.oracle.device.keys import DeviceKey
from iotsettle.oracle.device.signer import sign_event, sign_registration
from iotsettle.oracle.ops import billing, crop, escrow, motor, token
from iotsettle.oracle.ops.context import OpsContext
from iotsettle.oracle.protocol import device_kinds, eip712, wire
from iotsettle.oracle.protocol.location import location_bytes32

from bench.rawsend import Encoder, RawSender, topic_ints

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
#: who is who on the bench chain (anvil development accounts); the relayers of the gas phase and of the naive relay
#: are fresh accounts funded by the deployer (``fund_relayer``), so every relayer has its own nonce sequence
DEPLOYER, PROVIDER, CONSUMER, SELLER, DAEMON_RELAYER = ANVIL_DEV_KEYS[:5]
PRICE_PER_UNIT = 10**12  # TEST base units per register unit
DEPOSIT = 10**22  # per agreement: enough for every reading of a full run
PARCEL = 10**18  # per escrow
DESTINATION = location_bytes32("u4pruydqqvj")
RATE_PER_KM = 10**15  # TEST base units per km at factor ×1.00 (motor policies)
PREMIUM_DEPOSIT = 10**21  # per motor policy: enough for every report of a full run
METRES_PER_REPORT = 1_000  # a telematics report every km: every report charges a premium
SEASON_LENGTH = 30 * 86_400


@dataclass
class Meter:
    """A registered meter with an accepted, funded agreement; ``sign`` keeps seq, register and clock increasing."""

    key: bytes
    agreement: int
    contract: str
    chain_id: int
    seq: int = 0
    value: int = 0
    timestamp: int = 0

    @cached_property
    def address(self) -> str:
        return eip712.address_of(self.key)

    @cached_property
    def topic(self) -> str:
        return wire.events_topic(self.chain_id, self.address)

    def next_reading(self, now: int | None = None, step: int = 1) -> tuple[dict[str, Any], bytes]:
        """The next reading (msg, 65-byte signature). At most one reading per second of device clock, as the
        oracle's rate rule expects from a meter (a register cannot advance in zero seconds)."""
        self.seq += 1
        self.value += step
        self.timestamp = max(int(time.time()) if now is None else now, self.timestamp + 1)
        msg = {"agreementId": self.agreement, "seq": self.seq, "timestamp": self.timestamp, "value": self.value}
        return msg, eip712.sign_digest(
            self.key, eip712.digest("Reading", msg, eip712.Domain(self.chain_id, self.contract))
        )

    def payload(self, msg: dict[str, Any], sig: bytes) -> bytes:
        return wire.encode("reading", self.chain_id, self.contract, self.address, msg, sig)


@dataclass
class Parcel:
    """A funded escrow watched by a tracker device."""

    key: bytes
    escrow_id: int
    contract: str
    chain_id: int
    seq: int

    @cached_property
    def address(self) -> str:
        return eip712.address_of(self.key)

    def delivery(self, timestamp: int) -> tuple[dict[str, Any], bytes]:
        msg = {
            "escrowId": self.escrow_id,
            "seq": self.seq,
            "timestamp": timestamp,
            "location": DESTINATION,
            "maxTemperature": 4,
        }
        return msg, eip712.sign_digest(
            self.key, eip712.digest("Delivery", msg, eip712.Domain(self.chain_id, self.contract))
        )


@dataclass
class Vehicle:
    """A registered vehicle with an accepted, prepaid motor policy; ``next_report`` keeps seq, registers and clock
    increasing."""

    key: bytes
    policy: int
    contract: str
    chain_id: int
    seq: int = 0
    odometer: int = 0
    harsh: int = 0
    speeding: int = 0
    timestamp: int = 0

    @cached_property
    def address(self) -> str:
        return eip712.address_of(self.key)

    def next_report(self) -> wire.SignedEvent:
        """The next telematics report: one more km, one harsh braking every third report."""
        self.seq += 1
        self.odometer += METRES_PER_REPORT
        self.harsh += 1 if self.seq % 3 == 0 else 0
        self.timestamp = max(int(time.time()), self.timestamp + 1)
        msg = {
            "policyId": self.policy,
            "seq": self.seq,
            "timestamp": self.timestamp,
            "odometer": self.odometer,
            "harshBraking": self.harsh,
            "speeding": self.speeding,
        }
        return sign_event(DeviceKey.from_private_key(self.key), "telematics", self.chain_id, self.contract, msg)


@dataclass
class Station:
    """A registered weather station named in one open crop season; ``next_observation`` keeps seq gapless and
    rainfall and clock increasing."""

    key: bytes
    season: int
    contract: str
    chain_id: int
    seq: int = 0
    rainfall: int = 0
    timestamp: int = 0

    @cached_property
    def address(self) -> str:
        return eip712.address_of(self.key)

    def next_observation(self) -> wire.SignedEvent:
        self.seq += 1
        self.rainfall += 2
        self.timestamp = max(int(time.time()), self.timestamp + 1)
        msg = {
            "station": self.address,
            "seq": self.seq,
            "timestamp": self.timestamp,
            "rainfall": self.rainfall,
            "maxTemperature": 24,
        }
        return sign_event(DeviceKey.from_private_key(self.key), "weather", self.chain_id, self.contract, msg)


@dataclass
class BenchStack:
    """The running services, the deployment and the provisioned fleet."""

    config: Config
    anvil: Anvil
    mosquitto: Mosquitto
    chain: Chain
    manifest: dict[str, Any]
    state_dir: Path
    meters: list[Meter] = field(default_factory=list)
    parcels: list[Parcel] = field(default_factory=list)
    vehicles: list[Vehicle] = field(default_factory=list)
    stations: list[Station] = field(default_factory=list)

    def ctx(self, key: str) -> OpsContext:
        """An operations context sending from the development account ``key``."""
        return OpsContext(self.config, self.chain, self.manifest, Account.from_key(key))

    def address(self, name: str) -> str:
        return str(self.manifest["contracts"][name]["address"])

    def ctx_contract(self, name: str) -> Any:
        """A deployed contract, for calls (no sender)."""
        return OpsContext(self.config, self.chain, self.manifest).contract(name)

    @property
    def w3(self) -> Any:
        return self.chain.w3

    def chain_now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def fund_relayer(self) -> LocalAccount:
        """A new account holding 100 ETH for gas."""
        account: LocalAccount = Account.create()
        send(self.chain, Account.from_key(DEPLOYER), {"to": account.address, "value": 100 * 10**18})
        return account


def bench_config(state_dir: Path, anvil_port: int, mqtt_port: int) -> Config:
    """The benchmark's private stack: the user's iotsettle.toml and IOTSETTLE_* variables never leak into a run."""
    return dataclasses.replace(local_stack_config(state_dir, anvil_port, mqtt_port), root=REPO)


@contextmanager
def running_stack(keep: bool = False) -> Iterator[BenchStack]:
    """Start anvil + mosquitto on free ports in a temporary folder, deploy, yield; stop both on the way out."""
    state_dir = Path(tempfile.mkdtemp(prefix="iotsettle-bench-"))
    config = bench_config(state_dir, free_port(), free_port())
    anvil, mosquitto = Anvil(config), Mosquitto(config)
    try:
        anvil.start()
        mosquitto.start()
        ensure_compiled(config)
        chain = connect(config)
        manifest = deploy_all(config, chain, Account.from_key(DEPLOYER))
        yield BenchStack(config, anvil, mosquitto, chain, manifest, state_dir)
    finally:
        mosquitto.stop()
        anvil.stop()
        if not keep:
            shutil.rmtree(state_dir, ignore_errors=True)


def topic_of(contract: Any, event: str) -> str:
    """topic0 of ``event`` from the contract's ABI."""
    abi = next(e for e in contract.abi if e.get("type") == "event" and e["name"] == event)
    return "0x" + event_abi_to_log_topic(abi).hex()


def provision(stack: BenchStack, meters: int, trackers: int, escrows_per_tracker: int) -> None:
    """Register ``meters`` meters with accepted agreements (one each) and ``trackers`` trackers with
    ``escrows_per_tracker`` funded escrows each. Calls are encoded from the deployed ABIs and sent in JSON-RPC
    batches (``bench.rawsend``); the token set-up goes through ``iotsettle.oracle.ops``."""
    provider, consumer = stack.ctx(PROVIDER), stack.ctx(CONSUMER)
    owner, buyer = provider.require_sender(), consumer.require_sender()
    chain_id, rpc_url = stack.chain.chain_id, stack.config.chain.rpc_url
    as_provider, as_consumer = RawSender(rpc_url, chain_id, owner), RawSender(rpc_url, chain_id, buyer)
    registry_c, billing_c, escrow_c = (
        stack.ctx(PROVIDER).contract(n) for n in ("DeviceRegistry", "MeteredBilling", "DeliveryEscrow")
    )
    registry_e, billing_e, escrow_e = Encoder(registry_c), Encoder(billing_c), Encoder(escrow_c)
    meter_keys = [os.urandom(32) for _ in range(meters)]
    tracker_keys = [os.urandom(32) for _ in range(trackers)]
    deadline = stack.chain_now() + 3_600
    registrations = []
    for key, kind in [(k, device_kinds.DeviceKind.METER) for k in meter_keys] + [
        (k, device_kinds.DeviceKind.TRACKER) for k in tracker_keys
    ]:
        device = DeviceKey.from_private_key(key)
        _digest, sig = sign_registration(
            device,
            owner=owner.address,
            kind=kind,
            metadata_hash=bytes(32),
            deadline=deadline,
            chain_id=chain_id,
            registry=registry_c.address,
        )
        registrations.append(
            registry_e.call("register", device.address, int(kind), bytes(32), deadline, sig, gas=250_000)
        )
    as_provider.send_many(registrations)

    test = token.describe_token(provider, token.TEST)
    deposits, parcels = DEPOSIT * meters, PARCEL * trackers * escrows_per_tracker
    token.mint(consumer, buyer.address, deposits + parcels)
    if deposits:
        token.ensure_allowance(consumer, test, billing.CONTRACT, deposits)
    if parcels:
        token.ensure_allowance(consumer, test, escrow.CONTRACT, parcels)

    tariff, _ = billing.create_flat_tariff(provider, PRICE_PER_UNIT)
    start_value = 1_000
    offers = [
        billing_e.call("offer", buyer.address, eip712.address_of(k), tariff, test.address, start_value, 0, gas=250_000)
        for k in meter_keys
    ]
    offered = topic_of(billing_c, "AgreementOffered")
    ids = [topic_ints(r, billing_c.address, offered)[0] for r in as_provider.send_many(offers)]
    as_consumer.send_many([billing_e.call("accept", i, DEPOSIT, start_value, gas=250_000) for i in ids])
    accepted_at = stack.chain_now()
    stack.meters += [
        Meter(k, i, billing_c.address, chain_id, 0, start_value, accepted_at)
        for k, i in zip(meter_keys, ids, strict=True)
    ]

    seller = Account.from_key(SELLER).address
    wanted = [(k, n) for n in range(escrows_per_tracker) for k in tracker_keys]
    deadline = stack.chain_now() + 86_400
    creates = [
        escrow_e.call(
            "createEscrow",
            seller,
            eip712.address_of(k),
            test.address,
            PARCEL,
            DESTINATION,
            deadline,
            800,
            0,
            gas=400_000,
        )
        for k, _ in wanted
    ]
    created = topic_of(escrow_c, "EscrowCreated")
    ids = [topic_ints(r, escrow_c.address, created)[0] for r in as_consumer.send_many(creates)]
    stack.parcels += [Parcel(k, i, escrow_c.address, chain_id, n + 1) for (k, n), i in zip(wanted, ids, strict=True)]


def _register(stack: BenchStack, keys: list[bytes], kind: device_kinds.DeviceKind) -> None:
    """Register ``keys`` as devices of ``kind`` owned by the provider, in JSON-RPC batches."""
    provider = stack.ctx(PROVIDER)
    owner = provider.require_sender()
    registry_c = provider.contract("DeviceRegistry")
    registry_e = Encoder(registry_c)
    deadline = stack.chain_now() + 3_600
    calls = []
    for key in keys:
        device = DeviceKey.from_private_key(key)
        _digest, sig = sign_registration(
            device,
            owner=owner.address,
            kind=kind,
            metadata_hash=bytes(32),
            deadline=deadline,
            chain_id=stack.chain.chain_id,
            registry=registry_c.address,
        )
        calls.append(registry_e.call("register", device.address, int(kind), bytes(32), deadline, sig, gas=250_000))
    RawSender(stack.config.chain.rpc_url, stack.chain.chain_id, owner).send_many(calls)


def _groups(items: list[bytes], most: int, least: int) -> list[list[bytes]]:
    """``items`` cut into as few groups of at most ``most`` as possible, every group at least ``least`` long."""
    if len(items) < least:
        raise ValueError(f"{len(items)} stations cannot fill a season of at least {least}")
    count = -(-len(items) // most)
    size, extra = divmod(len(items), count)
    out, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def provision_products(stack: BenchStack, vehicles: int, stations: int) -> None:
    """Register ``vehicles`` vehicles with accepted, prepaid motor policies (the provider insures, the consumer
    holds) and ``stations`` weather stations (at least 3) named in open crop seasons of 3 to 7 stations each (a
    rainfall index, no cover sold: recording an observation costs the same either way)."""
    provider, consumer = stack.ctx(PROVIDER), stack.ctx(CONSUMER)
    insurer, holder = provider.require_sender(), consumer.require_sender()
    chain_id, rpc_url = stack.chain.chain_id, stack.config.chain.rpc_url
    as_insurer, as_holder = RawSender(rpc_url, chain_id, insurer), RawSender(rpc_url, chain_id, holder)
    test = token.describe_token(provider, token.TEST)

    if vehicles:
        vehicle_keys = [os.urandom(32) for _ in range(vehicles)]
        _register(stack, vehicle_keys, device_kinds.DeviceKind.VEHICLE)
        motor_c = provider.contract(motor.CONTRACT)
        motor_e = Encoder(motor_c)
        token.mint(consumer, holder.address, PREMIUM_DEPOSIT * vehicles)
        token.ensure_allowance(consumer, test, motor.CONTRACT, PREMIUM_DEPOSIT * vehicles)
        offers = [
            motor_e.call(
                "offer",
                holder.address,
                eip712.address_of(k),
                test.address,
                RATE_PER_KM,
                10_000,  # ×1.00 with no events
                20_000,  # ×2.00 cap
                500,  # +×0.05 per event per 100 km
                0,
                0,
                0,
                86_400,
                gas=400_000,
            )
            for k in vehicle_keys
        ]
        offered = topic_of(motor_c, "PolicyOffered")
        ids = [topic_ints(r, motor_c.address, offered)[0] for r in as_insurer.send_many(offers)]
        as_holder.send_many([motor_e.call("accept", i, PREMIUM_DEPOSIT, 0, 0, 0, gas=250_000) for i in ids])
        accepted_at = stack.chain_now()
        stack.vehicles += [
            Vehicle(k, i, motor_c.address, chain_id, timestamp=accepted_at)
            for k, i in zip(vehicle_keys, ids, strict=True)
        ]

    if stations:
        station_keys = [os.urandom(32) for _ in range(stations)]
        _register(stack, station_keys, device_kinds.DeviceKind.WEATHER_STATION)
        crop_c = provider.contract(crop.CONTRACT)
        crop_e = Encoder(crop_c)
        pool_id, _ = crop.create_pool(provider, test)
        as_insurer.send_many(
            [
                crop_e.call("allowInsurer", eip712.address_of(k), insurer.address, True, gas=100_000)
                for k in station_keys
            ]
        )
        start = stack.chain_now()
        seasons = []
        for group in _groups(station_keys, 7, 3):  # CropInsurance.MAX_STATIONS, MIN_STATIONS
            spec = crop.SeasonSpec(
                start=start,
                end=start + SEASON_LENGTH,
                sale_end=start,
                coverage_slack=3_600,
                finalize_delay=3_600,
                index="rain",
                threshold=1_000,
                trigger_days=0,
                premium_bps=500,
                k=2,
                region=crop.region_bytes("bench"),
                stations=tuple(eip712.address_of(k) for k in group),
            )
            seasons.append(crop_e.call("createSeason", pool_id, spec.as_tuple(), gas=1_500_000))
        created = topic_of(crop_c, "SeasonCreated")
        season_ids = [topic_ints(r, crop_c.address, created)[0] for r in as_insurer.send_many(seasons)]
        for season_id, group in zip(season_ids, _groups(station_keys, 7, 3), strict=True):
            stack.stations += [Station(k, season_id, crop_c.address, chain_id, timestamp=start) for k in group]
