"""Gas per settled event, from receipts on the bench chain: one event per transaction vs batches of 10 and 100.

Readings: the same agreements are measured at every batch size, after one unmeasured settlement each, so every
figure is the steady state of an agreement (its storage already non-zero); the first settlement of an agreement is
reported apart. Deliveries: each escrow settles once, so each batch size gets escrows of its own (all first and
last settlements). Every item's device signature is checked by the contract (ecrecover) in every case.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from eth_account.signers.local import LocalAccount
from iotsettle.oracle.protocol import wire
from iotsettle.oracle.protocol.errors import IotSettleError

from bench.rawsend import Call, Encoder, RawSender, count_logs
from bench.stack import PROVIDER, BenchStack, Meter, Parcel, topic_of

log = logging.getLogger(__name__)

BATCHES = (1, 10, 100)
TX_BASE = 21_000


@dataclass(frozen=True)
class GasFigure:
    kind: str  # "reading" | "delivery" | "reading_first"
    batch: int
    events: int
    transactions: int
    gas_used: int
    calldata_gas: int
    breakdown: dict[str, int] = field(default_factory=dict)  # gas per event by where it goes (one traced tx)

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


def trace_breakdown(sender: RawSender, tx_hash: str, events: int, gas_used: int, data_gas: int) -> dict[str, int]:
    """Gas per event of one settlement transaction by where it goes, from the node's call trace
    (``debug_traceTransaction`` with the ``callTracer``): the ecrecover precompile calls, the calls into the
    DeviceRegistry (the key lookup, gas spent inside the callee), and what is left for the settling contract itself
    (storage reads and writes, hashing, the event, call access charges)."""
    trace = sender.rpc("debug_traceTransaction", [tx_hash, {"tracer": "callTracer"}])
    ecrecover = registry = 0
    for call in trace.get("calls", []):
        used = int(call["gasUsed"], 16)
        if call["to"].lower() == ECRECOVER:
            ecrecover += used
        else:
            registry += used
    out = {
        "21,000 transaction base": TX_BASE,
        "calldata": data_gas,
        "ecrecover (precompile)": ecrecover,
        "DeviceRegistry key lookup (inside the call)": registry,
    }
    out["settling contract itself (storage, hashing, event, call access)"] = gas_used - sum(out.values())
    return {label: round(value / events) for label, value in out.items()}


def calldata_gas(data: str) -> int:
    """EIP-2028 calldata cost: 16 gas per non-zero byte, 4 per zero byte."""
    raw = bytes.fromhex(data[2:])
    zeros = raw.count(0)
    return 16 * (len(raw) - zeros) + 4 * zeros


def _reading(meter: Meter) -> tuple[Any, ...]:
    msg, sig = meter.next_reading()
    return wire.SignedEvent("reading", meter.chain_id, meter.contract, meter.address, msg, sig).contract_tuple()


def _delivery(parcel: Parcel, timestamp: int) -> tuple[Any, ...]:
    msg, sig = parcel.delivery(timestamp)
    return wire.SignedEvent("delivery", parcel.chain_id, parcel.contract, parcel.address, msg, sig).contract_tuple()


def _send(
    sender: RawSender, calls: Sequence[Call], address: str, topic: str, expected: int, kind: str, batch: int
) -> GasFigure:
    receipts = sender.send_many(calls)
    settled = sum(count_logs(r, address, topic) for r in receipts)
    if settled != expected:
        raise IotSettleError(f"gas phase: {settled} of {expected} {kind}s settled at batch {batch}")
    breakdown: dict[str, int] = {}
    if kind != "reading_first" and receipts:
        first, data = receipts[-1], calls[-1].data
        items = count_logs(first, address, topic)
        try:
            breakdown = trace_breakdown(
                sender, first["transactionHash"], items, int(first["gasUsed"], 16), calldata_gas(data)
            )
        except (IotSettleError, KeyError, TypeError, ValueError) as exc:  # a node without debug_traceTransaction
            log.warning("no opcode breakdown for %s batch %d: %s", kind, batch, exc)
    return GasFigure(
        kind,
        batch,
        expected,
        len(receipts),
        sum(int(r["gasUsed"], 16) for r in receipts),
        sum(calldata_gas(c.data) for c in calls),
        breakdown,
    )


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def measure_gas(
    stack: BenchStack, relayer: LocalAccount, meters: Sequence[Meter], parcels: Sequence[Parcel]
) -> list[GasFigure]:
    """Settle readings of ``meters`` and deliveries of ``parcels`` (escrow groups by ``Parcel.seq`` 1, 2, 3 for
    batches 1, 10, 100) and return the gas figures; raises if any item was not settled."""
    sender = RawSender(stack.config.chain.rpc_url, stack.chain.chain_id, relayer)
    ops = stack.ctx(PROVIDER)  # only for the contract objects; the relayer sends
    billing_c, escrow_c = ops.contract("MeteredBilling"), ops.contract("DeliveryEscrow")
    billing_e, escrow_e = Encoder(billing_c), Encoder(escrow_c)
    settled_topic, confirmed_topic = topic_of(billing_c, "ReadingSettled"), topic_of(escrow_c, "DeliveryConfirmed")

    def reading_calls(batch: int) -> list[Call]:
        readings = [_reading(m) for m in meters]
        if batch == 1:
            return [billing_e.call("settleReading", r, gas=200_000) for r in readings]
        return [billing_e.call("settle", list(c), gas=60_000 * len(c) + 100_000) for c in _chunks(readings, batch)]

    figures = [_send(sender, reading_calls(100), billing_c.address, settled_topic, len(meters), "reading_first", 100)]
    for batch in BATCHES:
        figures.append(
            _send(sender, reading_calls(batch), billing_c.address, settled_topic, len(meters), "reading", batch)
        )

    now = int(time.time())
    for group, batch in enumerate(BATCHES, start=1):
        deliveries = [_delivery(p, now) for p in parcels if p.seq == group]
        if not deliveries:
            continue
        if batch == 1:
            calls = [escrow_e.call("confirmDelivery", d, gas=250_000) for d in deliveries]
        else:
            calls = [
                escrow_e.call("confirmDeliveries", list(c), gas=80_000 * len(c) + 100_000)
                for c in _chunks(deliveries, batch)
            ]
        figures.append(_send(sender, calls, escrow_c.address, confirmed_topic, len(deliveries), "delivery", batch))
    for f in figures:
        log.info(
            "gas %s batch %d: %d per event (%d events, %d txs)", f.kind, f.batch, f.per_event, f.events, f.transactions
        )
    return figures
