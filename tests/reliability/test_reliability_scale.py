"""Scale-out (docs/SCALING.md, docs/RELIABILITY.md item 20; ``--runslow``, a few minutes).

One burst — 40 meters publishing 25 cumulative readings each at once — settled first by one daemon, then by three
daemon processes of one route group (``[oracle] route_group``), each with its own database and relayer key, one of
them killed (SIGKILL) in the middle of the burst and restarted. Each instance stores and relays only the readings of
the devices it owns (the rendezvous hash of the device over the instances online), so the three spend about the gas
of one; the chain refuses what two instances relay for the same agreement (``Replayed``), so money is paid once
whatever the race. The test prints the gas ratio (three ÷ one), the relays refused on chain, the messages each
instance received against those it stored, and the CPU each spent.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from iotsettle.oracle.testing.devices import Publisher
from iotsettle.oracle.testing.wait import wait_for
from web3 import Web3

from tests.kit.daemon import DaemonProcess
from tests.kit.reliability import Fleet, daemon, fund_relayer, metrics, nonce_report, store_statuses, summary

METERS = 40
ROUNDS = 25
INSTANCES = 3
#: seconds of readings per agreement collapsed to the newest (production: 900); longer than the burst, so that one
#: daemon relays each agreement's newest reading about once and the gas compares relays, not batch-cut timing
WINDOW = "5"
MAX_RATIO = 1.15  # the gas three instances may spend on the burst, relative to one


def gas_spent(w3: Web3, from_block: int, keys: list[str]) -> tuple[int, int]:
    """(gas used, transactions) of the relayers of ``keys`` in the blocks from ``from_block`` on."""
    senders = {Account.from_key(key).address for key in keys}
    gas = count = 0
    for number in range(from_block, w3.eth.block_number + 1):
        for tx in w3.eth.get_block(number, full_transactions=True)["transactions"]:
            if tx["from"] in senders:  # type: ignore[index]
                gas += int(w3.eth.get_transaction_receipt(tx["hash"])["gasUsed"])  # type: ignore[index]
                count += 1
    return gas, count


def refused_relays(fleet: Fleet) -> int:
    """ReadingRejected logs of the fleet's agreements: relays the chain refused (here: ``Replayed``)."""
    ours = {m.agreement for m in fleet.meters}
    logs = fleet.scenario.billing.events.ReadingRejected().get_logs(from_block=fleet.from_block)
    return sum(1 for log in logs if int(log["args"]["agreementId"]) in ours)


