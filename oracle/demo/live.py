"""What a running settlement looks like, for the demo's live view and summary.

Two read-only sources: the oracle's SQLite store (received, waiting, settled, rejected by reason, latency from
receipt to settlement) opened with ``mode=ro`` so it never takes a write lock, and the chain itself (payments
made, amounts, gas per settled event, each insured vehicle's premiums and behaviour factors) so the summary does
not just repeat what the oracle believes.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_abi import decode as abi_decode
from iotsettle.oracle.chain import logs as chain_logs
from iotsettle.oracle.chain.abi import abi_type
from iotsettle.oracle.chain.revert import reason_label
from iotsettle.oracle.demo.provision import ProvisionedFleet
from iotsettle.oracle.ops import health, motor
from iotsettle.oracle.ops.context import OpsContext
from iotsettle.oracle.protocol import premium, settled

log = logging.getLogger(__name__)

SETTLED_STATUSES = ("settled", "final")
WAITING_STATUSES = ("pending", "claimed", "submitted")


@dataclass(frozen=True)
class StoreSnapshot:
    received: int = 0  # accepted and stored
    by_status: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)  # refused at intake, by reason
    dead: dict[str, int] = field(default_factory=dict)  # stored but will never settle, by reason
    alerts: dict[str, int] = field(default_factory=dict)  # early alerts raised on accepted events, by kind

    @property
    def settled(self) -> int:
        return sum(self.by_status.get(s, 0) for s in SETTLED_STATUSES)

    @property
    def superseded(self) -> int:
        return self.by_status.get("superseded", 0)

    @property
    def backlog(self) -> int:
        return sum(self.by_status.get(s, 0) for s in WAITING_STATUSES)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values()) + sum(self.dead.values())


def _connect_ro(db_path: Path) -> sqlite3.Connection | None:
    if not db_path.is_file():
        return None
    try:
        return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return None


def read_store(db_path: Path) -> StoreSnapshot:
    """Counts from the oracle's store; an empty snapshot while the daemon has not created it yet."""
    conn = _connect_ro(db_path)
    if conn is None:
        return StoreSnapshot()
    try:
        by_status = dict(conn.execute("SELECT status, COUNT(*) FROM events GROUP BY status").fetchall())
        rejected = dict(conn.execute("SELECT reason, COUNT(*) FROM rejected GROUP BY reason").fetchall())
        dead = dict(
            conn.execute(
                "SELECT COALESCE(reason, 'unknown'), COUNT(*) FROM events WHERE status = 'dead' GROUP BY reason"
            ).fetchall()
        )
        alerts = dict(conn.execute("SELECT kind, COUNT(*) FROM alerts GROUP BY kind").fetchall())
    except sqlite3.Error as exc:  # tables not created yet, or a migration in progress
        log.debug("store not readable yet: %s", exc)
        return StoreSnapshot()
    finally:
        conn.close()
    dead_by_reason = {f"chain:{k}": v for k, v in dead.items()}
    return StoreSnapshot(sum(by_status.values()), by_status, rejected, dead_by_reason, alerts)


