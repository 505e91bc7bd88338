"""Provision a demo fleet on chain: device keys, registrations, tariffs, funded agreements, escrows, motor policies,
health policies priced by wearables, and a crop-insurance season with a micro-loan.

Everything goes through the same operations as the CLI (``iotsettle.oracle.ops.registry``, ``billing``, ``escrow``,
``token``, ``insurance``, ``crop``, ``loan``), so the demo exercises the code users run. The fleet file written
here is the simulator's input (``iotsettle.oracle.device.fleet``), pointed at the real agreement, escrow and policy ids.

Two steps, because a crop season runs on the wall clock: ``provision`` sets up the fleet (devices, meter
agreements, escrows, motor policies); ``open_season`` funds a crop pool and opens a season of a few minutes that
starts seconds later, with a micro-loan whose payout account is a farmer's cover beneficiary, once the devices
publish; the keeper (``iotsettle keeper run``, started by the demo) finalizes it once it is over and sweeps the loan,
and ``close_season`` reads what happened back from the chain (finalizing and sweeping itself if the keeper did not).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_hash.auto import keccak
from iotsettle.oracle.chain.send import send
from iotsettle.oracle.demo.pace import sale_window
from iotsettle.oracle.device.activity import DAILY_THRESHOLDS, ActivityProfile, Cover, Thresholds
from iotsettle.oracle.device.fleet import (
    DrivingStyle,
    FaultClass,
    Fleet,
    contracts_from_manifest,
    generate_fleet,
    load_fleet,
    set_health_policies,
    set_policies,
    set_targets,
)
from iotsettle.oracle.device.sim import driving_style, plan_events
from iotsettle.oracle.ops import billing, crop, escrow, loan, registry, token
from iotsettle.oracle.ops import health as health_ops
from iotsettle.oracle.ops import motor as motor_ops
from iotsettle.oracle.ops.audit import fetch_logs
from iotsettle.oracle.ops.context import OpsContext
from iotsettle.oracle.ops.keeper import waiting
from iotsettle.oracle.ops.tx import RevertedError, events_in, transact_many
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.errors import ChainError, ConfigError
from iotsettle.oracle.protocol.location import location_bytes32

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetSpec:
    meters: int = 50
    trackers: int = 10
    vehicles: int = 10
    weather_stations: int = 0
    wearables: int = 0

    @property
    def total(self) -> int:
        return self.meters + self.trackers + self.vehicles + self.weather_stations + self.wearables

    @classmethod
    def scaled(cls, devices: int, weather_stations: int = 0, wearables: int = 0) -> FleetSpec:
        """About the default proportions (5 : 1 : 1) for ``devices`` devices, at least one tracker and vehicle;
        the weather stations and wearables come on top."""
        if devices < 3:
            raise ConfigError("the demo fleet needs at least 3 devices (a meter, a tracker and a vehicle)")
        trackers = max(1, round(devices / 7))
        vehicles = max(1, round(devices / 7))
        return cls(devices - trackers - vehicles, trackers, vehicles, weather_stations, wearables)


@dataclass(frozen=True)
class Parties:
    """Who is who: the fleet operator owns the devices; the utility bills meters, the insurer bills vehicles per
    km; the household prepays both and buys parcels from the shop."""

    operator: LocalAccount
    utility: LocalAccount
    insurer: LocalAccount
    household: LocalAccount
    shop: LocalAccount
    #: crop insurance: the insurer above funds the pool; farmers buy cover, the first one with a micro-loan
    farmers: tuple[LocalAccount, ...] = ()
    lender: LocalAccount | None = None


def demo_account(label: str) -> LocalAccount:
    """A throw-away account whose key is derived from ``label`` (local demo chains only: anyone can derive it)."""
    return Account.from_key(keccak(f"iotsettle-demo-account:{label}".encode()))


@dataclass(frozen=True)
class Terms:
    """Prices in base units of the test token (18 decimals)."""

    price_per_wh: int = 2 * 10**14  # 0.0002 TEST/Wh = 0.20 TEST/kWh
    price_per_m: int = 10**14  # 0.0001 TEST/m = 0.10 TEST/km (pay-per-km insurance)
    deposit: int = 50 * 10**18
    parcel_price: int = 25 * 10**18
    escrow_lifetime: int = 3600  # seconds of chain time


@dataclass(frozen=True)
class MotorTerms:
    """Usage-based motor policies of the demo's vehicles (premium formula in docs/PRODUCTS.md)."""

    rate_per_km: int = 10**17  # 0.10 TEST/km before the behaviour factor
    min_factor_bps: int = 8_000  # ×0.80: a driver with no harsh braking or speeding
    max_factor_bps: int = 20_000  # ×2.00: the cap
    step_bps: int = 1_000  # +0.10 per harsh-braking event or speeding episode per 100 km
    deposit: int = 50 * 10**18
    #: styles the demo's vehicles take in turn, so a small fleet shows the factor move both ways
    styles: tuple[DrivingStyle, ...] = (
        DrivingStyle.RECKLESS,
        DrivingStyle.CALM,
        DrivingStyle.AVERAGE,
        DrivingStyle.AGGRESSIVE,
    )