def cpu_seconds(process: DaemonProcess) -> float:
    """User + system CPU time of a running daemon process so far."""
    assert process.proc is not None
    fields = Path(f"/proc/{process.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime, stime in clock ticks (100 a second on Linux)


def all_see(processes: list[DaemonProcess], count: int) -> bool:
    """Whether every instance's /health says ``count`` instances of its route group are online."""
    for process in processes:
        report = process.health()
        detail = report["checks"]["routing"]["detail"] if report else ""
        if f": {count} online" not in detail:
            return False
    return True


def settle_burst(
    processes: list[DaemonProcess],
    fleet: Fleet,
    publisher: Publisher,
    in_the_middle: Callable[[], None] | None = None,
    after: Callable[[], None] | None = None,
) -> None:
    """Publish the burst (``in_the_middle`` runs after half of the rounds, ``after`` after the last), wait until
    every agreement is paid and every instance has finished its transactions."""
    rounds = [fleet.readings(seq, timestamp=fleet.started + seq) for seq in range(1, ROUNDS + 1)]
    half = ROUNDS // 2
    publisher.publish_many([item for round_ in rounds[:half] for item in round_])
    if in_the_middle is not None:
        in_the_middle()
    publisher.publish_many([item for round_ in rounds[half:] for item in round_])
    if after is not None:
        after()
    ledger = fleet.wait_paid(180)
    assert ledger.clean, ledger

    def settled_everywhere() -> bool:
        return all(sum(store_statuses(p.db)[s] for s in ("pending", "claimed", "submitted")) == 0 for p in processes)

    wait_for(settled_everywhere, 120, "every instance to finish its transactions")


@pytest.mark.slow
def test_three_daemons_of_one_route_group_spend_the_gas_of_one(
    tmp_path: Path,
    deployment: Any,
    mosquitto: Any,
) -> None:
    w3 = deployment.chain.w3
    publisher = Publisher(mosquitto.host, mosquitto.port, deployment.chain.chain_id)
    try:
        # one daemon: the baseline
        fleet = Fleet(deployment, METERS)
        key = fund_relayer(deployment)
        single = daemon(tmp_path / "single", deployment, mosquitto, key, IOTSETTLE_ORACLE_SETTLEMENT_WINDOW=WINDOW)
        single.start().wait_ready()
        try:
            from_block = w3.eth.block_number + 1
            single_cpu = cpu_seconds(single)
            settle_burst([single], fleet, publisher)
            single_cpu = cpu_seconds(single) - single_cpu
            single_gas, single_txs = gas_spent(w3, from_block, [key])
            single_refused = refused_relays(fleet)
            single_relays = fleet.ledger().settled_logs
        finally:
            single.kill()

        # three daemons of one route group; the second is killed in the middle of the burst and restarted
        fleet = Fleet(deployment, METERS)
        group = f"r{uuid.uuid4().hex[:6]}"
        keys = [fund_relayer(deployment) for _ in range(INSTANCES)]
        processes = [
            daemon(
                tmp_path / f"oracle-{i}",
                deployment,
                mosquitto,
                key,
                IOTSETTLE_ORACLE_SETTLEMENT_WINDOW=WINDOW,
                IOTSETTLE_ORACLE_ROUTE_GROUP=group,
            )
            for i, key in enumerate(keys)
        ]
        victim = processes[1]
        killed_cpu: list[float] = []

        def kill() -> None:
            killed_cpu.append(cpu_seconds(victim))
            victim.kill()  # SIGKILL: the broker publishes its last will ("offline"), the others take its devices

        def restart() -> None:
            victim.start().wait_ready()
            killed_cpu.append(cpu_seconds(victim))

        try:
            for process in processes:
                process.start()
            for process in processes:
                process.wait_ready()
            wait_for(lambda: all_see(processes, INSTANCES), 30, "every instance to see the three online")
            from_block = w3.eth.block_number + 1
            cpu = [cpu_seconds(p) for p in processes]
            settle_burst(processes, fleet, publisher, kill, restart)
            cpu = [cpu_seconds(p) - before for p, before in zip(processes, cpu, strict=True)]
            cpu[1] += killed_cpu[0] - killed_cpu[1]  # the victim: before the kill + since its restart was ready
            gas, txs = gas_spent(w3, from_block, keys)
            refused = refused_relays(fleet)
            wait_for(lambda: all_see(processes, INSTANCES), 30, "the restarted instance back in every view")
            samples = [metrics(p) for p in processes]
            stored = [sum(store_statuses(p.db).values()) for p in processes]
        finally:
            for process in processes:
                process.kill()
    finally:
        publisher.close()
    ledger = fleet.ledger()
    reports = [nonce_report(p.db, w3, k) for p, k in zip(processes, keys, strict=True)]
    ratio = gas / single_gas
    received = [int(s.get("iotsettle_oracle_received_total", 0)) for s in samples]  # the restarted one: since restart
    routed_away = [int(s.get("iotsettle_oracle_routed_away_total", 0)) for s in samples]
    summary(
        "scale-out",
        meters=METERS,
        readings=METERS * ROUNDS,
        instances=INSTANCES,
        killed=1,
        gas_one=single_gas,
        txs_one=single_txs,
        relays_one=single_relays,
        refused_one=single_refused,
        gas_three=gas,
        txs_three=txs,
        relays_three=ledger.settled_logs,
        refused_three=refused,
        gas_ratio=f"{ratio:.2f}",
        received=received,
        routed_away=routed_away,
        stored=stored,
        cpu_one_s=f"{single_cpu:.2f}",
        cpu_three_s="/".join(f"{c:.2f}" for c in cpu),
        lost=ledger.lost,
        double=ledger.double,
    )
    assert ledger.clean, ledger
    assert all(r.gapless for r in reports), reports
    assert sum(1 for count in stored if count) >= 2, f"the instances shared the fleet: {stored}"
    assert ratio <= MAX_RATIO, f"three instances spent {ratio:.2f}× the gas of one ({gas} against {single_gas})"
