"""Configuration: one TOML file plus ``IOTSETTLE_<SECTION>_<KEY>`` environment overrides, validated at load.

Resolution order for every value (highest first): environment variable → the TOML file → the default below.
The file is ``--config PATH``, else ``$IOTSETTLE_CONFIG``, else ``./iotsettle.toml`` when it exists; with no file
the defaults give a working local setup (anvil on 127.0.0.1:8545, mosquitto on 127.0.0.1:1883).

Fields whose metadata says ``secret`` are never printed (``Config.redacted()``); they are best set from the
environment rather than written into the file. docs/CONFIGURATION.md is generated from this module
(``iotsettle config show --defaults`` prints the same).
"""

from __future__ import annotations

import dataclasses
import decimal
import os
import tomllib
import urllib.parse
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from iotsettle.oracle.protocol.errors import ConfigError

ENV_PREFIX = "IOTSETTLE_"
DEFAULT_FILE = "iotsettle.toml"
LOCAL_CHAIN_IDS = frozenset({31337, 1337})  # anvil, ganache


def _secret(default: str = "", doc: str = "") -> Any:
    return field(default=default, repr=False, metadata={"secret": True, "doc": doc})  # never in a repr or a log


def _doc(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


def _url(default: Any, doc: str) -> Any:
    """A URL setting: printed without its path, query or user info, where hosted endpoints keep API keys."""
    return field(default=default, metadata={"doc": doc, "url": True})


def endpoint(url: str) -> str:
    """``scheme://host[:port]`` of a URL: no user info, path or query (hosted RPC endpoints put API keys there)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"


def printable_url(url: str) -> str:
    """``url`` as it may be shown: its endpoint, with ``/***`` where a path, query or user info was cut."""
    if not url:
        return url
    short = endpoint(url)
    return short if url.rstrip("/") == short else f"{short}/***"


@dataclass(frozen=True)
class ChainSettings:
    rpc_url: str = _url("http://127.0.0.1:8545", "JSON-RPC endpoint (http/https/ws); with rpc_urls, the first of them")
    rpc_urls: tuple[str, ...] = _url(
        (),
        "several http(s) endpoints of the same chain, in order of preference (env: comma-separated); the daemon "
        "and the CLI move to the next one when an endpoint does not answer or is stale; empty = rpc_url alone",
    )
    max_lag: int = _doc(3, "failover: blocks an endpoint's head may be behind the best endpoint's before it is stale")
    stall: float = _doc(
        30.0, "failover: seconds an endpoint's head may stand still while another's advances before it is stale"
    )
    head_check: float = _doc(5.0, "failover: seconds between two reads of every endpoint's head by the daemon")
    chain_id: int = _doc(0, "expected chain id; 0 accepts the endpoint's own, anything else is enforced")
    keystore: str = _doc("", "Web3 Secret Storage file of the sending account (deployer/relayer)")
    password_file: str = _doc("", "file holding the keystore password (or set IOTSETTLE_CHAIN_PASSWORD)")
    password: str = _secret(doc="keystore password; prefer the environment")
    private_key: str = _secret(doc="raw sending key (hex); for scripts and CI, prefer a keystore")
    confirmations: int = _doc(1, "blocks on top of a transaction's block before it counts as final")
    timeout: float = _doc(10.0, "seconds to wait for an RPC answer")
    signer: str = _doc(
        "keystore",
        "who signs transactions: keystore (keystore / private_key / a local dev key, in this process) or remote "
        "(eth_signTransaction at signer_url: Clef, Web3Signer; the key never enters this process)",
    )
    signer_url: str = _url("", "remote signer: its JSON-RPC endpoint (http/https)")
    signer_address: str = _doc("", "remote signer: the account it signs for (0x…)")

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The RPC endpoints in order of preference: ``rpc_urls``, else ``rpc_url`` alone."""
        return self.rpc_urls or (self.rpc_url,)


@dataclass(frozen=True)
class NodeSettings:
    host: str = _doc("127.0.0.1", "interface the managed anvil and mosquitto listen on")
    anvil_port: int = _doc(8545, "port of the managed anvil")
    mqtt_port: int = _doc(1883, "port of the managed mosquitto")
    mqtt_tls_port: int = _doc(
        0,
        "second port of the managed mosquitto: mutual TLS with a throw-away CA kept in <state_dir>/tls "
        "(`iotsettle node up --tls`: 8883); 0 = none",
    )
    block_time: int = _doc(0, "anvil block time in seconds; 0 mines each transaction at once")
    state_dir: str = _doc(".state", "pid files, logs and broker data of the managed services")


@dataclass(frozen=True, slots=True)
class BrokerEndpoint:
    """One broker: ``mqtt://host:port`` (plain TCP) or ``mqtts://host:port`` (TLS)."""

    host: str
    port: int
    tls: bool = False

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class BrokerTls:
    """Certificate files for the TLS brokers. Only paths: the files are read by the ssl module when connecting."""

    ca_file: str = ""  # "" = the system's trusted CAs
    cert_file: str = ""  # client certificate (mutual TLS); "" = none
    key_file: str = ""  # its private key; "" = in cert_file
    check_hostname: bool = True  # the broker's certificate must name the host connected to

    @property
    def configured(self) -> bool:
        return bool(self.ca_file or self.cert_file)


def parse_broker(uri: str, where: str = "broker") -> BrokerEndpoint:
    """``mqtt://host:port`` or ``mqtts://host:port`` (port defaults: 1883, 8883); raises ConfigError."""
    scheme, sep, rest = uri.strip().partition("://")
    if not sep or scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"{where} {uri!r} must look like mqtt://host:port or mqtts://host:port")
    tls = scheme == "mqtts"
    host, colon, port_text = rest.rstrip("/").rpartition(":")
    if not colon:
        host, port_text = rest.rstrip("/"), "8883" if tls else "1883"
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{where} {uri!r} must look like mqtt://host:port or mqtts://host:port")
    return BrokerEndpoint(host, int(port_text), tls)


@dataclass(frozen=True)
class MqttSettings:
    host: str = _doc("127.0.0.1", "broker host (when brokers is empty)")
    port: int = _doc(1883, "broker port (when brokers is empty)")
    brokers: tuple[str, ...] = _doc(
        (),
        "broker URIs (mqtt://host:port, mqtts://host:port) tried in this order, the next one whenever a connection "
        "fails; empty = host:port, over TLS when tls_ca_file or tls_cert_file is set; the variable takes a comma list",
    )
    username: str = _doc(
        "",
        "broker user name, if the broker requires one (with a client certificate the broker "
        "may take the certificate's name instead)",
    )
    password: str = _secret(doc="broker password")
    keepalive: int = _doc(30, "seconds between MQTT keep-alive pings")
    protocol: str = _doc(
        "5",
        "MQTT version of the daemon's connection: 5, or 3.1.1 for brokers without MQTT 5 (aedes, older brokers: "
        "a persistent session without expiry, no shared subscriptions)",
    )
    tls_ca_file: str = _doc("", "PEM file of the CA(s) that signed the brokers' certificates; empty = system CAs")
    tls_cert_file: str = _doc("", "PEM client certificate for brokers that require mutual TLS")
    tls_key_file: str = _doc("", "PEM private key of tls_cert_file (keep it 0600); empty = inside tls_cert_file")
    tls_check_hostname: bool = _doc(
        True, "a TLS broker's certificate must name the host connected to; off only for a test broker"
    )

    def replace(self, **changes: Any) -> MqttSettings:
        return dataclasses.replace(self, **changes)

    def endpoints(self) -> tuple[BrokerEndpoint, ...]:
        """The brokers in failover order."""
        if self.brokers:
            return tuple(parse_broker(uri, "[mqtt] brokers entry") for uri in self.brokers)
        return (BrokerEndpoint(self.host, self.port, self.tls().configured),)

    def tls(self) -> BrokerTls:
        return BrokerTls(self.tls_ca_file, self.tls_cert_file, self.tls_key_file, self.tls_check_hostname)


@dataclass(frozen=True)
class CompilerSettings:
    solc: str = _doc("", "explicit solc binary; empty = resolve (see docs: py-solc-x → PATH → solc-js)")


@dataclass(frozen=True)
class PathSettings:
    artifacts_dir: str = _doc("build/artifacts", "compiled contract artifacts (one JSON per contract)")
    deployments_dir: str = _doc("deployments", "deployment manifests, one per chain id")


#: bounds of OptimisticBilling's challenge window (its MIN_CHALLENGE_WINDOW and MAX_CHALLENGE_WINDOW)
OPTIMISTIC_WINDOW_BOUNDS = (600, 30 * 86400)


@dataclass(frozen=True)
class DeploySettings:
    """Constructor settings of the contracts, read by ``iotsettle deploy``; the manifest records them with each
    contract, and a change redeploys that contract."""

    optimistic_window: int = _doc(
        3600,
        "OptimisticBilling and OptimisticMotor: seconds a committed batch can be challenged, 600 to 2,592,000 (30 "
        "days); also the latency to money of that mode (docs/OPTIMISTIC.md)",
    )
    optimistic_bond: str = _doc(
        "0.1",
        "OptimisticBilling and OptimisticMotor: ETH a relayer bonds on each batch, > 0; a void burns half and pays "
        "half to the challenger, so half must exceed the gas of a challenge at the highest gas price you expect",
    )

    @property
    def optimistic_bond_wei(self) -> int:
        return int(decimal.Decimal(self.optimistic_bond) * 10**18)


@dataclass(frozen=True)
class OracleSettings:
    db_path: str = _doc(".state/oracle.db", "SQLite file of the oracle (WAL mode)")
    client_id: str = _doc("iotsettle-oracle-1", "fixed MQTT client id: the broker keeps the session under it")
    oracle_id: str = _doc("oracle-1", "name of this instance in status topics, logs and metrics")
    shared_group: str = _doc("", "MQTT 5 shared-subscription group; empty = plain subscription")
    route_group: str = _doc(
        "",
        "instances with the same route group split the fleet: each device's events are handled by one of them "
        "(rendezvous hash of its address over the instances online), the others acknowledge them unread; "
        "empty = handle every event received (docs/SCALING.md)",
    )
    health_port: int = _doc(9464, "port of the /health and /metrics endpoint (0 disables it)")
    health_host: str = _doc(
        "127.0.0.1", "interface of the /health and /metrics endpoint (0.0.0.0 for a remote scraper)"
    )
    batch_max_events: int = _doc(100, "settlement: most events in one transaction")
    batch_max_wait: float = _doc(0.25, "settlement: seconds the oldest event of a partial batch may wait")
    settlement_window: float = _doc(
        900.0,
        "settlement: seconds of cumulative events (meter readings, telematics reports) per agreement or policy "
        "collapsed to the newest; 0 = at each batch cut. 15 min: 1/15 of the gas per reading at one a minute, "
        "balances at most 15 min behind (docs/BENCHMARKS.md)",
    )
    max_in_flight: int = _doc(
        8, "settlement: transactions sent and not yet mined per relayer key (nonce lane), at consecutive nonces"
    )
    max_fee_gwei: float = _doc(500.0, "settlement: cap on maxFeePerGas in gwei, re-broadcasts included")
    priority_fee_gwei: float = _doc(
        0.0, "settlement: priority fee in gwei; 0 = ask the node (eth_maxPriorityFeePerGas)"
    )
    rebroadcast_after: float = _doc(
        15.0,
        "settlement and the optimistic relayer: seconds before an unmined transaction is re-sent at the same nonce "
        "with fees +12.5%",
    )
    intake_batch_size: int = _doc(512, "intake: most MQTT messages verified and committed in one SQLite transaction")
    intake_batch_latency: float = _doc(
        0.02,
        "intake: seconds the first message of a partial batch may wait; a burst still pouring in when it ends is "
        "waited for, up to four windows in all",
    )
    verify_workers: int = _doc(2, "intake: processes decoding and checking signatures; 0 = in the intake thread")
    receive_maximum: int = _doc(4096, "intake: unacknowledged QoS 1 messages the broker may have in flight to us")
    session_expiry: int = _doc(
        604800, "intake: seconds the broker keeps our session (and queues events) while we are down"
    )
    reply_qos: int = _doc(
        0,
        "intake: QoS of the replies to readings and telematics reports (deliveries and weather observations are"
        " always answered at QoS 1: devices keep them until the reply); 1 costs ~40 % of intake speed",
    )
    max_future_skew: int = _doc(300, "rules: seconds an event's timestamp may be ahead of the oracle's clock")
    max_age: int = _doc(604800, "rules: seconds an event's timestamp may be behind the oracle's clock; 0 = no limit")
    max_rate_meter: float = _doc(1000.0, "rules: register units per second a meter can advance; 0 = no limit")
    max_rate_vehicle: float = _doc(100.0, "rules: odometer metres per second a vehicle can advance; 0 = no limit")
    max_rate_weather_station: float = _doc(
        10.0, "rules: units per second a weather station register can advance; 0 = no limit"
    )
    max_speed: float = _doc(
        350.0, "rules: metres per second between two delivery locations above which it is a teleport; 0 = off"
    )
    quarantine_threshold: int = _doc(
        5, "rules: rule failures within quarantine_window that quarantine a device; 0 = never"
    )
    quarantine_window: float = _doc(3600.0, "rules: seconds over which rule failures are counted")
    registry_poll: float = _doc(1.0, "seconds between eth_getLogs polls of the DeviceRegistry's events")
    reject_retention: float = _doc(
        30 * 86400.0, "seconds a rejected message stays in the audit table; 0 keeps them forever"
    )
    min_gas_hours: float = _doc(
        24.0, "/health is degraded when the relayer balance lasts fewer hours at the last hour's gas spending; 0 = off"
    )
    balance_refresh: float = _doc(30.0, "seconds between two reads of the relayer balance from the node")
    drain_timeout: float = _doc(30.0, "seconds SIGTERM/SIGINT waits for in-flight events before exiting")
    relayer_keys: tuple[str, ...] = _doc(
        (),
        "more relayer keys, each its own nonce lane beside the [chain] key: Web3 Secret Storage files, unlocked "
        "with the [chain] keystore password (password / password_file); the variable takes a comma list "
        "(docs/SCALING.md, nonce lanes)",
    )
    relayer_private_keys: tuple[str, ...] = field(
        default=(),
        repr=False,
        metadata={
            "secret": True,
            "doc": "more relayer keys as raw hex keys, for scripts and CI (comma list in the variable); prefer "
            "relayer_keys",
        },
    )
    batch_preflight: bool = _doc(
        False,
        "settlement: run each batch with eth_call before signing, so a poison item costs no gas "
        "(halves settlement throughput on anvil); off = a batch that reverts as a whole is screened after its receipt",
    )


@dataclass(frozen=True)
class AlertsConfig:
    """Early alerts on accepted events (docs/ALERTS.md): never block settlement; 0 switches a detector off."""

    enabled: bool = _doc(True, "run the alert detectors on every accepted event")
    meter_warmup: int = _doc(10, "meter_spike: readings of an agreement before its meter's own pattern is trusted")
    meter_sigmas: float = _doc(8.0, "meter_spike: deviations above the meter's mean rate that make a spike; 0 = off")
    meter_ratio: float = _doc(10.0, "meter_spike: and times the meter's mean rate (both must hold)")
    meter_half_life: float = _doc(86400.0, "meter_spike: seconds of half-life of the meter's mean and deviation")
    stationary: float = _doc(21600.0, "tracker_stalled: seconds a tracker may stay within stationary_radius; 0 = off")
    stationary_radius: float = _doc(200.0, "tracker_stalled: metres within which a tracker counts as not moving")
    lapsed_min_distance: int = _doc(100, "lapsed_driving: odometer metres on a lapsed policy before it alerts; 0 = off")
    policy_poll: float = _doc(30.0, "lapsed_driving: seconds between reads of the reported policies' status")
    station_window: float = _doc(3600.0, "station_outlier: seconds of the stations' smoothed rainfall rate")
    station_floor: float = _doc(
        5000.0, "station_outlier: rainfall units (0.01 mm) per window above the other stations' median; 0 = off"
    )
    station_ratio: float = _doc(3.0, "station_outlier: and times the other stations' median (both must hold)")
    station_min_neighbours: int = _doc(3, "station_outlier: other reporting stations needed for a median")


@dataclass(frozen=True)
class OptimisticSettings:
    """Optimistic settlement in the daemon (docs/OPTIMISTIC.md): readings of agreements opened on OptimisticBilling
    are committed in bonded batches and the newest one per agreement is claimed after the challenge window."""

    enabled: bool = _doc(False, "accept readings signed for OptimisticBilling, commit them in batches and claim them")
    batch: int = _doc(100, "most readings in one commitment")
    interval: float = _doc(60.0, "seconds the oldest uncommitted reading may wait before a partial batch is committed")
    poll: float = _doc(5.0, "seconds between two looks at the chain for windows that ended and commits mined")


@dataclass(frozen=True)
class WatcherSettings:
    """The watcher of optimistic batches inside `iotsettle oracle run` (what `iotsettle watch` does on its own)."""

    enabled: bool = _doc(False, "run the watcher beside the daemon: challenge every bad optimistic batch")
    private_key: str = _secret(doc="the watcher's own key (hex), never the relayer's: the two would race for nonces")
    store: str = _doc("", "SQLite file of the watcher's cursor and verdicts; empty = watcher.db in [node] state_dir")
    interval: float = _doc(5.0, "seconds between two passes; keep it far below the challenge window (1 h)")


@dataclass(frozen=True)
class Config:
    chain: ChainSettings = field(default_factory=ChainSettings)
    node: NodeSettings = field(default_factory=NodeSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    compiler: CompilerSettings = field(default_factory=CompilerSettings)
    paths: PathSettings = field(default_factory=PathSettings)
    deploy: DeploySettings = field(default_factory=DeploySettings)
    oracle: OracleSettings = field(default_factory=OracleSettings)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    optimistic: OptimisticSettings = field(default_factory=OptimisticSettings)
    watcher: WatcherSettings = field(default_factory=WatcherSettings)
    #: folder relative paths are resolved against (the project: where foundry.toml and contracts/ are).
    root: Path = field(default_factory=Path.cwd)
    source: str = "defaults"

    def path(self, relative: str) -> Path:
        """A configured path made absolute against the project root."""
        candidate = Path(relative).expanduser()
        return candidate if candidate.is_absolute() else self.root / candidate

    def redacted(self) -> dict[str, dict[str, Any]]:
        """Every section as a dict, secrets replaced by ``***`` when set, URLs cut to their endpoint."""
        out: dict[str, dict[str, Any]] = {}
        for name in SECTIONS:
            section = getattr(self, name)
            out[name] = {f.name: _shown(f, getattr(section, f.name)) for f in fields(section)}
        return out

    def replace(self, section: str, **changes: Any) -> Config:
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})


def _shown(f: dataclasses.Field[Any], value: Any) -> Any:
    if f.metadata.get("secret") and value:
        return "***"
    if f.metadata.get("url"):
        return tuple(map(printable_url, value)) if isinstance(value, tuple) else printable_url(value)
    return value


SECTIONS: dict[str, type] = {
    "chain": ChainSettings,
    "node": NodeSettings,
    "mqtt": MqttSettings,
    "compiler": CompilerSettings,
    "paths": PathSettings,
    "deploy": DeploySettings,
    "oracle": OracleSettings,
    "alerts": AlertsConfig,
    "optimistic": OptimisticSettings,
    "watcher": WatcherSettings,
}


def _convert(value: Any, typ: Any, where: str) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
            return value.lower() in {"1", "true", "yes", "on"}
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value, 0)
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str and isinstance(value, str):
        return value
    elif typ == tuple[str, ...]:
        if isinstance(value, str):  # from the environment: a comma list
            return tuple(item.strip() for item in value.split(",") if item.strip())
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}")


def _project_root(config_file: Path | None) -> Path:
    """The folder holding foundry.toml: next to the config file, else the working folder, else this checkout."""
    candidates = [config_file.resolve().parent] if config_file is not None else []
    candidates += [Path.cwd(), Path(__file__).resolve().parent.parent]
    for candidate in candidates:
        if (candidate / "foundry.toml").is_file():
            return candidate
    return Path.cwd()


def load_config(
    path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None, *, read_files: bool = True
) -> Config:
    """Read the configuration; raises ConfigError naming the bad key and value.

    ``read_files=False`` ignores every file (``path``, ``IOTSETTLE_CONFIG``, ``./iotsettle.toml``): only ``env``
    and the defaults count — for stacks that must not pick up a user's settings (tests, benchmarks).
    """
    env = dict(os.environ if env is None else env)
    explicit = (path or env.get(f"{ENV_PREFIX}CONFIG")) if read_files else None
    config_file: Path | None = None
    data: dict[str, Any] = {}
    if not read_files:
        pass
    elif explicit:
        config_file = Path(explicit).expanduser()
        if not config_file.is_file():
            raise ConfigError(f"config file {config_file} does not exist")
    elif Path(DEFAULT_FILE).is_file():
        config_file = Path(DEFAULT_FILE)
    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {config_file}: {exc}") from None
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"{config_file}: unknown section(s) {sorted(unknown)}; known: {sorted(SECTIONS)}")

    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{config_file}: [{name}] must be a table")
        hints = get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        bad = set(raw) - known
        if bad:
            raise ConfigError(f"{config_file}: unknown key(s) {sorted(bad)} in [{name}]; known: {sorted(known)}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            env_key = f"{ENV_PREFIX}{name.upper()}_{f.name.upper()}"
            if env_key in env:
                values[f.name] = _convert(env[env_key], hints[f.name], env_key)
            elif f.name in raw:
                values[f.name] = _convert(raw[f.name], hints[f.name], f"[{name}] {f.name}")
        sections[name] = cls(**values)
    if sections["chain"].rpc_urls:  # rpc_url names the first endpoint, for everything that quotes one
        sections["chain"] = dataclasses.replace(sections["chain"], rpc_url=sections["chain"].rpc_urls[0])
    config = Config(**sections, root=_project_root(config_file), source=str(config_file or "defaults"))
    _validate(config)
    return config


def local_stack_config(state_dir: Path, anvil_port: int, mqtt_port: int, **env: str) -> Config:
    """A configuration for a private local stack in ``state_dir`` (its own ports, deployments and oracle
    database), from the defaults and ``env`` only: never the user's files or environment."""
    values = {
        f"{ENV_PREFIX}NODE_STATE_DIR": str(state_dir),
        f"{ENV_PREFIX}NODE_ANVIL_PORT": str(anvil_port),
        f"{ENV_PREFIX}NODE_MQTT_PORT": str(mqtt_port),
        f"{ENV_PREFIX}MQTT_PORT": str(mqtt_port),
        f"{ENV_PREFIX}CHAIN_RPC_URL": f"http://127.0.0.1:{anvil_port}",
        f"{ENV_PREFIX}PATHS_DEPLOYMENTS_DIR": str(state_dir / "deployments"),
        f"{ENV_PREFIX}ORACLE_DB_PATH": str(state_dir / "oracle.db"),
        # a private stack is for trying and testing: every reading settles at the next batch cut
        f"{ENV_PREFIX}ORACLE_SETTLEMENT_WINDOW": "0",
        **env,
    }
    return load_config(env=values, read_files=False)


def _validate(config: Config) -> None:
    for section, key in (("node", "anvil_port"), ("node", "mqtt_port"), ("mqtt", "port")):
        port = getattr(getattr(config, section), key)
        if not 0 < port < 65536:
            raise ConfigError(f"[{section}] {key} = {port} is not a TCP port")
    if not 0 <= config.oracle.health_port < 65536:
        raise ConfigError(f"[oracle] health_port = {config.oracle.health_port} is not a TCP port")
    if config.chain.confirmations < 0:
        raise ConfigError("[chain] confirmations must be ≥ 0")
    if not config.chain.rpc_url.startswith(("http://", "https://", "ws://", "wss://")):
        raise ConfigError(f"[chain] rpc_url {config.chain.rpc_url!r} must start with http(s):// or ws(s)://")
    if config.chain.timeout <= 0:
        raise ConfigError("[chain] timeout must be > 0")
    config.mqtt.endpoints()  # raises on a malformed broker URI
    if config.mqtt.tls_key_file and not config.mqtt.tls_cert_file:
        raise ConfigError("[mqtt] tls_key_file is set but tls_cert_file is not: the key belongs to a certificate")
    if not 0 <= config.node.mqtt_tls_port < 65536:
        raise ConfigError(f"[node] mqtt_tls_port = {config.node.mqtt_tls_port} is not a TCP port (0 = none)")
    if len(config.chain.rpc_urls) > 1:
        for number, url in enumerate(config.chain.rpc_urls, 1):
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"[chain] rpc_urls: endpoint {number} must start with http(s)://")
    if config.chain.max_lag < 0 or config.chain.stall <= 0 or config.chain.head_check <= 0:
        raise ConfigError("[chain] max_lag must be ≥ 0, stall and head_check > 0")
    _validate_lanes(config)
    low, high = OPTIMISTIC_WINDOW_BOUNDS
    if not low <= config.deploy.optimistic_window <= high:
        raise ConfigError(f"[deploy] optimistic_window = {config.deploy.optimistic_window}: expected {low} to {high} s")
    try:
        bond = decimal.Decimal(config.deploy.optimistic_bond)
    except decimal.InvalidOperation:
        bond = decimal.Decimal(0)
    if not bond.is_finite() or bond <= 0 or (bond * 10**18) != (bond * 10**18).to_integral_value():
        raise ConfigError(
            f"[deploy] optimistic_bond = {config.deploy.optimistic_bond!r}: expected an ETH amount > 0 "
            "with at most 18 decimals, e.g. 0.1"
        )
    if config.chain.signer not in ("keystore", "remote"):
        raise ConfigError(f"[chain] signer = {config.chain.signer!r}: expected keystore or remote")
    if config.chain.signer == "remote":
        if not config.chain.signer_url.startswith(("http://", "https://")):
            raise ConfigError("[chain] signer = remote needs signer_url, an http(s) URL")
        address = config.chain.signer_address
        if not (address.startswith("0x") and len(address) == 42):
            raise ConfigError("[chain] signer = remote needs signer_address, the 0x… account it signs for")


def _validate_lanes(config: Config) -> None:
    """``[oracle] relayer_keys`` / ``relayer_private_keys``: well-formed, each named once, never quoted (secrets)."""
    o = config.oracle
    if len(set(o.relayer_keys)) != len(o.relayer_keys):
        raise ConfigError("[oracle] relayer_keys names a keystore file twice: each key is one nonce lane")
    for number, key in enumerate(o.relayer_private_keys, 1):
        digits = key.removeprefix("0x")
        if len(digits) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digits):
            raise ConfigError(f"[oracle] relayer_private_keys: key {number} is not a 32-byte hex private key")
    if len({k.lower().removeprefix("0x") for k in o.relayer_private_keys}) != len(o.relayer_private_keys):
        raise ConfigError("[oracle] relayer_private_keys holds one key twice: each key is one nonce lane")
    if o.relayer_keys and not (config.chain.password or config.chain.password_file):
        raise ConfigError("[oracle] relayer_keys are keystores: set IOTSETTLE_CHAIN_PASSWORD or [chain] password_file")


def field_docs() -> list[tuple[str, str, Any, str, bool]]:
    """(section, key, default, description, secret) for every setting, for docs and `config show`."""
    rows = []
    for name, cls in SECTIONS.items():
        for f in fields(cls):
            rows.append((name, f.name, f.default, f.metadata.get("doc", ""), bool(f.metadata.get("secret"))))
    return rows
