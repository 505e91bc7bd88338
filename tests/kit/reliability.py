"""Shared by the reliability tests (tests/reliability/, docs/RELIABILITY.md): metered agreements on the
deployed contracts, oracle daemons as real processes with a relayer account of their own, and the ledger that
counts, from the chain alone, what was lost and what was paid twice.

Money is counted on chain: the records (agreementId, seq, amount) of ``ReadingsSettled`` batch logs and
``earningsOf(agreementId)``.
A meter signs its cumulative register, so an agreement is paid in full when its earnings equal
``(last register − start) × price``; less is a loss, more (or a second settled record for one
``(agreement, seq)``) is a double payment.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from iotsettle.oracle.daemon.store import EventStatus, Store
from iotsettle.oracle.daemon.txstore import TxStatus, TxStore
from iotsettle.oracle.protocol import settled
from iotsettle.oracle.testing.accounts import ETHER, funded_account
from iotsettle.oracle.testing.wait import wait_for
from web3 import Web3

from tests.kit.daemon import DaemonProcess
from tests.kit.settlement import PRICE, START, Meter, Scenario

PAID = (EventStatus.SETTLED, EventStatus.FINAL)


def summary(item: str, **figures: Any) -> str:
    """The one line each reliability test prints (``pytest -s``), quoted by docs/RELIABILITY.md."""
    line = f"RELIABILITY {item}: " + " ".join(f"{k}={v}" for k, v in figures.items())
    print(line, flush=True)
    return line


@dataclass(frozen=True)
class Ledger:
    """What the chain says about a fleet's agreements."""

    agreements: int
    events_sent: int  # distinct (agreement, seq) readings published
    settled_logs: int  # ReadingsSettled records of these agreements
    lost: int  # agreements paid less than their newest published reading is worth
    double: int  # agreements paid more, plus (agreement, seq) settled more than once
    unpaid_events: int  # events that must be paid by their own log (``every_event``) and have none

    @property
    def clean(self) -> bool:
        return self.lost == 0 and self.double == 0 and self.unpaid_events == 0


class Fleet:
    """``count`` meters, each registered and with an accepted agreement; readings to publish; the ledger."""

    def __init__(self, deployment: Any, count: int) -> None:
        self.scenario = Scenario(deployment)
        self.w3: Web3 = deployment.chain.w3
        self.from_block = self.w3.eth.block_number
        self.meters: list[Meter] = [self.scenario.meter() for _ in range(count)]
        self.sent: dict[tuple[int, int], int] = {}  # (agreement, seq) → register value
        self.started = self.timestamp()  # after every acceptance: readings may carry any time from here on

    def timestamp(self) -> int:
        return max(int(time.time()), self.scenario.now())

    def readings(
        self, seq: int, advance: int = 7, meters: list[Meter] | None = None, timestamp: int | None = None
    ) -> list[tuple[str, bytes]]:
        """One signed reading per meter with sequence number ``seq``; the register grows by ``advance`` per seq.

        The timestamp defaults to now; callers sending several readings a second pass one that rises with
        ``seq`` (the oracle's rate rule divides the register's rise by the time between readings)."""
        ts = timestamp if timestamp is not None else self.timestamp()
        items = []
        for index, meter in enumerate(meters if meters is not None else self.meters):
            value = START + seq * advance + index
            self.sent[(meter.agreement, seq)] = value
            items.append(
                (meter.device.topic, meter.device.reading(seq, value, timestamp=ts, agreement=meter.agreement))
            )
        return items

    def ledger(self, every_event: bool = False) -> Ledger:
        """Count from the chain. ``every_event``: each published reading must have its own settled record (true
        when a meter's readings are never batched together, e.g. one reading per meter)."""
        logs = self.scenario.billing.events.ReadingsSettled().get_logs(from_block=self.from_block)
        ours = {m.agreement for m in self.meters}
        per_event = Counter(
            (r.agreement_id, r.seq)
            for log in logs
            for r in settled.decode_records(bytes(log["args"]["records"]))
            if r.agreement_id in ours
        )
        lost = double = 0
        for meter in self.meters:
            values = [v for (agreement, _), v in self.sent.items() if agreement == meter.agreement]
            if not values:
                continue
            expected = (max(values) - START) * PRICE
            earned = self.scenario.earnings(meter)
            lost += earned < expected
            double += earned > expected
        double += sum(1 for count in per_event.values() if count > 1)
        unpaid = sum(1 for key in self.sent if per_event.get(key, 0) == 0) if every_event else 0
        return Ledger(len(self.meters), len(self.sent), sum(per_event.values()), lost, double, unpaid)

    def wait_paid(self, timeout: float, every_event: bool = False) -> Ledger:
        def paid() -> Ledger | None:
            ledger = self.ledger(every_event)
            return ledger if ledger.lost == 0 and ledger.unpaid_events == 0 else None

        try:
            return wait_for(paid, timeout, "every agreement paid in full")  # type: ignore[no-any-return]
        except TimeoutError:
            raise AssertionError(f"not paid within {timeout:.0f} s: {self.ledger(every_event)}") from None