@dataclass(frozen=True)
class HealthTerms:
    """Health cover of the demo's wearables: a period of a few seconds stands for a day of the wearer's week, so the
    thresholds are a day's; the wearers take the activity profiles in turn."""

    base_rate: int = 10**18  # 1 TEST a period before the tier's discount
    period_length: int = 6
    periods: int = 7
    discount_bps: tuple[int, int, int, int] = health_ops.DEFAULT_DISCOUNTS
    thresholds: Thresholds = DAILY_THRESHOLDS
    deposit: int = 10 * 10**18
    profiles: tuple[ActivityProfile, ...] = (ActivityProfile.SEDENTARY, ActivityProfile.ACTIVE, ActivityProfile.ATHLETE)


@dataclass(frozen=True)
class CropTerms:
    """The demo's crop season: a rain index over k of n stations, a few minutes long, on the wall clock."""

    pool_assets: int = 1_000 * 10**18
    index: str = "rain"  # rain below the threshold over the season triggers
    # 0.03 mm (hundredths of a mm): a season of seconds or minutes in a drought measures none, while the hostile
    # station's cloudburst passes it within 4 s (the shortest window a 5 s season may count)
    threshold: int = 3
    premium_bps: int = 800  # 8 % of the cover
    k: int = 3
    covers: tuple[int, ...] = (150 * 10**18, 200 * 10**18, 100 * 10**18)  # one per farmer; the first has the loan
    sale_window: int = 6  # least seconds between opening the season and its start (cover is sold until the start)
    coverage_slack: int = 10  # a station covers the season if it reported within this of the start and the end
    # seconds after the end for the last observations, and each station's first one after the end (it votes only
    # then), to be relayed; the contract's floor (MIN_FINALIZE_DELAY)
    finalize_delay: int = 10
    region: str = "nakuru-ke"
    loan_principal: int = 100 * 10**18
    loan_repayment: int = 110 * 10**18
    loan_share_bps: int = 8_000  # 80 % of each payout repays the loan until it is repaid
    loan_term: int = 30 * 86_400
    gas_money: int = 10**18  # ETH each farmer and the lender get for their transactions


@dataclass(frozen=True)
class ProvisionedFleet:
    fleet_path: Path
    fleet: Fleet
    agreements: dict[str, int]  # device name → agreement id
    escrows: dict[str, list[int]]  # tracker name → escrow ids
    tariffs: dict[str, int] = field(default_factory=dict)
    first_block: int = 0
    last_block: int = 0
    policies: dict[str, int] = field(default_factory=dict)  # vehicle name → MotorInsurance policy id
    styles: dict[str, str] = field(default_factory=dict)  # vehicle name → driving style
    stations: tuple[str, ...] = ()  # weather station addresses
    hostile: tuple[str, ...] = ()  # stations that lie (fault class hostile)
    health: dict[str, int] = field(default_factory=dict)  # wearable name → HealthInsurance policy id
    profiles: dict[str, str] = field(default_factory=dict)  # wearable name → activity profile

    def as_dict(self) -> dict[str, object]:
        return {
            "fleet": str(self.fleet_path),
            "devices": self.fleet.by_kind(),
            "agreements": {k: str(v) for k, v in self.agreements.items()},
            "escrows": self.escrows,
            "policies": {k: str(v) for k, v in self.policies.items()},
            "drivingStyles": self.styles,
            "stations": list(self.stations),
            "hostileStations": list(self.hostile),
            "healthPolicies": {k: str(v) for k, v in self.health.items()},
            "activityProfiles": self.profiles,
            "tariffs": self.tariffs,
            "blocks": [self.first_block, self.last_block],
        }


