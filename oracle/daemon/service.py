"""The oracle daemon process: start-up checks, the intake and settlement threads, signals, status topic, health.

Start-up refuses (an ``IotSettleError`` naming the problem, before anything is acknowledged) when:

- the RPC endpoint is unreachable or is not ``[chain] chain_id``;
- there is no deployment manifest for the chain, or it does not describe this chain (other genesis, contract code
  missing or different from the compiled artifacts);
- the relayer key cannot be loaded: keystore readable by other users, wrong or missing password;
- the DeviceRegistry's events cannot be read.

Shutdown (SIGTERM / SIGINT): intake stops taking messages, processes and acknowledges everything already
received, settlement sends what is stored and waits for it up to ``[oracle] drain_timeout``, the retained status
becomes "offline", and the process exits 0. Whatever did not finish is picked up by the next start: unacknowledged
messages are redelivered by the broker, stored events stay in the outbox.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from types import FrameType

from iotsettle.oracle.chain.connection import endpoints_of
from iotsettle.oracle.chain.endpoints import Endpoints
from iotsettle.oracle.chain.rpc import RpcClient
from iotsettle.oracle.config import Config
from iotsettle.oracle.daemon.alerts import AlertSettings
from iotsettle.oracle.daemon.deployment import Deployment, resolve
from iotsettle.oracle.daemon.funds import LaneFunds, RelayerFunds
from iotsettle.oracle.daemon.health import Health, State
from iotsettle.oracle.daemon.intake import MQTT_PROTOCOLS, Intake, IntakeSettings
from iotsettle.oracle.daemon.metrics import Metrics
from iotsettle.oracle.daemon.optimistic import OptimisticRelayer, OptimisticSettings, addresses_of
from iotsettle.oracle.daemon.policy_watch import PolicyWatch
from iotsettle.oracle.daemon.registry_follower import RegistryFollower
from iotsettle.oracle.daemon.rules import RuleSettings
from iotsettle.oracle.daemon.settler import Settler, SettlerSettings
from iotsettle.oracle.daemon.store import Store, StoredEvent
from iotsettle.oracle.daemon.txstore import TxStore
from iotsettle.oracle.protocol import wire
from iotsettle.oracle.protocol.errors import ConfigError
from iotsettle.oracle.protocol.reasons import Reason, Reply, encode_reply

log = logging.getLogger(__name__)

#: queued-but-unprocessed messages above which intake reports "degraded"
QUEUE_DEGRADED = 50_000


def status_topic(chain_id: int, oracle_id: str) -> str:
    """Retained "online"/"offline" status of one oracle instance (the last will sets "offline")."""
    return f"{wire.TOPIC_ROOT}/{chain_id}/oracle/{oracle_id}/status"


def rule_settings(config: Config) -> RuleSettings:
    o = config.oracle
    return RuleSettings(
        max_future_skew_s=o.max_future_skew,
        max_age_s=o.max_age,
        max_rate_meter=o.max_rate_meter,
        max_rate_vehicle=o.max_rate_vehicle,
        max_rate_weather_station=o.max_rate_weather_station,
        max_speed_m_s=o.max_speed,
        quarantine_threshold=o.quarantine_threshold,
        quarantine_window_s=o.quarantine_window,
    )


def alert_settings(config: Config) -> AlertSettings | None:
    """The detectors' thresholds from ``[alerts]``; None when alerts are switched off."""
    a = config.alerts
    if not a.enabled:
        return None
    return AlertSettings(
        meter_warmup=a.meter_warmup,
        meter_sigmas=a.meter_sigmas,
        meter_ratio=a.meter_ratio,
        meter_half_life_s=a.meter_half_life,
        stationary_s=a.stationary,
        stationary_radius_m=a.stationary_radius,
        lapsed_min_distance_m=a.lapsed_min_distance,
        station_window_s=a.station_window,
        station_floor=a.station_floor,
        station_ratio=a.station_ratio,
        station_min_neighbours=a.station_min_neighbours,
    )


