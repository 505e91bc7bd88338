"""Soak (docs/RELIABILITY.md, item 19; ``--runslow`` or ``scripts/soak``): many meters publish at a steady rate for
minutes into one daemon process, which settles everything on the test anvil. Every ``SAMPLE_EVERY`` seconds the
test reads the daemon's resident memory, open file descriptors and threads from /proc, and its backlog from
/metrics, and prints them. They must stay flat (after a warm-up), the backlog bounded, and at the end every
agreement is paid in full with nothing paid twice.

Size: ``IOTSETTLE_SOAK_SECONDS`` (120), ``IOTSETTLE_SOAK_DEVICES`` (20), ``IOTSETTLE_SOAK_RATE`` events/s (200).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

import pytest
from iotsettle.oracle.testing.devices import Publisher
from iotsettle.oracle.testing.wait import wait_for

from tests.kit.daemon import DaemonProcess
from tests.kit.reliability import Fleet, daemon, fund_relayer, labelled, metrics, nonce_report, store_statuses, summary

SECONDS = float(os.environ.get("IOTSETTLE_SOAK_SECONDS", "120"))
DEVICES = int(os.environ.get("IOTSETTLE_SOAK_DEVICES", "20"))
RATE = float(os.environ.get("IOTSETTLE_SOAK_RATE", "200"))
SAMPLE_EVERY = 5.0
TICK = 0.1  # s between publish bursts


@dataclass(frozen=True)
class Sample:
    at: float
    rss_mib: float
    fds: int
    threads: int
    backlog: int  # stored, not yet mined (pending + claimed + submitted)
    intake_queue: int
    published: int


def _proc_status(pid: int) -> tuple[float, int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    rss_kib = int(fields["VmRSS"].split()[0])
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"])


def _sample(process: DaemonProcess, started: float, published: int) -> Sample:
    assert process.proc is not None
    rss, fds, threads = _proc_status(process.proc.pid)
    samples = metrics(process)
    backlog = labelled(samples, "iotsettle_oracle_backlog")
    in_flight = int(backlog.get("pending", 0) + backlog.get("claimed", 0) + backlog.get("submitted", 0))
    return Sample(
        time.monotonic() - started,
        rss,
        fds,
        threads,
        in_flight,
        int(samples.get("iotsettle_oracle_intake_queue", 0)),
        published,
    )


@pytest.mark.slow
@pytest.mark.timeout(int(SECONDS) + 900)
def test_a_steady_load_for_minutes_keeps_memory_fds_threads_flat(
    tmp_path: Path,
    deployment: Any,
    mosquitto: Any,
) -> None:
    fleet = Fleet(deployment, DEVICES)
    key = fund_relayer(deployment, ether=100)
    # the soak measures resources, not the fraud rules: many readings per meter and second are fine here
    process = daemon(tmp_path, deployment, mosquitto, key, IOTSETTLE_ORACLE_MAX_RATE_METER="0")
    publisher = Publisher(mosquitto.host, mosquitto.port, deployment.chain.chain_id)
    stop = threading.Event()
    published = [0]
    errors: list[BaseException] = []

    def publish_steadily() -> None:
        seq = 0
        per_tick = RATE * TICK
        owed = 0.0
        next_tick = time.monotonic()
        try:
            while not stop.is_set():
                owed += per_tick
                batch: list[tuple[str, bytes]] = []
                now = max(fleet.started, int(time.time()))
                while owed >= 1:
                    if published[0] % DEVICES == 0:
                        seq += 1
                    index = published[0] % DEVICES
                    batch += fleet.readings(seq, advance=3, meters=[fleet.meters[index]], timestamp=now)
                    published[0] += 1
                    owed -= 1
                publisher.publish_many(batch)
                next_tick += TICK
                stop.wait(max(0.0, next_tick - time.monotonic()))
        except BaseException as exc:
            errors.append(exc)

    samples: list[Sample] = []
    try:
        process.start().wait_ready()
        started = time.monotonic()
        sender = threading.Thread(target=publish_steadily, name="soak-publisher", daemon=True)
        sender.start()
        while time.monotonic() - started < SECONDS:
            time.sleep(SAMPLE_EVERY)
            assert not errors, errors
            assert process.proc is not None and process.proc.poll() is None, "the daemon died"
            samples.append(_sample(process, started, published[0]))
            s = samples[-1]
            print(
                f"soak t={s.at:5.0f}s published={s.published} rss={s.rss_mib:.1f}MiB fds={s.fds} "
                f"threads={s.threads} backlog={s.backlog} intake_queue={s.intake_queue}",
                flush=True,
            )
        stop.set()
        sender.join(30)
        ledger = fleet.wait_paid(120)
        wait_for(
            lambda: sum(store_statuses(process.db)[s] for s in ("pending", "claimed", "submitted")) == 0,
            60,
            "the backlog to drain",
        )
    finally:
        stop.set()
        publisher.close()
        process.kill()
    nonces = nonce_report(process.db, deployment.chain.w3, key)

    warm = samples[max(1, len(samples) // 5) :]  # the first fifth is warm-up (caches, pools, SQLite pages)
    third = max(1, len(warm) // 3)
    rss_first, rss_last = mean(s.rss_mib for s in warm[:third]), mean(s.rss_mib for s in warm[-third:])
    fds = [s.fds for s in warm]
    threads = [s.threads for s in warm]
    backlog_max = max(s.backlog + s.intake_queue for s in samples)
    summary(
        "soak",
        seconds=int(SECONDS),
        devices=DEVICES,
        rate=int(RATE),
        events=published[0],
        rss_mib_first=round(rss_first, 1),
        rss_mib_last=round(rss_last, 1),
        fds=f"{min(fds)}..{max(fds)}",
        threads=f"{min(threads)}..{max(threads)}",
        backlog_max=backlog_max,
        txs=len(nonces.nonces),
        lost=ledger.lost,
        double=ledger.double,
    )
    assert ledger.clean, ledger
    assert nonces.gapless, nonces
    assert rss_last <= rss_first * 1.25 + 16, f"memory grew from {rss_first:.1f} to {rss_last:.1f} MiB"
    assert max(fds) - min(fds) <= 10, f"open file descriptors not flat: {fds}"
    assert max(threads) - min(threads) <= 4, f"threads not flat: {threads}"
    assert backlog_max <= RATE * 15, f"backlog not bounded: {backlog_max} events (rate {RATE}/s)"