def _as(ctx: OpsContext, account: LocalAccount) -> OpsContext:
    return dataclasses.replace(ctx, sender=account)


#: the registers a device's first report starts its agreement or policy at: a meter's value; a vehicle's odometer
#: and its two behaviour counters (cumulative since the unit was installed)
_FIRST_REGISTERS = {"reading": ("value",), "telematics": ("odometer", "harshBraking", "speeding")}


def first_values(fleet: Fleet, ctx: OpsContext, seed: int) -> dict[str, tuple[int, ...]]:
    """The registers each meter/vehicle will report first in a simulation with ``seed`` (the agreement's start
    value; the policy's start odometer, harsh-braking and speeding counts), from a dry run of the simulator's own
    plan."""
    contracts = contracts_from_manifest(ctx.manifest)
    wanted = {d.address for d in fleet.devices if set(d.streams) & set(_FIRST_REGISTERS)}
    found: dict[str, tuple[int, ...]] = {}
    if not wanted:
        return found
    only = frozenset(wanted)
    plan = dataclasses.replace(
        plan_events(fleet, contracts, rate=float(len(fleet.devices)) * 4, duration=1.0, seed=seed, counters="memory"),
        only=only,
    )
    try:
        for event in plan:
            if event.event_type in _FIRST_REGISTERS and event.fault is None and event.device not in found:
                msg = json.loads(event.payload)["msg"]
                found[event.device] = tuple(int(msg[name]) for name in _FIRST_REGISTERS[event.event_type])
                if len(found) == len(wanted):
                    break
    finally:
        plan.close()
    return found