def intake_settings(config: Config, deployment: Deployment) -> IntakeSettings:
    """The intake's settings: broker, subscription, batching and rules of ``config`` on ``deployment``."""
    o = config.oracle
    return IntakeSettings(
        chain_id=deployment.chain.chain_id,
        contracts=deployment.contracts,
        host=config.mqtt.host,
        port=config.mqtt.port,
        client_id=o.client_id,
        username=config.mqtt.username,
        password=config.mqtt.password,
        keepalive=config.mqtt.keepalive,
        protocol=config.mqtt.protocol,
        brokers=config.mqtt.endpoints(),
        tls=config.mqtt.tls(),
        shared_group=o.shared_group,
        route_group=o.route_group,
        session_expiry_s=o.session_expiry,
        receive_maximum=o.receive_maximum,
        batch_size=o.intake_batch_size,
        batch_latency_s=o.intake_batch_latency,
        verify_workers=o.verify_workers,
        reply_qos=o.reply_qos,
        status_topic=status_topic(deployment.chain.chain_id, o.oracle_id),
        status_payload={"oracle": o.oracle_id, "relayer": deployment.relayer.address},
        rules=rule_settings(config),
        alerts=alert_settings(config),
        optimistic=addresses_of(config, deployment.manifest, deployment.chain.chain_id),
    )


def validate(config: Config) -> None:
    """Reject [oracle] values the daemon cannot work with, naming the key."""
    o = config.oracle
    problems = []
    if o.intake_batch_size < 1:
        problems.append("intake_batch_size must be ≥ 1")
    if o.intake_batch_latency < 0:
        problems.append("intake_batch_latency must be ≥ 0")
    if o.verify_workers < 0:
        problems.append("verify_workers must be ≥ 0")
    if not 1 <= o.receive_maximum <= 65_535:
        problems.append("receive_maximum must be 1..65535")
    if o.reply_qos not in (0, 1):
        problems.append("reply_qos must be 0 or 1")
    if o.session_expiry < 0:
        problems.append("session_expiry must be ≥ 0")
    if config.mqtt.protocol not in MQTT_PROTOCOLS:
        problems.append(f"[mqtt] protocol must be one of {', '.join(MQTT_PROTOCOLS)}")
    elif config.mqtt.protocol != "5" and o.shared_group:
        problems.append("shared_group needs [mqtt] protocol 5 (shared subscriptions are an MQTT 5 feature)")
    if o.shared_group and o.route_group:
        problems.append("shared_group and route_group exclude each other (a route group needs every event)")
    if any(c in o.route_group for c in "/+#"):
        problems.append("route_group without / + #")
    if o.balance_refresh <= 0:
        problems.append("balance_refresh must be > 0")
    if o.registry_poll <= 0:
        problems.append("registry_poll must be > 0")
    if not o.client_id or "/" in o.oracle_id or "+" in o.oracle_id or "#" in o.oracle_id or not o.oracle_id:
        problems.append("client_id and oracle_id must be non-empty, oracle_id without / + #")
    for name in (
        "max_future_skew",
        "max_age",
        "max_rate_meter",
        "max_rate_vehicle",
        "max_rate_weather_station",
        "max_speed",
        "quarantine_threshold",
        "quarantine_window",
        "drain_timeout",
        "reject_retention",
        "min_gas_hours",
    ):
        if getattr(o, name) < 0:
            problems.append(f"{name} must be ≥ 0")
    if problems:
        raise ConfigError("[oracle] " + "; ".join(problems))
    a = config.alerts
    bad = [f"{f.name} must be ≥ 0" for f in dataclasses.fields(a) if f.type != "bool" and getattr(a, f.name) < 0]
    bad += [f"{name} must be > 0" for name in ("policy_poll", "station_window") if getattr(a, name) <= 0]
    if bad:
        raise ConfigError("[alerts] " + "; ".join(dict.fromkeys(bad)))


