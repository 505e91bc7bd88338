"""Oracle ingest (MQTT in → decoded → signature verified → rules → durably stored → acknowledged).

- ``run_bench_ingest``: ``scripts/bench-ingest`` (its own broker, the daemon's ``Intake``
  with verification processes), run as it is and read through its ``--json`` output: the headline events/s and
  CPU per event.
- ``profile_intake``: the same pipeline inline in one thread (``verify_workers = 0``) with thread-CPU timers
  around its stages (subclasses of ``Intake`` and ``Store``; nothing in the daemon changes), so the figures are
  CPU time per event by stage, independent of other load on the machine; the paho network thread (MQTT parsing,
  the ``on_message`` hand-off) is the rest of the process's CPU. The check stage is split into decode / digest /
  recover by timing each alone on the same payloads.
- ``verify_rate``: signatures recovered per second on one core with ``iotsettle.oracle.protocol.eip712.recover``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from iotsettle.oracle.chain.node import Mosquitto, free_port
from iotsettle.oracle.config import Config
from iotsettle.oracle.daemon.intake import Intake, IntakeSettings
from iotsettle.oracle.daemon.metrics import Metrics
from iotsettle.oracle.daemon.store import RegistryEntry, Store
from iotsettle.oracle.protocol import device_kinds, eip712, wire
from iotsettle.oracle.protocol.errors import IotSettleError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
CHAIN_ID = 31337
CONTRACT = eip712.address_of(b"\x01" * 32)  # stands in for the billing contract: no chain in this phase


def run_bench_ingest(events: int, devices: int, workers: int, timeout: float = 600.0) -> dict[str, Any]:
    """``scripts/bench-ingest --json`` as a child process; its JSON result."""
    command = [
        sys.executable,
        str(REPO / "scripts" / "bench-ingest"),
        "--json",
        "--events",
        str(events),
        "--devices",
        str(devices),
        "--workers",
        str(workers),
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise IotSettleError(f"scripts/bench-ingest failed ({done.returncode}): {done.stderr[-1500:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


class TimedStore(Store):
    """The daemon's store, timing its batch commits (CPU of the calling thread)."""

    commit_cpu: float = 0.0

    def commit_batch(self, *args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return super().commit_batch(*args, **kwargs)
        finally:
            self.commit_cpu += time.thread_time() - started


class TimedIntake(Intake):
    """The daemon's intake with CPU timers around its stages; everything runs in the intake thread when
    ``verify_workers`` is 0."""

    check_cpu: float = 0.0  # decode + schema + digest + recover (check_payloads)
    decide_cpu: float = 0.0  # device checks + rules + commit
    finish_cpu: float = 0.0  # the whole batch: check + decide + acks + replies
    thread_cpu: float = 0.0

    def _run(self) -> None:
        started = time.thread_time()
        try:
            super()._run()
        finally:
            self.thread_cpu = time.thread_time() - started

    def _submit(self, batch: list[Any]) -> Callable[[], list[Any]]:
        collect = super()._submit(batch)

        def timed() -> list[Any]:
            started = time.thread_time()
            try:
                return collect()
            finally:
                self.check_cpu += time.thread_time() - started

        return timed

    def _decide_and_store(self, batch: list[Any], checked: list[Any]) -> list[tuple[str, bytes]]:
        started = time.thread_time()
        try:
            return super()._decide_and_store(batch, checked)
        finally:
            self.decide_cpu += time.thread_time() - started

    def _finish(self, batch: list[Any], results: Callable[[], list[Any]]) -> None:
        started = time.thread_time()
        try:
            super()._finish(batch, results)
        finally:
            self.finish_cpu += time.thread_time() - started


def _signed_payloads(events: int, devices: int) -> tuple[list[tuple[str, bytes]], list[str]]:
    keys = [os.urandom(32) for _ in range(devices)]
    addresses = [eip712.address_of(k) for k in keys]
    domain = eip712.Domain(CHAIN_ID, CONTRACT)
    now = int(time.time()) - events // devices - 10
    payloads = []
    for i in range(events):
        d, seq = i % devices, i // devices + 1
        msg = {"agreementId": d + 1, "seq": seq, "timestamp": now + seq, "value": 1_000 + seq}
        sig = eip712.sign_digest(keys[d], eip712.digest("Reading", msg, domain))
        payloads.append(
            (
                wire.events_topic(CHAIN_ID, addresses[d]),
                wire.encode("reading", CHAIN_ID, CONTRACT, addresses[d], msg, sig),
            )
        )
    return payloads, addresses


def _publish(host: str, port: int, payloads: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-profile-devices", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(2_000)
    client.connect(host, port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in payloads]
    for info in infos:
        info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


def _check_split(payloads: list[tuple[str, bytes]]) -> dict[str, float]:
    """How decode / digest / recover share the check stage: each timed alone on the same payloads (one core)."""
    sample = [p for _, p in payloads[:1_000]]
    started = time.process_time()
    events = [wire.decode(p) for p in sample]
    decode = time.process_time() - started
    started = time.process_time()
    digests = [e.digest for e in events]
    digest = time.process_time() - started
    started = time.process_time()
    for event, d in zip(events, digests, strict=True):
        eip712.recover(d, event.sig)
    recover = time.process_time() - started
    total = decode + digest + recover
    return {"decode": decode / total, "digest": digest / total, "recover": recover / total}


def profile_intake(config: Config, events: int, devices: int, batch: int = 512) -> dict[str, Any]:
    """Queue ``events`` signed readings for the intake's persistent session, then let the inline intake (timers
    around its stages) take them all; returns the rate and the CPU per event by stage (µs)."""
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        state = Path(tmp)
        broker = Mosquitto(config, state_dir=state / "broker", port=free_port())
        broker.start()
        try:
            store = Store.open(state / "oracle.db")
            payloads, addresses = _signed_payloads(events, devices)
            store.apply_registry(
                [RegistryEntry(a, a, None, int(device_kinds.DeviceKind.METER), True, 1) for a in addresses]
            )
            settings = IntakeSettings(
                chain_id=CHAIN_ID,
                contracts={"reading": CONTRACT, "delivery": CONTRACT},
                host=broker.host,
                port=broker.port,
                client_id="bench-profile",
                batch_size=batch,
                verify_workers=0,
                receive_maximum=max(4_096, 4 * batch),
            )
            session = Intake(settings, store, Metrics())
            session.start()
            session.wait_connected(10)
            session.stop()
            _publish(broker.host, broker.port, payloads)

            timed_store = TimedStore.open(state / "oracle.db")  # a connection of its own, as the daemon's intake has
            intake = TimedIntake(settings, timed_store, Metrics())
            cpu0, t0 = time.process_time(), time.perf_counter()
            intake.start()
            deadline = t0 + 300
            while store.event_count() < events and time.perf_counter() < deadline:
                time.sleep(0.01)
            elapsed = time.perf_counter() - t0
            stored = store.event_count()
            intake.stop()
            process_cpu = time.process_time() - cpu0
            timed_store.close()
            store.close()
        finally:
            broker.stop()
    if stored < events:
        raise IotSettleError(f"the timed intake stored {stored} of {events} events")
    split = _check_split(payloads)

    def us(seconds: float) -> float:
        return round(max(0.0, seconds) * 1e6 / events, 1)

    stages = {
        "decode (JSON + schema)": us(intake.check_cpu * split["decode"]),
        "EIP-712 digest": us(intake.check_cpu * split["digest"]),
        "signature recover": us(intake.check_cpu * split["recover"]),
        "device checks + fraud rules + replies encoded": us(intake.decide_cpu - timed_store.commit_cpu),
        "store (one SQLite transaction per batch, FULL sync)": us(timed_store.commit_cpu),
        "ack (PUBACK) + reply publish": us(intake.finish_cpu - intake.check_cpu - intake.decide_cpu),
        "batching + queue hand-off (intake thread)": us(intake.thread_cpu - intake.finish_cpu),
        "paho network thread (MQTT parsing, on_message)": us(process_cpu - intake.thread_cpu),
    }
    return {
        "events": events,
        "devices": devices,
        "batch": batch,
        "verify_workers": 0,
        "seconds": round(elapsed, 3),
        "events_per_s": round(events / elapsed),
        "process_cpu_us_per_event": us(process_cpu),
        "cpu_bound_events_per_s_one_core": round(events / process_cpu) if process_cpu else None,
        "cpu_us_per_event_by_stage": stages,
    }


def verify_rate(count: int = 3_000) -> dict[str, Any]:
    """Signatures verified per second on one core: ``eip712.recover`` alone, and digest + recover from a payload."""
    key = os.urandom(32)
    domain = eip712.Domain(CHAIN_ID, CONTRACT)
    msgs = [{"agreementId": 1, "seq": i + 1, "timestamp": 1_700_000_000 + i, "value": 1_000 + i} for i in range(count)]
    digests = [eip712.digest("Reading", m, domain) for m in msgs]
    sigs = [eip712.sign_digest(key, d) for d in digests]
    started = time.process_time()
    for digest, sig in zip(digests, sigs, strict=True):
        eip712.recover(digest, sig)
    recover_s = time.process_time() - started
    started = time.process_time()
    for msg, sig in zip(msgs, sigs, strict=True):
        eip712.recover(eip712.digest("Reading", msg, domain), sig)
    both_s = time.process_time() - started
    return {
        "signatures": count,
        "recover_per_s": round(count / recover_s),
        "digest_and_recover_per_s": round(count / both_s),
    }