def provision(
    ctx: OpsContext,
    out_dir: Path,
    spec: FleetSpec,
    parties: Parties,
    *,
    terms: Terms = Terms(),
    motor: MotorTerms = MotorTerms(),
    health: HealthTerms = HealthTerms(),
    seed: int = 1,
    progress: Callable[[str], None] = lambda _m: None,
) -> ProvisionedFleet:
    """Create the fleet file, register every device, open and fund an agreement per meter, an escrow per tracker,
    a motor policy per vehicle (a pay-per-km agreement instead when the deployment has no MotorInsurance) and a
    health policy per wearable (no wearables when it has no HealthInsurance). The last weather station is hostile
    (it lies in every observation). Returns the ids, already written into the fleet file."""
    first_block = int(ctx.w3.eth.block_number) + 1
    contracts = contracts_from_manifest(ctx.manifest)
    insured = ctx.has(motor_ops.CONTRACT)
    wearables = spec.wearables if ctx.has(health_ops.CONTRACT) else 0
    path = generate_fleet(
        out_dir,
        chain_id=ctx.chain.chain_id,
        contracts=contracts,
        meters=spec.meters,
        trackers=spec.trackers,
        vehicles=spec.vehicles,
        weather_stations=spec.weather_stations,
        wearables=wearables,
        seed=seed,
        vehicle_policies=insured,
    )
    fleet = load_fleet(path)
    test = token.describe_token(ctx, token.TEST)

    progress(f"registering {len(fleet.devices)} devices to the operator {parties.operator.address}")
    operator = _as(ctx, parties.operator)
    registry.register_many(operator, [(device.key, device.kind) for device in fleet.devices])

    utility, insurer, household, _shop = (
        _as(ctx, p) for p in (parties.utility, parties.insurer, parties.household, parties.shop)
    )
    meter_tariff, _ = billing.create_flat_tariff(utility, terms.price_per_wh)
    vehicles = [d for d in fleet.devices if d.kind is DeviceKind.VEHICLE]
    billed = [d for d in fleet.devices if "reading" in d.streams]
    trackers = [d for d in fleet.devices if d.kind is DeviceKind.TRACKER]
    insured_vehicles = vehicles if insured else []
    tariffs = {"meter": meter_tariff}
    if not insured and vehicles:
        tariffs["vehicle"], _ = billing.create_flat_tariff(insurer, terms.price_per_m)
    deposits = terms.deposit * len(billed)
    premiums = motor.deposit * len(insured_vehicles)
    parcels = terms.parcel_price * sum(len(d.targets) for d in trackers)
    wearers = [d for d in fleet.devices if d.kind is DeviceKind.WEARABLE]
    covers = health.deposit * len(wearers)
    token.mint(household, parties.household.address, deposits + premiums + parcels + covers)
    if deposits:
        token.ensure_allowance(household, test, billing.CONTRACT, deposits)
    if parcels:
        token.ensure_allowance(household, test, escrow.CONTRACT, parcels)
    if premiums:
        token.ensure_allowance(household, test, motor_ops.CONTRACT, premiums)
    if covers:
        token.ensure_allowance(household, test, health_ops.CONTRACT, covers)

    starts = first_values(fleet, ctx, seed)
    progress(
        f"opening {len(billed)} prepaid agreements ({terms.deposit / 1e18:g} TEST each), "
        f"{len(trackers)} escrows ({terms.parcel_price / 1e18:g} TEST each) and {len(insured_vehicles)} motor "
        f"policies ({motor.deposit / 1e18:g} TEST prepaid each)"
    )
    agreements: dict[str, int] = {}
    for kind, tariff_name, provider in ((DeviceKind.METER, "meter", utility), (DeviceKind.VEHICLE, "vehicle", insurer)):
        group = [d for d in billed if d.kind is kind]
        if not group:
            continue
        ids = billing.offer_many(
            provider,
            [
                {
                    "consumer": parties.household.address,
                    "device": d.address,
                    "tariff_id": tariffs[tariff_name],
                    "token": test,
                    "start_value": starts.get(d.address, (0,))[0],
                    "notice_period": 0,
                }
                for d in group
            ],
        )
        agreements.update({d.name: i for d, i in zip(group, ids, strict=True)})
    billing.accept_many(
        household, [(agreements[d.name], terms.deposit, starts.get(d.address, (0,))[0]) for d in billed]
    )

    deadline = int(ctx.w3.eth.get_block("latest")["timestamp"]) + terms.escrow_lifetime
    ids = escrow.create_many(
        household,
        [
            {
                "seller": parties.shop.address,
                "device": d.address,
                "token": test,
                "amount": terms.parcel_price,
                "destination": location_bytes32(d.destination),
                "deadline": deadline,
                "temperature_limit": 800,
                "penalty_bps": 1000,
            }
            for d in trackers
        ],
    )
    escrows = {d.name: [i] for d, i in zip(trackers, ids, strict=True)}
    set_targets(path, {**{name: [i] for name, i in agreements.items()}, **escrows})

    policies = _motor_policies(insurer, household, insured_vehicles, starts, parties, test, motor)
    styles = (
        {d.name: motor.styles[i % len(motor.styles)] for i, d in enumerate(insured_vehicles)} if motor.styles else {}
    )
    stations = [d for d in fleet.devices if "weather" in d.streams]
    if stations and ctx.has(crop.CONTRACT):
        # The operator owns the stations: only an insurer it allowed can name them in a season.
        transact_many(
            operator,
            [
                operator.contract(crop.CONTRACT).functions.allowInsurer(d.address, parties.insurer.address, True)
                for d in stations
            ],
            crop.CONTRACT,
            gas=100_000,
        )
    hostile = stations[-1:] if len(stations) >= 3 else []
    set_policies(path, policies, styles=styles, faults={d.name: [FaultClass.HOSTILE] for d in hostile})
    profiles = {d.name: health.profiles[i % len(health.profiles)] for i, d in enumerate(wearers)}
    if wearers:
        progress(
            f"opening {len(wearers)} health policies ({health.periods} periods of {health.period_length} s, "
            f"{health.base_rate / 1e18:g} TEST each before the tier's discount) for wearables worn by "
            + ", ".join(f"an {p}" if p[0] in "aeiou" else f"a {p}" for p in profiles.values())
            + " wearer"
        )
    cover = _health_policies(insurer, household, wearers, parties, test, health)
    set_health_policies(path, cover, profiles=profiles)
    final = load_fleet(path)
    return ProvisionedFleet(
        path,
        final,
        agreements,
        escrows,
        tariffs,
        first_block,
        int(ctx.w3.eth.block_number),
        policies,
        {d.name: str(driving_style(d, seed)) for d in final.devices if d.kind is DeviceKind.VEHICLE},
        tuple(d.address for d in stations),
        tuple(d.address for d in hostile),
        {name: policy_id for name, (policy_id, _) in cover.items()},
        {name: str(profile) for name, profile in profiles.items()},
    )