def preflight(config: Config) -> Deployment:
    """Every start-up check; the resolved deployment is what intake and settlement then run on. Raises ConfigError /
    ChainError / DeploymentError / KeyFileError / CompileError naming the problem."""
    validate(config)
    SettlerSettings.from_config(config)
    OptimisticSettings.from_config(config)
    deployment = resolve(config)
    addresses_of(config, deployment.manifest, deployment.chain.chain_id)
    return deployment


def relayer_funds(
    config: Config, deployment: Deployment, store: Store | None, metrics: Metrics | None = None
) -> LaneFunds:
    """Each relayer's balance and spending (one per nonce lane), seeded with the last hour's transactions from
    ``store`` (when given)."""
    w3 = deployment.chain.w3
    lanes = []
    for relayer in deployment.relayers:
        funds = RelayerFunds(
            relayer.address,
            lambda address: int(w3.eth.get_balance(w3.to_checksum_address(address))),
            min_hours=config.oracle.min_gas_hours,
            refresh=config.oracle.balance_refresh,
            metrics=metrics,
        )
        if store is not None:
            funds.seed(TxStore(store).fees_since(relayer.address, time.time() - funds.window))
        lanes.append(funds)
    return LaneFunds(lanes)


def prune_interval(retention: float) -> float:
    """How often the audit table is pruned: a tenth of the retention, between 1 s and 10 minutes."""
    return min(600.0, max(1.0, retention / 10))


def prune_rejected_audit(store: Store, retention: float, now: float | None = None) -> int:
    """Drop rejected messages older than ``retention`` seconds (0 keeps everything); returns how many went.

    Without this a device sending garbage grows the audit table (≤ 1 KiB a row) until the disk is full.
    """
    if retention <= 0:
        return 0
    removed = store.prune_rejected((time.time() if now is None else now) - retention)
    if removed:
        log.info("pruned %d rejected messages older than %.0f s from the audit table", removed, retention)
    return removed


