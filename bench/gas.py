"""Gas per settled event, from receipts on the bench chain, for every event kind: meter readings (MeteredBilling),
delivery confirmations (DeliveryEscrow), telematics reports (MotorInsurance) and weather observations
(CropInsurance), one event per transaction vs batches of 10 and 100.

Every transaction is what the oracle daemon sends: the kind's batch function, its calldata built by the daemon's own
encoder (``iotsettle.oracle.daemon.calldata.KindSpec``) from the stored form of each signed event, so a change of the
batch encoding is measured as soon as the daemon uses it. A lone event goes in a batch of one. Every item's device
signature is checked by the contract (ecrecover) in every case, and every item's settled log is checked in the
receipts (``decode_outcomes``, as the daemon reads them): a run stops if any item was not settled.

Readings, telematics reports and weather observations: the same agreements / policies / stations are measured at
every batch size, after one unmeasured settlement each, so every figure is the steady state of a target (its storage
already non-zero; a station already seen in its open season); the first settlement is reported apart
(``first_settlement``). Deliveries: each escrow settles once, so each batch size gets escrows of its own (all first
and last settlements).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from eth_account.signers.local import LocalAccount
from iotsettle.oracle.daemon.calldata import KindSpec, decode_outcomes
from iotsettle.oracle.daemon.settler import terms_reader
from iotsettle.oracle.daemon.store import EventStatus, StoredEvent, event_record
from iotsettle.oracle.protocol import wire
from iotsettle.oracle.protocol.errors import IotSettleError
from iotsettle.oracle.protocol.kinds import KINDS

from bench.rawsend import Call, RawSender
from bench.stack import BenchStack, Meter, Parcel, Station, Vehicle

log = logging.getLogger(__name__)

BATCHES = (1, 10, 100)
TX_BASE = 21_000
#: the event kinds in the order they are measured and shown
GAS_KINDS = ("reading", "delivery", "telematics", "weather")
#: gas limit per item of a batch, generous (a limit that is too low would revert the whole batch, not skew a figure)
GAS_PER_ITEM = 120_000


@dataclass(frozen=True)
class GasFigure:
    kind: str  # one of GAS_KINDS
    batch: int
    events: int
    transactions: int
    gas_used: int
    calldata_gas: int
    breakdown: dict[str, int] = field(default_factory=dict)  # gas per event by where it goes (one traced tx)
    first: bool = False  # the first settlement of each target (agreement, policy, station), not the steady state

    @property
    def per_event(self) -> int:
        return round(self.gas_used / self.events)

    @property
    def calldata_per_event(self) -> int:
        return round(self.calldata_gas / self.events)

    @property
    def execution_per_event(self) -> int:
        """What is left per event once the 21,000 base and the calldata are taken out."""
        return round((self.gas_used - TX_BASE * self.transactions - self.calldata_gas) / self.events)

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "per_event": self.per_event,
            "calldata_per_event": self.calldata_per_event,
            "base_per_event": round(TX_BASE * self.transactions / self.events),
            "execution_per_event": self.execution_per_event,
        }


ECRECOVER = "0x" + "00" * 19 + "01"


def trace_breakdown(
    sender: RawSender, tx_hash: str, events: int, gas_used: int, data_gas: int, registry: str
) -> dict[str, int]:
    """Gas per event of one settlement transaction by where it goes, from the node's call trace
    (``debug_traceTransaction`` with the ``callTracer``): the ecrecover precompile calls, the calls into the
    DeviceRegistry at ``registry`` (the key lookup, gas spent inside the callee), calls into any other contract
    (a token, say), and what is left for the settling contract itself (storage reads and writes, hashing, the
    event, call access charges)."""
    trace = sender.rpc("debug_traceTransaction", [tx_hash, {"tracer": "callTracer"}])
    spent = {"ecrecover": 0, "registry": 0, "other": 0}
    for call in trace.get("calls", []):
        to = call["to"].lower()
        where = "ecrecover" if to == ECRECOVER else "registry" if to == registry.lower() else "other"
        spent[where] += int(call["gasUsed"], 16)
    out = {
        "21,000 transaction base": TX_BASE,
        "calldata": data_gas,
        "ecrecover (precompile)": spent["ecrecover"],
        "DeviceRegistry key lookup (inside the call)": spent["registry"],
        "other contracts called (inside the calls)": spent["other"],
    }
    out["settling contract itself (storage, hashing, event, call access)"] = gas_used - sum(out.values())
    return {label: round(value / events) for label, value in out.items()}


def calldata_gas(data: str) -> int:
    """EIP-2028 calldata cost: 16 gas per non-zero byte, 4 per zero byte."""
    raw = bytes.fromhex(data[2:])
    zeros = raw.count(0)
    return 16 * (len(raw) - zeros) + 4 * zeros


def stored(event: wire.SignedEvent) -> StoredEvent:
    """The stored form of a signed event, as the daemon's settlement half reads it back from its store."""
    record = event_record(event, event.device, event.device, 0.0)
    values = {f.name: getattr(record, f.name) for f in fields(record)}
    return StoredEvent(
        **values,
        id=0,
        status=EventStatus.CLAIMED,
        tx_key=None,
        block=None,
        tx_hash=None,
        settled_at=None,
        final_at=None,
        reason=None,
    )