def _health_policies(
    insurer: OpsContext,
    holder: OpsContext,
    wearables: list[Any],
    parties: Parties,
    test: token.TokenInfo,
    health: HealthTerms,
) -> dict[str, tuple[int, Cover]]:
    """Offer a health policy per wearable (insurer), accept each with its deposit (holder), and return what each
    wearable reads from its policy: the id and the cover (its calendar from the acceptance, the thresholds)."""
    if not wearables:
        return {}
    contract = insurer.contract(health_ops.CONTRACT)
    terms = (
        health.base_rate,
        health.period_length,
        health.periods,
        list(health.discount_bps),
        list(health.thresholds.min_steps),
        list(health.thresholds.min_active_minutes),
    )
    offers = [contract.functions.offer(parties.household.address, d.address, test.address, terms) for d in wearables]
    results = transact_many(insurer, offers, health_ops.CONTRACT, gas=400_000)
    ids = [int(events_in(insurer, health_ops.CONTRACT, r.receipt, "PolicyOffered")[0]["policyId"]) for r in results]
    accepts = [holder.contract(health_ops.CONTRACT).functions.accept(i, health.deposit) for i in ids]
    transact_many(holder, accepts, health_ops.CONTRACT, gas=300_000)
    out = {}
    for device, policy_id in zip(wearables, ids, strict=True):
        view = health_ops.policy_of(insurer, policy_id)
        out[device.name] = (policy_id, Cover(view.start, view.period_length, view.periods, view.thresholds))
    return out


def _motor_policies(
    insurer: OpsContext,
    holder: OpsContext,
    vehicles: list[Any],
    starts: dict[str, tuple[int, ...]],
    parties: Parties,
    test: token.TokenInfo,
    motor: MotorTerms,
) -> dict[str, int]:
    """Offer a policy per vehicle (insurer) and accept each with its prepaid deposit (holder); pipelined."""
    if not vehicles:
        return {}
    contract = insurer.contract(motor_ops.CONTRACT)
    # Each policy starts at the vehicle's registers as they will read at its first report, so a unit's earlier
    # distance and events are not priced.
    offers = [
        contract.functions.offer(
            parties.household.address,
            d.address,
            test.address,
            motor.rate_per_km,
            motor.min_factor_bps,
            motor.max_factor_bps,
            motor.step_bps,
            *starts.get(d.address, (0, 0, 0)),
            0,
        )
        for d in vehicles
    ]
    results = transact_many(insurer, offers, motor_ops.CONTRACT, gas=400_000)
    ids = [int(events_in(insurer, motor_ops.CONTRACT, r.receipt, "PolicyOffered")[0]["policyId"]) for r in results]
    # The holder names the registers it accepts to be priced from: the same first values it computed.
    accepts = [
        holder.contract(motor_ops.CONTRACT).functions.accept(i, motor.deposit, *starts.get(d.address, (0, 0, 0)))
        for d, i in zip(vehicles, ids, strict=True)
    ]
    transact_many(holder, accepts, motor_ops.CONTRACT, gas=300_000)
    return {d.name: i for d, i in zip(vehicles, ids, strict=True)}


# ------------------------------------------------------------------------------------------------ crop season