def latencies(db_path: Path) -> list[float]:
    """Seconds from the oracle receiving an event to its payment being mined, for every settled event."""
    conn = _connect_ro(db_path)
    if conn is None:
        return []
    try:
        rows = conn.execute(
            "SELECT settled_at - received_at FROM events WHERE settled_at IS NOT NULL "
            "AND status IN ('settled', 'final')"
        ).fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()
    return sorted(float(r[0]) for r in rows if r[0] is not None and r[0] >= 0)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted ``values`` (q in 0..100)."""
    if not values:
        return None
    rank = max(0, min(len(values) - 1, round(q / 100 * len(values) + 0.5) - 1))
    return values[rank]


@dataclass(frozen=True)
class ChainSummary:
    readings_settled: int
    readings_rejected: dict[str, int]
    deliveries_confirmed: int
    deliveries_rejected: dict[str, int]
    billed: int  # base units, all agreements
    released: int  # base units to sellers
    transactions: int
    gas_used: int
    items: int  # events carried by those transactions (settled or rejected on chain)
    telematics_settled: int = 0  # PremiumCharged (also when nothing was due: metres 0)
    telematics_rejected: dict[str, int] = field(default_factory=dict)
    premiums: int = 0  # base units charged to motor policies
    observations_recorded: int = 0
    observations_rejected: dict[str, int] = field(default_factory=dict)

    @property
    def payments(self) -> int:
        return self.readings_settled + self.deliveries_confirmed + self.telematics_settled

    @property
    def gas_per_event(self) -> float | None:
        return self.gas_used / self.items if self.items else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "readingsSettled": self.readings_settled,
            "readingsRejected": self.readings_rejected,
            "deliveriesConfirmed": self.deliveries_confirmed,
            "deliveriesRejected": self.deliveries_rejected,
            "billed": str(self.billed),
            "released": str(self.released),
            "transactions": self.transactions,
            "telematicsSettled": self.telematics_settled,
            "telematicsRejected": self.telematics_rejected,
            "premiums": str(self.premiums),
            "observationsRecorded": self.observations_recorded,
            "observationsRejected": self.observations_rejected,
            "gasUsed": self.gas_used,
            "events": self.items,
            "gasPerEvent": round(self.gas_per_event) if self.gas_per_event else None,
        }


@dataclass(frozen=True)
class RawEvent:
    event: str
    args: dict[str, Any]  # the non-indexed arguments
    tx_hash: str
    topic1: int | None = None  # the first indexed argument (an id, or an address as an integer)


def _event_specs(
    ctx: OpsContext, contract: str, events: tuple[str, ...]
) -> dict[str, tuple[str, list[str], list[str]]]:
    """topic0 → (event name, non-indexed argument names, their ABI types)."""
    entries: Sequence[Mapping[str, Any]] = ctx.contract(contract).abi  # web3's ABI TypedDicts, read as JSON objects
    abi = {e["name"]: e for e in entries if e.get("type") == "event"}
    specs = {}
    for name in events:
        entry = abi[name]
        data = [i for i in entry["inputs"] if not i["indexed"]]
        specs[chain_logs.topic0(entry)] = (name, [i["name"] for i in data], [abi_type(i) for i in data])
    return specs


def settlement_logs(
    ctx: OpsContext, contract: str, events: tuple[str, ...], from_block: int, to_block: int | None = None
) -> list[RawEvent]:
    """``events`` of a deployed contract in blocks ``from_block``..``to_block`` (default latest), decoded from the
    raw JSON-RPC answer, a ``ReadingsSettled`` batch log as one event per record; [] when the contract is not
    deployed."""
    if not ctx.has(contract):
        return []
    address = ctx.address(contract)
    specs = _event_specs(ctx, contract, events)
    latest = ctx.rpc.block_number() if to_block is None else to_block
    out: list[RawEvent] = []
    for entry in chain_logs.scan(ctx.rpc, address, from_block, latest, [list(specs)]):
        spec = specs.get(entry["topics"][0]) if entry.get("topics") else None
        if spec is None:
            continue
        name, names, types = spec
        data = bytes.fromhex(entry["data"][2:])
        if name == settled.EVENT:
            # one batch log for many readings: one event per record, as the readers count them
            tx = entry["transactionHash"]
            out += [RawEvent(name, r.args(), tx, r.agreement_id) for r in settled.decode_log_data(data)]
            continue
        values = abi_decode(types, data)
        topics = entry["topics"]
        out.append(
            RawEvent(
                name,
                premium.expand(name, dict(zip(names, values, strict=True))),
                entry["transactionHash"],
                int(topics[1], 16) if len(topics) > 1 else None,
            )
        )
    return out


class LogTally:
    """Counts of events since a block, read incrementally: the live view asks every second, and re-reading every
    log since the start each time grows with the run."""

    def __init__(self, ctx: OpsContext, from_block: int, wanted: dict[str, tuple[str, ...]]) -> None:
        self._ctx = ctx
        self._next = from_block
        self._wanted = {contract: events for contract, events in wanted.items() if ctx.has(contract)}
        self.counts: Counter[str] = Counter()

    def update(self) -> Counter[str]:
        latest = self._ctx.rpc.block_number()
        if latest >= self._next:
            for contract, events in self._wanted.items():
                self.counts.update(e.event for e in settlement_logs(self._ctx, contract, events, self._next, latest))
            self._next = latest + 1
        return self.counts


def chain_summary(ctx: OpsContext, from_block: int) -> ChainSummary:
    """Settlement events since ``from_block`` and the gas of the transactions that carried them (the insurance
    products count when deployed)."""
    readings = settlement_logs(ctx, "MeteredBilling", (settled.EVENT, "ReadingRejected"), from_block)
    deliveries = settlement_logs(ctx, "DeliveryEscrow", ("DeliveryConfirmed", "DeliveryRejected"), from_block)
    telematics = settlement_logs(ctx, "MotorInsurance", ("PremiumCharged", "TelematicsRejected"), from_block)
    weather = settlement_logs(ctx, "CropInsurance", ("ObservationRecorded", "ObservationRejected"), from_block)

    def rejected(entries: list[RawEvent], event: str) -> dict[str, int]:
        return dict(Counter(reason_label(int(e.args["reason"])) for e in entries if e.event == event))

    # Only the relayed batches: a finalize or a top-up in the same contracts is not settlement gas.
    txs = {e.tx_hash for e in readings + deliveries + telematics + weather}
    gas = sum(
        int(receipt["gasUsed"], 16) for receipt in ctx.rpc.batch([("eth_getTransactionReceipt", [h]) for h in txs])
    )
    return ChainSummary(
        readings_settled=sum(1 for e in readings if e.event == settled.EVENT),
        readings_rejected=rejected(readings, "ReadingRejected"),
        deliveries_confirmed=sum(1 for e in deliveries if e.event == "DeliveryConfirmed"),
        deliveries_rejected=rejected(deliveries, "DeliveryRejected"),
        billed=sum(int(e.args["amount"]) for e in readings if e.event == settled.EVENT),
        released=sum(int(e.args["toSeller"]) for e in deliveries if e.event == "DeliveryConfirmed"),
        transactions=len(txs),
        gas_used=gas,
        items=len(readings) + len(deliveries) + len(telematics) + len(weather),
        telematics_settled=sum(1 for e in telematics if e.event == "PremiumCharged"),
        telematics_rejected=rejected(telematics, "TelematicsRejected"),
        premiums=sum(int(e.args["amount"]) for e in telematics if e.event == "PremiumCharged"),
        observations_recorded=sum(1 for e in weather if e.event == "ObservationRecorded"),
        observations_rejected=rejected(weather, "ObservationRejected"),
    )


# ------------------------------------------------------------------------------------------------ motor figures


def motor_summary(ctx: OpsContext, provisioned: ProvisionedFleet, from_block: int) -> list[dict[str, Any]]:
    """Per insured vehicle: style, distance, harsh braking and speeding counted, premiums charged and the factors
    the contract applied (from its PremiumCharged events), reports refused by reason, the policy's standing."""
    logs = settlement_logs(ctx, motor.CONTRACT, ("PremiumCharged", "TelematicsRejected"), from_block)
    out = []
    for name, policy_id in provisioned.policies.items():
        entries = [e for e in logs if e.topic1 == policy_id]
        charged = [e.args for e in entries if e.event == "PremiumCharged"]
        rejected = Counter(reason_label(int(e.args["reason"])) for e in entries if e.event == "TelematicsRejected")
        factors = [int(a["factorBps"]) for a in charged if int(a["metres"]) > 0]
        view = motor.policy_of(ctx, policy_id)
        metres = sum(int(a["metres"]) for a in charged)
        harsh = sum(int(a["harshBraking"]) for a in charged)
        speeding = sum(int(a["speeding"]) for a in charged)
        amount = sum(int(a["amount"]) for a in charged)
        out.append(
            {
                "vehicle": name,
                "policyId": str(policy_id),
                "style": provisioned.styles.get(name, ""),
                "reports": len(charged),
                "metres": metres,
                "harshBraking": harsh,
                "speeding": speeding,
                "charged": str(amount),
                "factorMin": min(factors) if factors else None,
                "factorMax": max(factors) if factors else None,
                "effectiveFactorBps": (
                    amount * motor.METRES_PER_KM * 10_000 // (metres * view.rate_per_km)
                    if metres and view.rate_per_km
                    else None
                ),
                "lastFactorBps": view.last_factor_bps,
                "rejected": dict(rejected),
                "status": view.status,
                "prepaidLeft": str(view.prepaid),
            }
        )
    return out


def health_summary(ctx: OpsContext, provisioned: ProvisionedFleet, from_block: int) -> list[dict[str, Any]]:
    """Per wearable: its wearer's profile, the best tier of every period over, the premium charged against the
    premium without discounts, and summaries refused by reason."""
    if not provisioned.health:
        return []
    logs = settlement_logs(ctx, health.CONTRACT, ("SummaryRejected",), from_block)
    out = []
    for name, policy_id in provisioned.health.items():
        rejected = Counter(reason_label(int(e.args["reason"])) for e in logs if e.topic1 == policy_id)
        view = health.policy_of(ctx, policy_id)
        periods = [p for p in health.tiers(ctx, policy_id, view) if p.due]
        out.append(
            {
                "wearable": name,
                "policyId": str(policy_id),
                "holder": view.holder,
                "profile": provisioned.profiles.get(name, ""),
                "periodsOver": view.due_periods,
                "periods": view.periods,
                "tiers": [p.tier for p in periods],
                "premium": str(view.premium),
                "withoutDiscounts": str(view.base_rate * view.due_periods),
                "prepaidLeft": str(view.prepaid),
                "rejected": dict(rejected),
            }
        )
    return out