def fund_relayer(deployment: Any, ether: int = 10) -> str:
    """A new relayer account with ``ether`` ETH, so each daemon's nonces are its own; returns its key (0x-hex)."""
    return "0x" + bytes(funded_account(deployment.chain, ether * ETHER).key).hex()


def daemon(tmp_path: Path, deployment: Any, broker: Any, relayer_key: str, **env: str) -> DaemonProcess:
    """A daemon process with its own folder (database, log) and relayer; not started."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    settings = {
        "IOTSETTLE_CHAIN_PRIVATE_KEY": relayer_key,
        "IOTSETTLE_ORACLE_BATCH_MAX_WAIT": "0.1",
        "IOTSETTLE_ORACLE_SETTLEMENT_WINDOW": "0",
        "IOTSETTLE_ORACLE_QUARANTINE_THRESHOLD": "0",
        **env,
    }
    return DaemonProcess(tmp_path, deployment, broker, **settings)


@dataclass(frozen=True)
class NonceReport:
    nonces: list[int]  # nonces of the daemon's transactions that were not lost, ascending
    chain_count: int  # eth_getTransactionCount of the relayer
    first: int  # the relayer's nonce before the daemon started

    @property
    def gapless(self) -> bool:
        return self.nonces == list(
            range(self.first, self.first + len(self.nonces))
        ) and self.chain_count == self.first + len(self.nonces)


def nonce_report(db: Path, w3: Web3, relayer_key: str, first: int = 0) -> NonceReport:
    """The relayer's transactions as the daemon stored them, against the chain's transaction count (a relayer
    from ``fund_relayer`` starts at nonce 0)."""
    address = Account.from_key(relayer_key).address
    store = Store.open(db)
    try:
        txs = TxStore(store).all()
    finally:
        store.close()
    nonces = sorted(tx.nonce for tx in txs if tx.status is not TxStatus.LOST)
    return NonceReport(nonces, w3.eth.get_transaction_count(address), first)


def store_statuses(db: Path) -> Counter[str]:
    store = Store.open(db)
    try:
        return Counter(dict(store.backlog().items()))
    finally:
        store.close()


def metrics(process: DaemonProcess) -> dict[str, float]:
    """Every sample of the daemon's /metrics, keyed ``name`` or ``name{labels}`` as exposed."""
    answer = process.get("/metrics")
    if answer is None:
        return {}
    samples = {}
    for line in answer[1].decode().splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) ([-+0-9.eEinfNa]+)$", line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


def labelled(samples: dict[str, float], name: str) -> dict[str, float]:
    """``{label value: sample}`` of a metric with one label, e.g. rejected_total by reason."""
    out = {}
    for key, value in samples.items():
        match = re.match(rf"^{name}\{{\w+=\"([^\"]*)\"\}}$", key)
        if match:
            out[match.group(1)] = value
    return out