@dataclass(frozen=True)
class CropSetup:
    """A crop season opened for the demo, its covers and the micro-loan."""

    pool_id: int
    season_id: int
    start: int
    end: int
    finalizable_at: int
    stations: tuple[str, ...]
    hostile: tuple[str, ...]
    covers: dict[str, dict[str, Any]]  # farmer address → policyId, cover, premium, beneficiary
    loan_id: int
    payout_account: str
    borrower: str
    lender: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "poolId": self.pool_id,
            "seasonId": self.season_id,
            "start": self.start,
            "end": self.end,
            "finalizableAt": self.finalizable_at,
            "stations": list(self.stations),
            "hostile": list(self.hostile),
            "covers": {
                farmer: {k: str(v) if isinstance(v, int) else v for k, v in c.items()}
                for farmer, c in self.covers.items()
            },
            "loanId": self.loan_id,
            "payoutAccount": self.payout_account,
            "borrower": self.borrower,
            "lender": self.lender,
        }


def can_open_season(ctx: OpsContext, provisioned: ProvisionedFleet, parties: Parties, terms: CropTerms) -> str | None:
    """Why the demo cannot run a crop season here, or None."""
    for name in (crop.CONTRACT, loan.CONTRACT):
        if not ctx.has(name):
            return f"the deployment has no {name}"
    if len(provisioned.stations) < terms.k + 1:
        return (
            f"a season needs at least {terms.k + 1} weather stations (k = {terms.k}), the fleet has "
            f"{len(provisioned.stations)}"
        )
    if parties.lender is None or len(parties.farmers) < len(terms.covers):
        return f"a season needs a lender and {len(terms.covers)} farmers"
    return None


def open_season(
    ctx: OpsContext,
    provisioned: ProvisionedFleet,
    parties: Parties,
    *,
    season_length: int,
    terms: CropTerms = CropTerms(),
    progress: Callable[[str], None] = lambda _m: None,
) -> CropSetup:
    """Fund a crop pool (the insurer), lend to the first farmer (the lender), open a season over the fleet's weather
    stations that starts a sale window from now (``terms.sale_window`` seconds, longer on a node slower than that
    window allows for, ``iotsettle.oracle.demo.pace.sale_window``) and lasts ``season_length`` seconds, and sell the
    farmers their cover — the borrower's paid to the loan's payout account.

    Sends only from the insurer, the lender and the farmers (the insurer pays their gas money), so it may run while
    an oracle relays from the operator's account."""
    reason = can_open_season(ctx, provisioned, parties, terms)
    if reason is not None or parties.lender is None:
        raise ConfigError(f"cannot open a crop season: {reason or 'no lender'}")
    if season_length <= 0:
        raise ConfigError(f"a season must last a positive number of seconds, not {season_length}")
    test = token.describe_token(ctx, token.TEST)
    insurer, lender = _as(ctx, parties.insurer), _as(ctx, parties.lender)
    farmers = [_as(ctx, f) for f in parties.farmers[: len(terms.covers)]]
    borrower = parties.farmers[0].address

    progress(
        f"funding a crop pool with {terms.pool_assets / 1e18:g} TEST and lending "
        f"{terms.loan_principal / 1e18:g} TEST to the farmer {borrower}"
    )
    for party in (parties.lender, *parties.farmers[: len(terms.covers)]):
        if int(ctx.w3.eth.get_balance(party.address)) < terms.gas_money // 2:
            send(ctx.chain, parties.insurer, {"to": party.address, "value": terms.gas_money})
    token.mint(insurer, parties.insurer.address, terms.pool_assets)
    token.mint(lender, parties.lender.address, terms.loan_principal)
    pool_id, _ = crop.create_pool(insurer, test)
    token.ensure_allowance(insurer, test, crop.CONTRACT, terms.pool_assets)
    crop.deposit_to_pool(insurer, pool_id, terms.pool_assets)

    now = int(ctx.w3.eth.get_block("latest")["timestamp"])
    loan_id, _ = loan.offer(
        lender,
        loan.LoanTerms(
            borrower,
            test,
            terms.loan_principal,
            terms.loan_repayment,
            terms.loan_share_bps,
            now + 3_600,
            now + terms.loan_term,
        ),
    )
    _, account = loan.accept(farmers[0], loan_id)

    # Premiums approved before the season opens so the sale window only holds the purchases; each timed, so the
    # window holds the season's creation and the purchases at the pace the node shows right now.
    premiums = [crop.premium_for(cover, terms.premium_bps) for cover in terms.covers]
    timed: list[float] = []
    for farmer, parties_farmer, premium in zip(farmers[1:], parties.farmers[1:], premiums[1:], strict=False):
        started = time.monotonic()
        token.mint(farmer, parties_farmer.address, premium)
        timed.append(time.monotonic() - started)
    for farmer, premium in zip(farmers, premiums, strict=False):
        started = time.monotonic()
        token.ensure_allowance(farmer, test, crop.CONTRACT, premium)
        timed.append(time.monotonic() - started)

    stations = provisioned.stations
    window = sale_window(timed, 1 + len(farmers), terms.sale_window)
    start = max(int(time.time()), int(ctx.w3.eth.get_block("latest")["timestamp"])) + window
    spec = crop.SeasonSpec(
        start=start,
        end=start + season_length,
        sale_end=start,
        coverage_slack=terms.coverage_slack,
        finalize_delay=terms.finalize_delay,
        index=terms.index,
        threshold=terms.threshold,
        trigger_days=1 if terms.index == "heat" else 0,
        premium_bps=terms.premium_bps,
        k=terms.k,
        region=crop.region_bytes(terms.region),
        stations=stations,
    )
    season_id, _ = crop.create_season(insurer, pool_id, spec)
    covers: dict[str, dict[str, Any]] = {}
    for number, (farmer, cover) in enumerate(zip(farmers, terms.covers, strict=False)):
        beneficiary = account if number == 0 else farmer.require_sender().address
        policy_id, premium, _ = crop.buy_cover(farmer, season_id, cover, beneficiary)
        covers[farmer.require_sender().address] = {
            "policyId": policy_id,
            "cover": cover,
            "premium": premium,
            "beneficiary": beneficiary,
        }
    if int(ctx.w3.eth.get_block("latest")["timestamp"]) >= start:
        log.warning(
            "the covers were sold only as season %d started: the node slowed down after it was timed", season_id
        )
    progress(
        f"crop season {season_id}: {len(stations)} stations, k = {terms.k}, rain below "
        f"{crop.threshold_text(0, terms.threshold)} from {crop.when(start)} for {season_length} s; "
        f"{len(covers)} farmers covered"
    )
    return CropSetup(
        pool_id,
        season_id,
        start,
        start + season_length,
        start + season_length + terms.finalize_delay,
        stations,
        provisioned.hostile,
        covers,
        loan_id,
        account,
        borrower,
        parties.lender.address,
    )