class OracleDaemon:
    """One oracle instance. ``run()`` is the whole life of the process; ``start()``/``stop()`` for embedding."""

    def __init__(self, config: Config, *, settle: bool = True) -> None:
        self.config = config
        self.settle = settle
        self.metrics = Metrics(config.oracle.oracle_id)
        self.deployment: Deployment | None = None
        self.intake: Intake | None = None
        self.follower: RegistryFollower | None = None
        self.policy_watch: PolicyWatch | None = None
        self.settler: Settler | None = None
        self.optimistic: list[OptimisticRelayer] = []
        self.health: Health | None = None
        self.funds: LaneFunds | None = None
        self.endpoints: Endpoints | None = None
        self._stores: list[Store] = []
        self._stop = threading.Event()

    def _store(self) -> Store:
        store = Store.open(self.config.path(self.config.oracle.db_path))
        self._stores.append(store)
        return store

    def start(self) -> None:
        config, o = self.config, self.config.oracle
        deployment = self.deployment = preflight(config)
        chain = deployment.chain
        log.info(
            "chain %d at %s, deployment verified; relayer %s",
            chain.chain_id,
            chain.rpc_url,
            ", ".join(relayer.address for relayer in deployment.relayers),
        )
        self.endpoints = endpoints_of(chain.w3)
        if self.endpoints is not None:
            self._watch_heads(self.endpoints, RpcClient(chain.w3))

        status_store = self._store()
        intake_store = self._store()
        settings = intake_settings(config, deployment)
        self.intake = Intake(settings, intake_store, self.metrics)
        watch_policies = settings.alerts is not None and settings.alerts.lapsed_min_distance_m
        if watch_policies and "telematics" in deployment.contracts:
            self.policy_watch = PolicyWatch(
                RpcClient(chain.w3),
                deployment.contracts["telematics"],
                deployment.abi_of_kind("telematics"),
                config.alerts.policy_poll,
            )
            self.intake.policy_status = self.policy_watch.status

        registry = deployment.contract("DeviceRegistry")
        self.follower = RegistryFollower(
            chain.w3,
            registry,
            self._store(),
            chain_id=chain.chain_id,
            start_block=int(deployment.manifest["contracts"]["DeviceRegistry"].get("block", 0)),
            poll_interval=o.registry_poll,
            on_change=self.intake.registry_changed,
            metrics=self.metrics,
        )
        synced = self.follower.sync()  # before intake: known devices must not be answered "unknown_device"
        log.info("device registry followed up to block %d (%d new events)", self.follower.next_block - 1, synced)

        if self.settle:
            self.settler = Settler.from_deployment(
                config, deployment, self._store(), metrics=self.metrics, on_dead_letter=self._dead_letter
            )
            self.funds = relayer_funds(config, deployment, status_store, self.metrics)
            self.settler.tracker.on_fee = self.funds.spent
            # one relayer per optimistic contract (readings, telematics), sharing the relayer's nonce counter
            self.optimistic = [
                OptimisticRelayer(
                    config,
                    chain,
                    deployment.manifest,
                    deployment.relayer,
                    self._store(),
                    OptimisticSettings.from_config(config),
                    fees=self.settler.submitter,
                    recover=self.settler.recover,
                    kind=kind,
                )
                for kind in dict.fromkeys(settings.optimistic.values())
            ]

        if o.health_port:
            self.health = Health(self.metrics, o.health_host, o.health_port)
            self._add_checks(status_store)
            self.health.start()

        if self.settler is not None:
            self.settler.start()
            self.intake.on_stored = self.settler.wake
        for relayer in self.optimistic:
            relayer.start()
        self.follower.start()
        if self.policy_watch is not None:
            self.policy_watch.start()
        self.intake.start()
        log.info(
            "oracle %s running: MQTT %s as %s, subscription %s",
            o.oracle_id,
            ", ".join(map(str, config.mqtt.endpoints())),
            o.client_id,
            settings.subscription,
        )

    def _watch_heads(self, pool: Endpoints, client: RpcClient) -> None:
        """Count switches in /metrics and read every endpoint's head each ``[chain] head_check`` seconds, so a
        stale endpoint is left even while its answers come (``Endpoints.observe``)."""
        self.metrics.rpc_endpoint.set(pool.index + 1)

        def switched(*_: str) -> None:
            self.metrics.rpc_switches.inc()
            self.metrics.rpc_endpoint.set(pool.index + 1)

        pool.on_switch.append(switched)

        def watch() -> None:
            while not self._stop.wait(self.config.chain.head_check):
                try:
                    client.check_heads()
                except Exception:
                    log.exception("reading the RPC endpoints' heads failed")

        threading.Thread(target=watch, name="rpc-heads", daemon=True).start()

    def _add_checks(self, store: Store) -> None:
        health, intake, follower = self.health, self.intake, self.follower
        if health is None or intake is None or follower is None:
            return

        def mqtt() -> tuple[State, str]:
            broker = intake.transport.failover.current  # which one of the list, after a failover
            return (
                (State.OK, f"connected to {broker}") if intake.connected else (State.DOWN, f"not connected ({broker})")
            )

        def intake_check() -> tuple[State, str]:
            if not intake.alive:
                return State.DOWN, intake.last_error or "intake thread not running"
            if intake.last_error:
                return State.DOWN, f"store: {intake.last_error}"
            queued = intake.backlog
            return (State.DEGRADED if queued > QUEUE_DEGRADED else State.OK), f"{queued} queued"

        def registry_check() -> tuple[State, str]:
            if follower.healthy():
                return State.OK, f"next block {follower.next_block}"
            return State.DEGRADED, follower.last_error or "registry not polled recently"

        def settlement() -> tuple[State, str]:
            if self.settler is None:
                return State.OK, "disabled"
            error = getattr(self.settler, "last_error", None)
            pending = store.pending_count()
            return (State.DEGRADED, f"{error}; {pending} unsettled") if error else (State.OK, f"{pending} unsettled")

        router = intake.router

        def routing() -> tuple[State, str]:
            if router is None:
                return State.OK, "no route group: every event received is handled here"
            if not router.ready:
                return State.DEGRADED, f"route group {router.group}: waiting for the broker to echo our status"
            names = sorted(topic.split("/")[-2] for topic in router.instances)
            return State.OK, f"route group {router.group}: {len(names)} online ({', '.join(names)})"

        health.add_check("mqtt", mqtt)
        health.add_check("routing", routing)
        health.add_check("intake", intake_check)
        health.add_check("registry", registry_check)
        health.add_check("settlement", settlement)
        if self.funds is not None:
            health.add_check("funds", self.funds.check)
        relayers = self.optimistic
        if relayers:

            def optimistic() -> tuple[State, str]:
                errors = [f"{r.name}: {r.last_error}" for r in relayers if r.last_error]
                if errors:
                    return State.DEGRADED, "; ".join(errors)
                return State.OK, ", ".join(f"{r.waiting()} {r.kind} events not committed" for r in relayers)

            health.add_check("optimistic", optimistic)
        if self.endpoints is not None:
            health.add_check("rpc", self._rpc_check)

        def refresh() -> None:
            for status, count in store.backlog().items():
                self.metrics.backlog.labels(status=status).set(count)
            self.metrics.intake_queue.set(intake.backlog)
            self.metrics.quarantined.set(len(store.quarantined_devices()))
            block = store.last_settled_block()
            if block is not None:
                self.metrics.last_settled_block.set(block)

        health.on_scrape(refresh)

    def _rpc_check(self) -> tuple[State, str]:
        """The endpoint in use and the switch count; degraded while it is stale with no fresh one to go to."""
        pool = self.endpoints
        if pool is None:
            return State.OK, "one endpoint"
        detail = f"{pool.label()} of {len(pool)}, {pool.switches} switch(es)"
        stale = pool.current_stale()
        return (State.DEGRADED, f"{detail}; {stale}") if stale else (State.OK, detail)

    def _dead_letter(self, event: StoredEvent, reason: str) -> None:
        """Tell the device that an accepted event was refused by the contract (a second reply for its seq)."""
        if self.intake is None:
            return
        reply = Reply.rejected(event.seq, Reason.REJECTED_ONCHAIN, reason, event.digest)
        self.intake.client.publish(wire.replies_topic(event.chain_id, event.signer), encode_reply(reply), qos=1)

    def stop(self) -> bool:
        """Drain and stop everything; True when nothing was left unfinished."""
        timeout = self.config.oracle.drain_timeout
        clean = True
        if self.intake is not None:
            clean &= self.intake.stop(timeout)
        for relayer in self.optimistic:
            relayer.stop()
        if self.settler is not None:
            clean &= bool(self.settler.stop(drain=True, timeout=timeout))
        if self.follower is not None:
            self.follower.stop()
        if self.policy_watch is not None:
            self.policy_watch.stop()
        if self.health is not None:
            self.health.stop()
        for store in self._stores:
            store.close()
        self._stores.clear()
        log.info("oracle stopped (%s)", "drained" if clean else "work left for the next start")
        return clean

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        if signum is not None:
            log.info("received %s: stopping intake and draining", signal.Signals(signum).name)
        self._stop.set()

    def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, drain, return the exit status (0)."""
        previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            try:
                self.start()
            except BaseException:
                self.stop()
                raise
            audit = self._store()
            next_prune = 0.0
            while not self._stop.wait(1.0):
                if time.monotonic() >= next_prune:
                    prune_rejected_audit(audit, self.config.oracle.reject_retention)
                    next_prune = time.monotonic() + prune_interval(self.config.oracle.reject_retention)
            started = time.monotonic()
            self.stop()
            log.info("shutdown took %.1f s", time.monotonic() - started)
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
