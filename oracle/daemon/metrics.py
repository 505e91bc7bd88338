"""Prometheus metrics of the oracle daemon, intake and settlement alike.

All of them are defined here; each half (intake, settlement) increments its own.

Each ``Metrics`` owns a ``CollectorRegistry`` rather than using the process-global one, so several daemons (tests,
scale-out experiments) can live in one process; ``health`` serves ``render()`` on ``/metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "iotsettle_oracle"
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: publish (device timestamp) → confirmed on chain; seconds, resolved down to tens of milliseconds.
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0)
GAS_BUCKETS = (5_000, 7_500, 9_000, 10_000, 12_500, 15_000, 20_000, 30_000, 45_000, 60_000, 100_000, 250_000)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_000)


class Metrics:
    """Every metric the daemon exports, with its help text."""

    def __init__(self, oracle_id: str = "oracle-1") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        labels = {"oracle": oracle_id}
        # intake
        self.received = Counter(f"{PREFIX}_received", "MQTT messages received on the events topics", registry=r)
        self.verified = Counter(
            f"{PREFIX}_verified",
            "events whose payload parsed and whose signature recovered to the claimed device",
            registry=r,
        )
        self.rejected = Counter(f"{PREFIX}_rejected", "events refused, by reason", ["reason"], registry=r)
        self.duplicates = Counter(
            f"{PREFIX}_duplicates", "events already stored (redelivery, device retry)", registry=r
        )
        self.stored = Counter(f"{PREFIX}_stored", "events accepted and durably stored", registry=r)
        self.routed_away = Counter(
            f"{PREFIX}_routed_away",
            "MQTT messages acknowledged unread: their device is owned by another instance of the route group",
            registry=r,
        )
        self.acked = Counter(f"{PREFIX}_acked", "MQTT messages acknowledged after their batch committed", registry=r)
        self.intake_batch_size = Histogram(
            f"{PREFIX}_intake_batch_size",
            "messages per intake batch (one SQLite transaction)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.intake_batch_seconds = Histogram(
            f"{PREFIX}_intake_batch_seconds", "time to verify, check and commit one intake batch", registry=r
        )
        self.intake_queue = Gauge(f"{PREFIX}_intake_queue", "messages received but not yet processed", registry=r)
        self.quarantined = Gauge(f"{PREFIX}_quarantined_devices", "devices currently quarantined", registry=r)
        self.registry_devices = Gauge(f"{PREFIX}_registry_keys", "active device keys known from the chain", registry=r)
        self.registry_block = Gauge(f"{PREFIX}_registry_block", "next block the registry follower reads", registry=r)
        self.store_errors = Counter(f"{PREFIX}_store_errors", "failed store commits (retried)", registry=r)
        self.alerts = Counter(
            f"{PREFIX}_alerts", "early alerts raised on accepted events, by kind (docs/ALERTS.md)", ["kind"], registry=r
        )
        self.alert_errors = Counter(
            f"{PREFIX}_alert_errors", "events on which an alert detector failed (the event was stored)", registry=r
        )
        self.mqtt_connected = Gauge(f"{PREFIX}_mqtt_connected", "1 while connected to the broker", registry=r)
        # settlement (incremented by the settlement half)
        self.settled = Counter(f"{PREFIX}_settled", "events settled on chain (mined)", ["kind"], registry=r)
        self.finalized = Counter(f"{PREFIX}_finalized", "events with enough confirmations", ["kind"], registry=r)
        self.dead_lettered = Counter(
            f"{PREFIX}_dead_lettered", "events that will never settle, by reason", ["reason"], registry=r
        )
        self.transactions = Counter(
            f"{PREFIX}_transactions", "settlement transactions by outcome", ["outcome"], registry=r
        )
        self.gas_per_event = Histogram(
            f"{PREFIX}_gas_per_event",
            "gas used by a settlement transaction divided by its events",
            buckets=GAS_BUCKETS,
            registry=r,
        )
        self.backlog = Gauge(f"{PREFIX}_backlog", "stored events by settlement status", ["status"], registry=r)
        self.latency = Histogram(
            f"{PREFIX}_publish_to_confirmed_seconds",
            "device timestamp → settlement transaction confirmed",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.last_settled_block = Gauge(f"{PREFIX}_last_settled_block", "block of the newest settlement", registry=r)
        # relayer funds and health (oracle/daemon/funds.py, health.py); docs/OPERATIONS.md, deploy/prometheus
        # one series per relayer account (nonce lane), labelled by its address
        self.relayer_balance = Gauge(
            f"{PREFIX}_relayer_balance_eth", "relayer balance, read from the node", ["address"], registry=r
        )
        self.gas_spent = Counter(
            f"{PREFIX}_gas_spent_eth", "paid for settlement gas (receipts: gas × price)", ["address"], registry=r
        )
        self.gas_hours_left = Gauge(
            f"{PREFIX}_gas_hours_left",
            "hours the relayer balance lasts at the last hour's spending",
            ["address"],
            registry=r,
        )
        self.min_gas_hours = Gauge(
            f"{PREFIX}_min_gas_hours", "[oracle] min_gas_hours: /health degrades below", registry=r
        )
        # RPC failover ([chain] rpc_urls; oracle/chain/endpoints.py)
        self.rpc_switches = Counter(f"{PREFIX}_rpc_switches", "moves to another RPC endpoint", registry=r)
        self.rpc_endpoint = Gauge(f"{PREFIX}_rpc_endpoint", "RPC endpoint in use (1 = first of rpc_urls)", registry=r)
        self.check_state = Gauge(
            f"{PREFIX}_health_check", "each /health check: 0 ok, 1 degraded, 2 down", ["check"], registry=r
        )
        self.info = Gauge(f"{PREFIX}_up", "1 while the daemon runs", list(labels), registry=r)
        self.info.labels(**labels).set(1)

    def render(self) -> bytes:
        """The text exposition format served on /metrics."""
        return generate_latest(self.registry)
