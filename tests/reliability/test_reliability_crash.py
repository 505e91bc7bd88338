"""Crash matrix (docs/RELIABILITY.md, item 11): the daemon process ends with status 137 — as kill -9 leaves it, no
clean-up of any kind — at each point where its durable state changes, then restarts with the same database and
MQTT client id. After the restart every published event is paid exactly once on chain, the store says so, and the
relayer's nonces have no gap.

The crash points are the daemon's ``IOTSETTLE_FAULT_POINT`` hooks (oracle/daemon/intake/pipeline.py, submitter.py,
tracker.py): ``before_store`` (received, not committed), ``after_store`` (committed, not acknowledged),
``after_nonce`` (nonce taken and transaction signed and stored, not broadcast), ``after_broadcast`` (the node has
the transaction, the store does not know), ``after_receipt`` (receipt read, nothing written). The default run
takes two of them; ``--runslow`` all five, each twice.

With two relayer keys (nonce lanes, ``[oracle] relayer_private_keys``) the daemon is stopped in the middle of sending
on both lanes: ``after_nonce@4`` / ``after_broadcast@4``, the fourth batch, when both lanes have transactions in
flight. After the restart nothing is lost or paid twice and each lane's stored next nonce equals its account's
transaction count on chain.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from iotsettle.oracle.daemon.store import EventStatus, Store
from iotsettle.oracle.daemon.txstore import TxStore
from iotsettle.oracle.testing.devices import Publisher
from iotsettle.oracle.testing.wait import wait_for

from tests.kit.reliability import Fleet, Ledger, daemon, fund_relayer, metrics, nonce_report, store_statuses, summary

METERS = 6
ALL_POINTS = ["before_store", "after_store", "after_nonce", "after_broadcast", "after_receipt"]
QUICK_POINTS = ["after_store", "after_broadcast"]
LANE_METERS = 16
LANE_POINTS = ["after_nonce@4", "after_broadcast@4"]


def restart_and_settle(process: Any, fleet: Fleet) -> tuple[Ledger, Counter[str]]:
    """Start the crashed daemon again on its database; the chain's ledger once every event is paid, and the store's
    statuses once nothing is in flight."""
    process.start().wait_ready()
    ledger = fleet.wait_paid(30, every_event=True)
    wait_for(
        lambda: sum(store_statuses(process.db)[s] for s in ("pending", "claimed", "submitted")) == 0,
        15,
        "nothing left in flight",
    )
    return ledger, store_statuses(process.db)


def assert_paid_once(point: str, ledger: Ledger, after: Counter[str], events: int) -> None:
    assert ledger.clean, f"{point}: {ledger}"
    assert ledger.settled_logs == events, f"{point}: one settled record per event, got {ledger.settled_logs}"
    assert after[EventStatus.SETTLED] + after[EventStatus.FINAL] == events, f"{point}: store says {dict(after)}"
    assert sum(after.values()) == events, f"{point}: each event stored once, store has {dict(after)}"


def crash_and_recover(point: str, tmp_path: Path, deployment: Any, mosquitto: Any) -> dict[str, Any]:
    fleet = Fleet(deployment, METERS)
    key = fund_relayer(deployment)
    process = daemon(tmp_path, deployment, mosquitto, key)
    publisher = Publisher(mosquitto.host, mosquitto.port, deployment.chain.chain_id)
    try:
        process.start(IOTSETTLE_FAULT_POINT=point).wait_ready()
        publisher.publish_many(fleet.readings(1))  # the broker has them all (PUBACK) before the crash
        code = process.wait(30)
        assert code == 137, f"the daemon did not stop at {point} (exit {code}):\n{process.log.read_text()[-2000:]}"
        before = store_statuses(process.db)
        ledger, after = restart_and_settle(process, fleet)
        redelivered = metrics(process).get("iotsettle_oracle_duplicates_total", 0.0)
    finally:
        publisher.close()
        process.kill()
    nonces = nonce_report(process.db, deployment.chain.w3, key)

    assert_paid_once(point, ledger, after, METERS)
    assert nonces.gapless, f"{point}: nonces {nonces}"
    return {
        "point": point,
        "stored_at_crash": sum(before.values()),
        "redelivered": int(redelivered),
        "txs": len(nonces.nonces),
        "events": METERS,
        "lost": ledger.lost + ledger.unpaid_events,
        "double": ledger.double,
    }


@pytest.mark.parametrize("point", QUICK_POINTS)
def test_a_crash_at_each_point_loses_nothing_and_pays_once(
    point: str,
    tmp_path: Path,
    deployment: Any,
    mosquitto: Any,
) -> None:
    figures = crash_and_recover(point, tmp_path, deployment, mosquitto)
    summary("crash", **figures)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # ten crash-and-recover rounds, about 30 s each on a busy machine
def test_the_full_crash_matrix_twice(tmp_path: Path, deployment: Any, mosquitto: Any) -> None:
    rows = [
        crash_and_recover(point, tmp_path / f"{point}-{round_}", deployment, mosquitto)
        for round_ in range(2)
        for point in ALL_POINTS
    ]
    for row in rows:
        summary("crash", **row)
    summary(
        "crash-matrix",
        faults=len(rows),
        events=sum(r["events"] for r in rows),
        lost=sum(r["lost"] for r in rows),
        double=sum(r["double"] for r in rows),
    )


def _lane_nonces(db: Any, chain_id: int, addresses: list[str]) -> dict[str, tuple[list[int], int | None]]:
    """Per lane: the nonces of its transactions that were not lost, and its stored next nonce."""
    store = Store.open(db)
    try:
        txstore = TxStore(store)
        txs = txstore.all()
        return {
            address: (
                sorted(tx.nonce for tx in txs if tx.sender == address and tx.status != "lost"),
                txstore.next_nonce(chain_id, address),
            )
            for address in addresses
        }
    finally:
        store.close()


@pytest.mark.parametrize("point", LANE_POINTS)
def test_a_crash_while_sending_on_two_lanes_loses_nothing_and_leaves_no_gap_on_either(
    point: str, tmp_path: Path, deployment: Any, mosquitto: Any
) -> None:
    fleet = Fleet(deployment, LANE_METERS)
    keys = [fund_relayer(deployment), fund_relayer(deployment)]
    addresses = [Account.from_key(key).address for key in keys]
    process = daemon(
        tmp_path,
        deployment,
        mosquitto,
        keys[0],
        IOTSETTLE_ORACLE_RELAYER_PRIVATE_KEYS=keys[1],
        IOTSETTLE_ORACLE_BATCH_MAX_EVENTS="2",  # eight batches: the crash comes with both lanes busy
    )
    publisher = Publisher(mosquitto.host, mosquitto.port, deployment.chain.chain_id)
    w3 = deployment.chain.w3
    try:
        process.start(IOTSETTLE_FAULT_POINT=point).wait_ready()
        publisher.publish_many(fleet.readings(1))
        code = process.wait(30)
        assert code == 137, f"the daemon did not stop at {point} (exit {code}):\n{process.log.read_text()[-2000:]}"
        at_crash = _lane_nonces(process.db, deployment.chain.chain_id, addresses)
        assert all(nonces for nonces, _ in at_crash.values()), f"{point}: both lanes had sent: {at_crash}"
        ledger, after = restart_and_settle(process, fleet)
    finally:
        publisher.close()
        process.kill()
    lanes = _lane_nonces(process.db, deployment.chain.chain_id, addresses)

    assert_paid_once(point, ledger, after, LANE_METERS)
    for address, (nonces, next_nonce) in lanes.items():
        count = w3.eth.get_transaction_count(address)
        assert nonces == list(range(count)) and next_nonce == count, f"{point}: lane {address}: {nonces}, {next_nonce}"
    summary(
        "crash-lanes",
        point=point,
        lanes=len(lanes),
        txs="+".join(str(len(nonces)) for nonces, _ in lanes.values()),
        events=LANE_METERS,
        lost=ledger.lost + ledger.unpaid_events,
        double=ledger.double,
    )
