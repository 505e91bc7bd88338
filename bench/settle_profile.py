"""Where the settlement half of the daemon spends its CPU: the daemon's ``Settler`` (planner → submitter → tracker)
driven in this process over readings already stored, under cProfile with a thread-CPU clock.

Every reading is for a different agreement, so none is collapsed and every one becomes an on-chain settlement.
The figures are CPU µs per settled event of the settlement thread by library (self time of the functions in each
package): what the daemon's Python does per event, apart from waiting for the node. cProfile's own overhead inflates
small functions, so read the shares, not the absolute sum.
"""

from __future__ import annotations

import cProfile
import logging
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

from iotsettle.oracle.daemon.deployment import resolve
from iotsettle.oracle.daemon.metrics import Metrics
from iotsettle.oracle.daemon.settler import Settler
from iotsettle.oracle.daemon.store import EventRecord, Store
from iotsettle.oracle.protocol import eip712
from iotsettle.oracle.protocol.errors import IotSettleError

from bench.stack import DAEMON_RELAYER, BenchStack, Meter

log = logging.getLogger(__name__)

#: (label, substring of the function's file path); first match wins, the rest is "other"
BUCKETS = (
    (
        "HTTP client: requests/urllib3, incl. its proxy lookup in os.environ on every call",
        ("requests/", "urllib3/", "/http/", "socket", "json/", "<frozen os>", "urllib/", "email/", "_collections_abc"),
    ),
    (
        "web3.py provider and helpers (middleware, formatters, ABI, typing/inspect checks)",
        ("web3/", "eth_abi/", "typing.py", "inspect.py", "<frozen abc>", "_abc_"),
    ),
    (
        "transaction signing (eth_account, eth_keys, rlp, coincurve)",
        ("eth_account/", "eth_keys/", "rlp/", "coincurve/", "eth_rlp/"),
    ),
    (
        "hex, checksums, hashing (eth_utils, eth_hash, hexbytes)",
        ("eth_utils/", "eth_hash/", "hexbytes/", "eth_typing/"),
    ),
    (
        "SQLite (the store: claims, nonces, attempts, outcomes)",
        ("sqlite3", "oracle/daemon/store.py", "oracle/daemon/txstore.py"),
    ),
    ("planner", ("oracle/daemon/planner.py",)),
    (
        "submitter (batch build, gas, broadcast bookkeeping)",
        ("oracle/daemon/submitter.py", "oracle/daemon/calldata.py"),
    ),
    (
        "tracker (receipts → outcomes, confirmations)",
        ("oracle/daemon/tracker.py", "oracle/daemon/settler.py", "oracle/chain/revert.py"),
    ),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
)


def _bucket(filename: str, name: str) -> str:
    where = f"{filename} {name}"
    for label, needles in BUCKETS:
        if any(n in where for n in needles):
            return label
    return "other (built-ins: str/bytes methods, isinstance, len, logging)"


def _drain(
    stack: BenchStack, config: Any, meters: list[Meter], profile: cProfile.Profile | None
) -> tuple[float, float]:
    """Store one signed reading per meter and drain them through a fresh ``Settler``: (thread CPU s, wall s)."""
    with tempfile.TemporaryDirectory(prefix="bench-settle-") as tmp:
        store = Store.open(Path(tmp) / "oracle.db")
        try:
            now = time.time()
            records = []
            for meter in meters:
                msg, sig = meter.next_reading()
                digest = eip712.digest("Reading", msg, eip712.Domain(meter.chain_id, meter.contract))
                records.append(
                    EventRecord(
                        "reading",
                        meter.address,
                        meter.address,
                        meter.chain_id,
                        meter.contract,
                        meter.agreement,
                        meter.seq,
                        msg["timestamp"],
                        msg["value"],
                        None,
                        None,
                        digest,
                        sig,
                        now,
                    )
                )
            store.commit_batch(records, [], [])
            settler = Settler.from_deployment(config, resolve(config, stack.chain), store, metrics=Metrics())
            settler.recover()
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            if profile is not None:
                profile.enable()
            done = settler.drain(timeout=120)
            if profile is not None:
                profile.disable()
            cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
            left = store.pending_count()
        finally:
            store.close()
    if not done or left:
        raise IotSettleError(f"settlement profile: {left} of {len(meters)} readings not settled")
    return cpu, wall


def profile_settlement(stack: BenchStack, meters: list[Meter]) -> dict[str, Any]:
    """Half of ``meters`` drained plainly (CPU and wall time per event), the other half under the profiler (CPU
    shares by library)."""
    config = stack.config.replace("chain", private_key=DAEMON_RELAYER).replace("oracle", batch_max_wait=0.0)
    half = len(meters) // 2
    cpu, wall = _drain(stack, config, meters[:half], None)
    profile = cProfile.Profile(time.thread_time)
    _drain(stack, config, meters[half:], profile)
    by_bucket: dict[str, float] = {}
    for (filename, _line, name), (_cc, _nc, own, _cum, _callers) in pstats.Stats(profile).stats.items():  # type: ignore[attr-defined]
        label = _bucket(filename, name)
        by_bucket[label] = by_bucket.get(label, 0.0) + own
    total = sum(by_bucket.values()) or 1.0
    return {
        "events": half,
        "wall_seconds": round(wall, 3),
        "settled_per_s_wall": round(half / wall, 1),
        "settlement_thread_cpu_us_per_event": round(cpu * 1e6 / half, 1),
        "cpu_share_by_library_percent": {
            k: round(100 * v / total, 1) for k, v in sorted(by_bucket.items(), key=lambda kv: -kv[1])
        },
        "note": "shares from cProfile self time on a thread-CPU clock over the other half of the events",
    }