def kind_spec(stack: BenchStack, kind: str) -> KindSpec:
    """The daemon's encoder and outcome reader for ``kind`` on the bench deployment."""
    contract = stack.ctx_contract(KINDS[kind].contract)
    terms_of = terms_reader(stack.w3, contract.address, contract.abi, kind)
    return KindSpec.from_abi(kind, contract.address, contract.abi, terms_of)


def batch_calls(spec: KindSpec, events: Sequence[wire.SignedEvent], batch: int) -> list[Call]:
    """``events`` in batch transactions of ``batch`` items each, encoded as the daemon encodes them."""
    items = [spec.item(stored(e)) for e in events]
    return [
        Call(spec.contract, "0x" + spec.calldata(chunk).hex(), GAS_PER_ITEM * len(chunk) + 100_000)
        for chunk in (items[i : i + batch] for i in range(0, len(items), batch))
    ]


def _send(
    sender: RawSender,
    spec: KindSpec,
    events: Sequence[wire.SignedEvent],
    batch: int,
    registry: str,
    first: bool = False,
) -> GasFigure:
    calls = batch_calls(spec, events, batch)
    receipts = sender.send_many(calls)
    outcomes = [o for r in receipts for o in decode_outcomes(spec, r["logs"])]
    wanted = sorted((e.target_id, e.seq) for e in events)
    settled = sorted((o.target_id, o.seq) for o in outcomes if o.settled)
    if settled != wanted:
        rejected = [o for o in outcomes if not o.settled]
        raise IotSettleError(
            f"gas phase: {len(settled)} of {len(wanted)} {spec.kind} events settled at batch {batch}"
            + (f" (first rejection: reason {rejected[0].reason})" if rejected else "")
        )
    breakdown: dict[str, int] = {}
    if not first and receipts:
        last, data = receipts[-1], calls[-1].data
        items = sum(1 for o in decode_outcomes(spec, last["logs"]) if o.settled)
        try:
            breakdown = trace_breakdown(
                sender, last["transactionHash"], items, int(last["gasUsed"], 16), calldata_gas(data), registry
            )
        except (IotSettleError, KeyError, TypeError, ValueError) as exc:  # a node without debug_traceTransaction
            log.warning("no breakdown for %s batch %d: %s", spec.kind, batch, exc)
    return GasFigure(
        spec.kind,
        batch,
        len(events),
        len(receipts),
        sum(int(r["gasUsed"], 16) for r in receipts),
        sum(calldata_gas(c.data) for c in calls),
        breakdown,
        first,
    )


def _steady(
    sender: RawSender, spec: KindSpec, next_events: Callable[[], list[wire.SignedEvent]], registry: str
) -> list[GasFigure]:
    """A first round (reported apart as the first settlement), then one steady-state round per batch size."""
    figures = [_send(sender, spec, next_events(), 100, registry, first=True)]
    figures += [_send(sender, spec, next_events(), batch, registry) for batch in BATCHES]
    return figures


def _reading(meter: Meter) -> wire.SignedEvent:
    msg, sig = meter.next_reading()
    return wire.SignedEvent("reading", meter.chain_id, meter.contract, meter.address, msg, sig)


def _delivery(parcel: Parcel, timestamp: int) -> wire.SignedEvent:
    msg, sig = parcel.delivery(timestamp)
    return wire.SignedEvent("delivery", parcel.chain_id, parcel.contract, parcel.address, msg, sig)


def measure_gas(
    stack: BenchStack,
    relayer: LocalAccount,
    meters: Sequence[Meter],
    parcels: Sequence[Parcel],
    vehicles: Sequence[Vehicle] = (),
    stations: Sequence[Station] = (),
) -> list[GasFigure]:
    """Settle readings of ``meters``, deliveries of ``parcels`` (escrow groups by ``Parcel.seq`` 1, 2, 3 for
    batches 1, 10, 100), telematics reports of ``vehicles`` and observations of ``stations``, and return the gas
    figures (first settlements with ``first``); raises if any item was not settled. A kind with no devices is
    skipped."""
    sender = RawSender(stack.config.chain.rpc_url, stack.chain.chain_id, relayer)
    registry = stack.address("DeviceRegistry")
    figures: list[GasFigure] = []
    if meters:
        figures += _steady(sender, kind_spec(stack, "reading"), lambda: [_reading(m) for m in meters], registry)
    if parcels:
        spec = kind_spec(stack, "delivery")
        now = stack.chain_now()
        for group, batch in enumerate(BATCHES, start=1):
            deliveries = [_delivery(p, now) for p in parcels if p.seq == group]
            if deliveries:
                figures.append(_send(sender, spec, deliveries, batch, registry))
    if vehicles:
        figures += _steady(
            sender, kind_spec(stack, "telematics"), lambda: [v.next_report() for v in vehicles], registry
        )
    if stations:
        figures += _steady(
            sender, kind_spec(stack, "weather"), lambda: [s.next_observation() for s in stations], registry
        )
    for f in figures:
        log.info(
            "gas %s%s batch %d: %d per event (%d events, %d txs)",
            f.kind,
            " (first)" if f.first else "",
            f.batch,
            f.per_event,
            f.events,
            f.transactions,
        )
    return figures
