"""Provision a demo fleet on chain: device keys, registrations, tariffs, funded agreements and escrows.

Everything goes through the same operations as the CLI (``oracle.ops.registry``, ``billing``, ``escrow``,
``token``), so the demo exercises the code users run. The fleet file written here is the simulator's input
(``oracle.device.fleet``), pointed at the real agreement and escrow ids.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from eth_account.signers.local import LocalAccount

from oracle.device.fleet import Fleet, contracts_from_manifest, generate_fleet, load_fleet, set_targets
from oracle.device.location import location_bytes32
from oracle.device.simulator import plan_events
from oracle.eip712 import DeviceKind
from oracle.errors import ConfigError
from oracle.ops import billing, escrow, registry, token
from oracle.ops.context import OpsContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetSpec:
    meters: int = 50
    trackers: int = 10
    vehicles: int = 10

    @property
    def total(self) -> int:
        return self.meters + self.trackers + self.vehicles

    @classmethod
    def scaled(cls, devices: int) -> FleetSpec:
        """About the default proportions (5 : 1 : 1) for ``devices`` devices, at least one tracker and vehicle."""
        if devices < 3:
            raise ConfigError("the demo fleet needs at least 3 devices (a meter, a tracker and a vehicle)")
        trackers = max(1, round(devices / 7))
        vehicles = max(1, round(devices / 7))
        return cls(devices - trackers - vehicles, trackers, vehicles)


@dataclass(frozen=True)
class Parties:
    """Who is who: the fleet operator owns the devices; the utility bills meters, the insurer bills vehicles per
    km; the household prepays both and buys parcels from the shop."""

    operator: LocalAccount
    utility: LocalAccount
    insurer: LocalAccount
    household: LocalAccount
    shop: LocalAccount


@dataclass(frozen=True)
class Terms:
    """Prices in base units of the test token (18 decimals)."""

    price_per_wh: int = 2 * 10**14  # 0.0002 TEST/Wh = 0.20 TEST/kWh
    price_per_m: int = 10**14  # 0.0001 TEST/m = 0.10 TEST/km (pay-per-km insurance)
    deposit: int = 50 * 10**18
    parcel_price: int = 25 * 10**18
    escrow_lifetime: int = 3600  # seconds of chain time


@dataclass(frozen=True)
class ProvisionedFleet:
    fleet_path: Path
    fleet: Fleet
    agreements: dict[str, int]  # device name → agreement id
    escrows: dict[str, list[int]]  # tracker name → escrow ids
    tariffs: dict[str, int] = field(default_factory=dict)
    first_block: int = 0
    last_block: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"fleet": str(self.fleet_path), "devices": self.fleet.by_kind(),
                "agreements": {k: str(v) for k, v in self.agreements.items()}, "escrows": self.escrows,
                "tariffs": self.tariffs, "blocks": [self.first_block, self.last_block]}


def _as(ctx: OpsContext, account: LocalAccount) -> OpsContext:
    return dataclasses.replace(ctx, sender=account)


def first_values(fleet: Fleet, ctx: OpsContext, seed: int) -> dict[str, int]:
    """The register value each meter/vehicle will report first in a simulation with ``seed`` (the agreement's
    start value), from a dry run of the simulator's own plan."""
    contracts = contracts_from_manifest(ctx.manifest)
    wanted = {d.address for d in fleet.devices if d.kind is not DeviceKind.TRACKER}
    found: dict[str, int] = {}
    if not wanted:
        return found
    plan = plan_events(fleet, contracts, rate=float(len(wanted)) * 4, duration=1.0, seed=seed, counters="memory")
    try:
        for event in plan:
            if event.event_type == "reading" and event.fault is None and event.device not in found:
                found[event.device] = int(json.loads(event.payload)["msg"]["value"])
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
    seed: int = 1,
    progress: Callable[[str], None] = lambda _m: None,
) -> ProvisionedFleet:
    """Create the fleet file, register every device, open and fund an agreement per meter/vehicle and an escrow per
    tracker. Returns the ids, already written into the fleet file."""
    first_block = int(ctx.w3.eth.block_number) + 1
    contracts = contracts_from_manifest(ctx.manifest)
    path = generate_fleet(out_dir, chain_id=ctx.chain.chain_id, contracts=contracts, meters=spec.meters,
                          trackers=spec.trackers, vehicles=spec.vehicles, weather_stations=0, seed=seed)
    fleet = load_fleet(path)
    test = token.describe_token(ctx, token.TEST)

    progress(f"registering {len(fleet.devices)} devices to the operator {parties.operator.address}")
    operator = _as(ctx, parties.operator)
    registry.register_many(operator, [(device.key, device.kind) for device in fleet.devices])

    utility, insurer, household, shop = (_as(ctx, p) for p in (parties.utility, parties.insurer, parties.household,
                                                               parties.shop))
    meter_tariff, _ = billing.create_flat_tariff(utility, terms.price_per_wh)
    km_tariff, _ = billing.create_flat_tariff(insurer, terms.price_per_m)
    readers = [d for d in fleet.devices if d.kind is not DeviceKind.TRACKER]
    trackers = [d for d in fleet.devices if d.kind is DeviceKind.TRACKER]
    deposits = terms.deposit * len(readers)
    parcels = terms.parcel_price * sum(len(d.targets) for d in trackers)
    token.mint(household, parties.household.address, deposits + parcels)
    if deposits:
        token.ensure_allowance(household, test, billing.CONTRACT, deposits)
    if parcels:
        token.ensure_allowance(household, test, escrow.CONTRACT, parcels)

    starts = first_values(fleet, ctx, seed)
    progress(f"opening {len(readers)} prepaid agreements ({terms.deposit / 1e18:g} TEST each) and "
             f"{len(trackers)} escrows ({terms.parcel_price / 1e18:g} TEST each)")
    agreements: dict[str, int] = {}
    for provider, tariff, kind in ((utility, meter_tariff, DeviceKind.METER), (insurer, km_tariff, DeviceKind.VEHICLE)):
        group = [d for d in readers if d.kind is kind]
        ids = billing.offer_many(provider, [dict(consumer=parties.household.address, device=d.address, tariff_id=tariff,
                                                 token=test, start_value=starts.get(d.address, 0), notice_period=0)
                                            for d in group])
        agreements.update({d.name: i for d, i in zip(group, ids, strict=True)})
    billing.accept_many(household, [(agreements[d.name], terms.deposit) for d in readers])

    deadline = int(ctx.w3.eth.get_block("latest")["timestamp"]) + terms.escrow_lifetime
    ids = escrow.create_many(household, [dict(seller=parties.shop.address, device=d.address, token=test,
                                              amount=terms.parcel_price, destination=location_bytes32(d.destination),
                                              deadline=deadline, temperature_limit=800, penalty_bps=1000)
                                         for d in trackers])
    escrows = {d.name: [i] for d, i in zip(trackers, ids, strict=True)}

    set_targets(path, {**{name: [i] for name, i in agreements.items()}, **escrows})
    return ProvisionedFleet(path, load_fleet(path), agreements, escrows,
                            {"meter": meter_tariff, "vehicle": km_tariff}, first_block, int(ctx.w3.eth.block_number))
