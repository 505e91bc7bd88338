"""Scale-out (docs/RELIABILITY.md, item 20; ``--runslow``, about 40 s).

Three daemon processes, each with its own database and relayer key, share one MQTT 5 subscription
(``$share/<group>/...``). The broker hands each message to one of them; device
retries may land on another instance, which then relays the same signed event again — the contract's
``(device, seq)`` check makes the chain the global de-duplicator. Every event is settled exactly once.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from iotsettle.oracle.testing.devices import Publisher
from iotsettle.oracle.testing.wait import wait_for

from tests.kit.reliability import Fleet, daemon, fund_relayer, metrics, nonce_report, store_statuses, summary

METERS = 12
RETRIED = 6  # meters whose reading the device publishes a second time (no reply seen yet, say)


@pytest.mark.slow
def test_three_daemons_on_one_shared_subscription_settle_each_event_once(
    tmp_path: Path,
    deployment: Any,
    mosquitto: Any,
) -> None:
    fleet = Fleet(deployment, METERS)
    group = f"g{uuid.uuid4().hex[:6]}"
    keys = [fund_relayer(deployment) for _ in range(3)]
    processes = [
        daemon(tmp_path / f"oracle-{i}", deployment, mosquitto, key, IOTSETTLE_ORACLE_SHARED_GROUP=group)
        for i, key in enumerate(keys)
    ]
    publisher = Publisher(mosquitto.host, mosquitto.port, deployment.chain.chain_id)
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.wait_ready()
        items = fleet.readings(1, timestamp=fleet.started + 1)
        # copies in reverse order, so most land on another instance than the first copy (the broker deals the
        # messages of a shared subscription out in turn)
        publisher.publish_many(items + items[:RETRIED][::-1])
        publisher.collect(METERS + RETRIED, timeout=30)  # every copy answered by whichever instance got it
        ledger = fleet.wait_paid(40, every_event=True)

        def settled_everywhere() -> bool:
            return all(
                store_statuses(p.db)["pending"] + store_statuses(p.db)["claimed"] + store_statuses(p.db)["submitted"]
                == 0
                for p in processes
            )

        wait_for(settled_everywhere, 30, "every instance to finish its transactions")
        received = [int(metrics(p).get("iotsettle_oracle_received_total", 0)) for p in processes]
        stored = [sum(store_statuses(p.db).values()) for p in processes]
    finally:
        publisher.close()
        for process in processes:
            process.kill()
    reports = [nonce_report(p.db, deployment.chain.w3, key) for p, key in zip(processes, keys, strict=True)]

    assert sum(received) == METERS + RETRIED, f"each message went to exactly one instance: {received}"
    assert sum(1 for count in received if count) >= 2, f"the broker shared the load: {received}"
    assert ledger.clean and ledger.settled_logs == METERS, ledger
    assert all(r.gapless for r in reports), reports
    relayed_twice = sum(stored) - METERS  # retries that reached another instance: relayed again, refused on chain
    summary(
        "scale-out",
        instances=3,
        received=received,
        stored=stored,
        events=METERS,
        copies=METERS + RETRIED,
        relayed_twice=relayed_twice,
        settled_on_chain=ledger.settled_logs,
        txs=sum(len(r.nonces) for r in reports),
        lost=ledger.lost,
        double=ledger.double,
    )
