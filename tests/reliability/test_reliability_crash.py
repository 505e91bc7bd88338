"""Crash matrix (docs/RELIABILITY.md, item 11): the daemon process ends with status 137 — as kill -9 leaves it, no
clean-up of any kind — at each point where its durable state changes, then restarts with the same database and
MQTT client id. After the restart every published event is paid exactly once on chain, the store says so, and the
relayer's nonces have no gap.

The crash points are the daemon's ``IOTSETTLE_FAULT_POINT`` hooks (oracle/daemon/intake/pipeline.py, submitter.py,
tracker.py): ``before_store`` (received, not committed), ``after_store`` (committed, not acknowledged),
``after_nonce`` (nonce taken and transaction signed and stored, not broadcast), ``after_broadcast`` (the node has
the transaction, the store does not know), ``after_receipt`` (receipt read, nothing written). The default run
takes two of them; ``--runslow`` all five, each twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from iotsettle.oracle.daemon.store import EventStatus
from iotsettle.oracle.testing.devices import Publisher
from iotsettle.oracle.testing.wait import wait_for

from tests.kit.reliability import Fleet, daemon, fund_relayer, metrics, nonce_report, store_statuses, summary

METERS = 6
ALL_POINTS = ["before_store", "after_store", "after_nonce", "after_broadcast", "after_receipt"]
QUICK_POINTS = ["after_store", "after_broadcast"]


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

        process.start().wait_ready()
        ledger = fleet.wait_paid(30, every_event=True)
        wait_for(
            lambda: (
                store_statuses(process.db)["pending"]
                + store_statuses(process.db)["claimed"]
                + store_statuses(process.db)["submitted"]
                == 0
            ),
            15,
            "nothing left in flight",
        )
        after = store_statuses(process.db)
        redelivered = metrics(process).get("iotsettle_oracle_duplicates_total", 0.0)
    finally:
        publisher.close()
        process.kill()
    nonces = nonce_report(process.db, deployment.chain.w3, key)

    assert ledger.clean, f"{point}: {ledger}"
    assert ledger.settled_logs == METERS, f"{point}: one settled record per event, got {ledger.settled_logs}"
    assert after[EventStatus.SETTLED] + after[EventStatus.FINAL] == METERS, f"{point}: store says {dict(after)}"
    assert sum(after.values()) == METERS, f"{point}: each event stored once, store has {dict(after)}"
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