def keeper_account(ctx: OpsContext, funder: LocalAccount, terms: CropTerms = CropTerms()) -> LocalAccount:
    """The demo keeper's own account (not the oracle's relayer: the daemon manages that key's nonces), given gas
    money by ``funder``."""
    keeper = demo_account("keeper")
    if int(ctx.w3.eth.get_balance(keeper.address)) < terms.gas_money // 2:
        send(ctx.chain, funder, {"to": keeper.address, "value": terms.gas_money})
    return keeper


def _keeper_done(ctx: OpsContext, setup: CropSetup) -> bool:
    """The season finalized with every policy processed, and nothing left to collect for the loan's account."""
    season = crop.season_of(ctx, setup.season_id, details=False)
    if not season.finalized or season.paid_up_to < season.policy_count:
        return False
    balance, credits = waiting(ctx, loan.loan_of(ctx, setup.loan_id))
    return not balance and not credits


def _chain_time_past(ctx: OpsContext, caller: LocalAccount, moment: int) -> None:
    """Once the wall clock is past ``moment``, make sure the chain's clock is too. A node that mines only when a
    transaction comes (ganache) keeps its latest block's time while nothing is sent, and estimates calls at that
    time: a season would never look finalizable to the keeper. A transfer to oneself mines a block at the time now.
    """
    if time.time() > moment and int(ctx.w3.eth.get_block("latest")["timestamp"]) <= moment:
        send(ctx.chain, caller, {"to": caller.address, "value": 0})


def close_season(
    ctx: OpsContext, setup: CropSetup, caller: LocalAccount, *, keeper: str | None = None, keeper_grace: float = 0.0
) -> dict[str, Any]:
    """What happened to the season and the loan, read back from the chain.

    With a ``keeper`` running, wait until ``keeper_grace`` seconds after the season became finalizable for it to
    finalize, pay and sweep; whatever is still undone then (or with no keeper) ``caller`` does, and the result
    says so in ``fallback``."""
    anyone = _as(ctx, caller)
    fallback: list[str] = []
    if keeper is not None:
        deadline = setup.finalizable_at + keeper_grace
        while not _keeper_done(ctx, setup) and time.time() < deadline:
            _chain_time_past(ctx, caller, setup.finalizable_at)
            time.sleep(0.5)
    if not crop.season_of(ctx, setup.season_id, details=False).finalized:
        wait = setup.finalizable_at + 1 - max(int(time.time()), int(ctx.w3.eth.get_block("latest")["timestamp"]))
        if wait > 0:
            time.sleep(wait)
        _chain_time_past(ctx, caller, setup.finalizable_at)
        try:
            crop.finalize(anyone, setup.season_id)
            fallback.append("finalized by the demo" + (": the keeper had not finalized it" if keeper else ""))
        except RevertedError:  # the keeper may have finalized it a moment ago
            if not crop.season_of(ctx, setup.season_id, details=False).finalized:
                raise
    season = crop.season_of(ctx, setup.season_id, details=False)
    if season.paid_up_to < season.policy_count:
        crop.pay_out(anyone, setup.season_id, until_done=True)
        fallback.append("payouts completed by the demo")
    season = crop.season_of(ctx, setup.season_id)
    balance, credits = waiting(ctx, loan.loan_of(ctx, setup.loan_id))
    if balance or credits:
        loan.sweep(anyone, setup.loan_id, [source for source, _ in credits])
        fallback.append("loan swept by the demo" + (": the keeper had not swept it" if keeper else ""))
    view = loan.loan_of(ctx, setup.loan_id)
    paid = {
        c.policy_id: sum(
            int(e.args["amount"]) for e in fetch_logs(ctx, crop.CONTRACT, ("PayoutSent",), topic1=c.policy_id)
        )
        for c in season.policies
    }
    repaid = fetch_logs(ctx, loan.CONTRACT, ("Repaid",), topic1=setup.loan_id)
    forwarded = fetch_logs(ctx, loan.CONTRACT, ("Forwarded",), topic1=setup.loan_id)
    [finalized] = fetch_logs(ctx, crop.CONTRACT, ("SeasonFinalized",), topic1=setup.season_id)
    finalized_by = ctx.w3.eth.get_transaction(finalized.tx_hash)["from"]
    return {
        "seasonId": setup.season_id,
        "triggered": season.triggered,
        "votes": {
            "trigger": season.trigger_votes,
            "noTrigger": season.no_trigger_votes,
            "abstain": season.abstentions,
            "k": season.k,
        },
        "threshold": season.threshold_text,
        "stations": [
            {"station": s.station, "verdict": s.verdict, "measured": s.measured, "hostile": s.station in setup.hostile}
            for s in season.stations
        ],
        "covers": [
            {
                "policyId": c.policy_id,
                "buyer": c.buyer,
                "beneficiary": c.beneficiary,
                "cover": str(c.cover),
                "premium": str(c.premium),
                "status": c.status,
                "paid": str(paid.get(c.policy_id, 0)),
            }
            for c in season.policies
        ],
        "loan": {
            "loanId": setup.loan_id,
            "account": setup.payout_account,
            "borrower": setup.borrower,
            "repaidBySweep": str(sum(int(e.args["amount"]) for e in repaid)),
            "forwarded": str(sum(int(e.args["amount"]) for e in forwarded)),
            "sweptBy": sorted({ctx.w3.eth.get_transaction(e.tx_hash)["from"] for e in repaid + forwarded}),
            "outstanding": str(view.outstanding),
            "status": view.status,
            "repayment": str(view.repayment),
        },
        "finalizedBy": finalized_by,
        "keeper": keeper,
        "fallback": fallback,
    }


def check_chain_time(ctx: OpsContext, slack: int = 30) -> None:
    """A crop season runs on the wall clock: refuse a node whose clock is far from it (e.g. after evm_increaseTime)."""
    chain = int(ctx.w3.eth.get_block("latest")["timestamp"])
    if abs(chain - time.time()) > slack:
        raise ChainError(
            f"the node's clock is {chain - time.time():+.0f} s off the wall clock; the demo's crop season "
            "needs a node that follows real time (a fresh anvil)"
        )
