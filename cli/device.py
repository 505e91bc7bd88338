"""`iotsettle device ...`: device keys, on-chain registration and the fleet simulator (keygen, register, simulate),
and the owners' view of their devices in the DeviceRegistry (list, show, rotate, revoke); `device sign` is in
``device_sign``."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from eth_hash.auto import keccak
from iotsettle.cli._common import progress
from iotsettle.cli._lazy import lazy_import
from iotsettle.cli._params import ADDRESS, CommandContext, rpc_url_option, short, when, with_context
from iotsettle.cli.device_sign import sign
from iotsettle.cli.guard import approve
from iotsettle.oracle.chain.manifest import load_manifest
from iotsettle.oracle.config import Config
from iotsettle.oracle.device.weather import WeatherScenario
from iotsettle.oracle.protocol.device_kinds import DeviceKind, kind_from_name, kind_label, kind_name
from iotsettle.oracle.protocol.errors import ChainError, ConfigError, KeyFileError, ProtocolError
from rich.table import Table

if TYPE_CHECKING:
    from iotsettle.oracle.chain import connection as chain_connection
    from iotsettle.oracle.chain import deploy as chain_deploy
    from iotsettle.oracle.chain import revert as chain_revert
    from iotsettle.oracle.chain import send as chain_send
    from iotsettle.oracle.device import fleet as device_fleet
    from iotsettle.oracle.device import keys as device_keys
    from iotsettle.oracle.device import publisher as device_publisher
    from iotsettle.oracle.device import signer as device_signer
    from iotsettle.oracle.device import sim as device_sim
    from iotsettle.oracle.ops import audit, billing, escrow
    from iotsettle.oracle.ops import registry as ops
else:
    chain_connection = lazy_import("iotsettle.oracle.chain.connection")
    chain_deploy = lazy_import("iotsettle.oracle.chain.deploy")
    chain_revert = lazy_import("iotsettle.oracle.chain.revert")
    chain_send = lazy_import("iotsettle.oracle.chain.send")
    device_fleet = lazy_import("iotsettle.oracle.device.fleet")
    device_keys = lazy_import("iotsettle.oracle.device.keys")
    device_publisher = lazy_import("iotsettle.oracle.device.publisher")
    device_signer = lazy_import("iotsettle.oracle.device.signer")
    device_sim = lazy_import("iotsettle.oracle.device.sim")
    audit = lazy_import("iotsettle.oracle.ops.audit")
    billing = lazy_import("iotsettle.oracle.ops.billing")
    escrow = lazy_import("iotsettle.oracle.ops.escrow")
    ops = lazy_import("iotsettle.oracle.ops.registry")

KIND_CHOICES = [kind_name(kind) for kind in DeviceKind]
KINDS = [kind_label(kind) for kind in DeviceKind]

password_file_option = click.option(
    "--password-file",
    type=click.Path(dir_okay=False),
    envvar="IOTSETTLE_DEVICE_PASSWORD_FILE",
    help="File holding the device keystore password (else IOTSETTLE_DEVICE_PASSWORD).",
)


class FaultList(click.ParamType):
    """A comma-separated list of fault classes, or "all"."""

    name = "faults"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[device_fleet.FaultClass, ...]:
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        if not text:
            return ()
        if text == "all":
            return tuple(device_fleet.FaultClass)
        faults: list[device_fleet.FaultClass] = []
        for item in text.split(","):
            try:
                faults.append(device_fleet.FaultClass(item.strip()))
            except ValueError:
                self.fail(
                    f"{item.strip()!r} is not a fault class (all, {', '.join(device_fleet.FaultClass)})", param, ctx
                )
        return tuple(faults)


@click.group("device")
def device() -> None:
    """Device keys, on-chain registration, signing events and the fleet simulator (see docs/PROTOCOL.md)."""


device.add_command(sign)
device.add_command(approve)


@device.command("keygen")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    envvar="IOTSETTLE_DEVICE_KEY_DIR",
    help="Folder for the keystore file <address>.json.",
)
@click.option("--kind", type=click.Choice(KIND_CHOICES), help="Device kind, remembered in the keystore for `register`.")
@password_file_option
@click.option("--light-kdf", is_flag=True, help="Fast key derivation: throw-away test and demo keys only.")
@with_context()
def keygen(cmd: CommandContext, out_dir: str, kind: str | None, password_file: str | None, light_kdf: bool) -> None:
    """Create a device key in a new keystore file (mode 0600) and print its address.

    The password comes from IOTSETTLE_DEVICE_PASSWORD or --password-file, never from a flag. An existing
    file is never overwritten.
    """
    password = device_keys.resolve_password(password_file)
    key = device_keys.create_keystore(
        out_dir,
        password,
        kind=kind_from_name(kind) if kind else None,
        kdf="pbkdf2" if light_kdf else "scrypt",
        iterations=1024 if light_kdf else None,
    )
    data = {"address": key.address, "keyFile": str(key.path), "kind": kind, "clientId": key.client_id}
    if cmd.as_json:
        cmd.emit(data)
    else:
        click.echo(key.address)
        progress(f"keystore written to {key.path} (MQTT client id {key.client_id})")


@device.command("register")
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    envvar="IOTSETTLE_DEVICE_KEY",
    help="The device's keystore file.",
)
@click.option("--kind", type=click.Choice(KIND_CHOICES), help="Device kind (default: the one stored by keygen).")
@click.option(
    "--owner-key",
    type=click.Path(exists=True, dir_okay=False),
    envvar="IOTSETTLE_OWNER_KEY",
    help="Keystore of the owner account that sends the transaction (password: IOTSETTLE_CHAIN_PASSWORD "
    "or [chain] password_file). Default: the configured sender ([chain] keystore, "
    "IOTSETTLE_CHAIN_PRIVATE_KEY, or anvil's first dev account on a local chain).",
)
@click.option("--metadata", help="Free text (serial number, model, site) whose keccak256 is stored on-chain.")
@click.option(
    "--valid-for",
    type=click.IntRange(60, 7 * 86_400),
    default=3_600,
    show_default=True,
    help="Seconds the device's registration signature stays valid.",
)
@rpc_url_option("JSON-RPC endpoint (default from the configuration).")
@password_file_option
@with_context()
def register(
    cmd: CommandContext,
    key_file: str,
    kind: str | None,
    owner_key: str | None,
    metadata: str | None,
    valid_for: int,
    rpc_url: str | None,
    password_file: str | None,
) -> None:
    """Register a device in the DeviceRegistry, owned by the sending account.

    The device key signs the EIP-712 Registration (its consent to this owner), the owner account sends
    `register`. The registry checks the signature itself.
    """
    config = cmd.config
    device_key = device_keys.load_keystore(key_file, device_keys.resolve_password(password_file))
    device_kind = kind_from_name(kind) if kind else device_key.kind
    if device_kind is None:
        raise ConfigError(f"{key_file} does not record a device kind; pass --kind")
    if owner_key:
        config = config.replace("chain", keystore=str(Path(owner_key).resolve()))
    chain = chain_connection.connect(config, rpc_url)
    owner = chain_connection.load_sender(config, chain)
    manifest = load_manifest(config, chain.chain_id)
    registry = chain_deploy.contract(chain, config, manifest, "DeviceRegistry")
    metadata_hash = keccak(metadata.encode()) if metadata else bytes(32)
    deadline = int(chain.w3.eth.get_block("latest")["timestamp"]) + valid_for
    digest, signature = device_signer.sign_registration(
        device_key,
        owner=owner.address,
        kind=device_kind,
        metadata_hash=metadata_hash,
        deadline=deadline,
        chain_id=chain.chain_id,
        registry=registry.address,
    )
    on_chain = bytes(
        registry.functions.hashRegistration(
            device_key.address, owner.address, int(device_kind), metadata_hash, deadline
        ).call()
    )
    if on_chain != digest:
        raise ProtocolError(
            f"the registry at {registry.address} computes another Registration digest (0x{on_chain.hex()}) than "
            f"this toolkit (0x{digest.hex()}); the contract and oracle/protocol/eip712.py disagree"
        )
    existing = registry.functions.deviceOf(device_key.address).call()
    if existing[0] != "0x" + "00" * 20:
        raise ChainError(f"device {device_key.address} is already registered (owner {existing[0]})")
    if not cmd.as_json:
        progress(
            f"registering {device_key.address} as {kind_name(device_kind)} to {owner.address} on chain {chain.chain_id}"
        )
    data_field = registry.encode_abi(
        "register", args=[device_key.address, int(device_kind), metadata_hash, deadline, signature]
    )
    receipt = chain_send.send(
        chain,
        owner,
        {"to": registry.address, "data": data_field},
        decode=chain_send.would_revert(chain_revert.ErrorDecoder([registry.abi])),
    )
    data = {
        "device": device_key.address,
        "owner": owner.address,
        "kind": kind_name(device_kind),
        "metadataHash": "0x" + metadata_hash.hex(),
        "registry": registry.address,
        "chainId": chain.chain_id,
        "tx": "0x" + bytes(receipt["transactionHash"]).hex(),
        "block": receipt["blockNumber"],
    }
    cmd.emit(
        data,
        f"registered [bold]{device_key.address}[/bold] ({data['kind']}) to {owner.address} in block {data['block']}",
    )


def _fleet_contracts(config: Config, fleet: device_fleet.Fleet) -> device_signer.Contracts:
    if fleet.contracts is not None:
        return fleet.contracts
    return device_fleet.contracts_from_manifest(load_manifest(config, fleet.chain_id))


@device.command("simulate")
@click.option(
    "--fleet",
    "fleet_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    envvar="IOTSETTLE_FLEET",
    help="Fleet file (JSON; see docs/PROTOCOL.md, 'Fleet file').",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.001),
    default=100.0,
    show_default=True,
    help="Readings per second across the fleet (tracker deliveries come on top, at arrival).",
)
@click.option("--duration", type=click.FloatRange(min=0.001), default=30.0, show_default=True, help="Seconds to run.")
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, fleet and start time: same payloads.")
@click.option("--start-time", type=int, help="Unix time of the first event (default: now); fix it to reproduce a run.")
@click.option("--broker-host", help="MQTT broker host (default: [mqtt] host).")
@click.option("--broker-port", type=click.IntRange(1, 65535), help="MQTT broker port (default: [mqtt] port).")
@click.option(
    "--broker",
    "brokers",
    multiple=True,
    metavar="URI",
    help="Broker mqtt://host:port or mqtts://host:port; repeat for failover in order (default: [mqtt] brokers).",
)
@click.option(
    "--tls-ca-file", type=click.Path(dir_okay=False), help="CA of the TLS brokers (default: [mqtt] tls_ca_file)."
)
@click.option(
    "--tls-cert-file",
    type=click.Path(dir_okay=False),
    help="Client certificate for mutual TLS (default: [mqtt] tls_cert_file).",
)
@click.option(
    "--tls-key-file",
    type=click.Path(dir_okay=False),
    help="Its private key, never printed (default: [mqtt] tls_key_file).",
)
@click.option(
    "--faults",
    type=FaultList(),
    default="",
    help="Fault classes to inject, comma-separated, or 'all' (docs/PROTOCOL.md section 11; 'hostile' makes "
    "a weather station lie in every observation).",
)
@click.option(
    "--weather",
    type=click.Choice([scenario.value for scenario in WeatherScenario]),
    default="normal",
    show_default=True,
    envvar="IOTSETTLE_SIM_WEATHER",
    help="What the honest weather stations observe (a hostile station claims the opposite).",
)
@click.option(
    "--fault-count",
    type=click.IntRange(1, 1000),
    default=3,
    show_default=True,
    help="Bad events per chosen device and class (the oracle quarantines after 5 by default).",
)
@click.option(
    "--max-inflight",
    type=click.IntRange(1, 65_000),
    default=1000,
    show_default=True,
    help="Unacknowledged QoS 1 messages allowed in flight.",
)
@click.option(
    "--buffer",
    "buffer_path",
    type=click.Path(dir_okay=False),
    help="On-disk offline buffer (SQLite); default in memory: a killed simulator forgets its backlog.",
)
@click.option(
    "--reply-wait",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Seconds to wait for the oracle's replies after the last acknowledgement.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the payloads as JSON lines on stdout instead of publishing (sequence numbers from 1, "
    "nothing persisted).",
)
@password_file_option
@with_context()
def simulate(
    cmd: CommandContext,
    fleet_file: str,
    rate: float,
    duration: float,
    seed: int,
    start_time: int | None,
    broker_host: str | None,
    broker_port: int | None,
    brokers: tuple[str, ...],
    tls_ca_file: str | None,
    tls_cert_file: str | None,
    tls_key_file: str | None,
    faults: tuple[device_fleet.FaultClass, ...],
    weather: str,
    fault_count: int,
    max_inflight: int,
    buffer_path: str | None,
    reply_wait: float,
    dry_run: bool,
    password_file: str | None,
) -> None:
    """Run a fleet of simulated devices that sign events and publish them over MQTT.

    Meters sign readings, trackers deliveries, vehicles readings (agreementId) and/or telematics reports
    (policyId), weather stations observations, wearables an activity summary (the tier only) of each finished
    period of their health policy (policyId, cover; activityProfile sedentary, active or athlete).
    Progress (events/s) goes to stderr; --json prints a summary for scripts on stdout at the end, including every
    injected fault with its (device, seq) and the oracle's replies if one is running. The exit status is 1 when
    some events were never acknowledged by the broker.

    \b
    Examples:
      iotsettle device simulate --fleet fleet.json --rate 100 --duration 30 --seed 1
      iotsettle device simulate --fleet fleet.json --weather drought --faults hostile,behaviour_rollback --json
      iotsettle device simulate --fleet fleet.json --broker mqtts://127.0.0.1:8883 --broker mqtt://127.0.0.1:1883 \\
        --tls-ca-file .state/tls/ca.pem --tls-cert-file sim.pem --tls-key-file sim.key
    """
    fleet = device_fleet.load_fleet(fleet_file, password_file=password_file)
    contracts = _fleet_contracts(cmd.config, fleet)
    if dry_run:
        plan = device_sim.plan_events(
            fleet,
            contracts,
            rate=rate,
            duration=duration,
            seed=seed,
            start_time=start_time,
            faults=faults,
            fault_count=fault_count,
            counters="memory",
            weather=weather,
        )
        count = 0
        for event in plan:
            line: dict[str, Any] = {
                "offset": round(event.offset, 6),
                "topic": event.topic,
                "payload": json.loads(event.payload),
            }
            if event.fault is not None:
                line["fault"] = str(event.fault)
            click.echo(json.dumps(line, separators=(",", ":")))
            count += 1
        progress(f"{count} payloads planned ({len(plan.injected)} faults)")
        return
    mqtt = cmd.config.mqtt.replace(
        host=broker_host or cmd.config.mqtt.host,
        port=broker_port or cmd.config.mqtt.port,
        brokers=brokers or (() if broker_host or broker_port else cmd.config.mqtt.brokers),
        tls_ca_file=tls_ca_file or cmd.config.mqtt.tls_ca_file,
        tls_cert_file=tls_cert_file or cmd.config.mqtt.tls_cert_file,
        tls_key_file=tls_key_file or cmd.config.mqtt.tls_key_file,
    )
    endpoints = mqtt.endpoints()
    broker = device_publisher.BrokerSettings(
        endpoints[0].host,
        endpoints[0].port,
        client_id=f"sim-{os.getpid():x}-{int(time.time()) & 0xFFFF:04x}",
        keepalive=mqtt.keepalive,
        username=mqtt.username or None,
        password=mqtt.password or None,
        tls_ca_file=mqtt.tls_ca_file or None,
        tls_cert_file=mqtt.tls_cert_file or None,
        tls_key_file=mqtt.tls_key_file or None,
        tls_check_hostname=mqtt.tls_check_hostname,
        brokers=endpoints,
        clean_session=True,
    )
    if not cmd.as_json:
        progress(
            f"simulating {len(fleet.devices)} devices ({_kinds(fleet)}) at {rate:g} events/s for {duration:g} s "
            f"→ {', '.join(map(str, endpoints))}"
        )

    def show(report: device_sim.ProgressReport) -> None:
        link = "" if report.connected else "  [yellow](broker unreachable, buffering)[/yellow]"
        progress(
            f"{report.elapsed:6.1f} s  sent {report.submitted:>8}  acked {report.acknowledged:>8}  "
            f"{report.rate:8.0f} events/s  pending {report.pending}{link}"
        )

    result = device_sim.run_simulation(
        fleet,
        contracts,
        broker,
        rate=rate,
        duration=duration,
        seed=seed,
        start_time=start_time,
        faults=faults,
        fault_count=fault_count,
        max_inflight=max_inflight,
        buffer_path=buffer_path or ":memory:",
        reply_wait=reply_wait,
        progress=show,
        announce=progress,
        weather=weather,
    )
    summary = result.as_dict()
    if cmd.as_json:
        cmd.emit(summary)
        if result.unacknowledged:
            sys.exit(1)
        return
    table = Table("", "value", title="simulation summary")
    for label, value in (
        ("events planned", result.planned),
        ("acknowledged by the broker", result.acknowledged),
        ("not acknowledged", result.unacknowledged),
        ("achieved rate", f"{result.achieved_rate:.0f} events/s (target {rate:g})"),
        ("events by type", ", ".join(f"{k} {v}" for k, v in sorted(result.by_type.items()))),
        ("faults injected", len(result.faults)),
        ("oracle replies", ", ".join(f"{k} {v}" for k, v in sorted(result.replies.items())) or "none"),
    ):
        table.add_row(label, str(value))
    cmd.emit(summary, table)
    if result.unacknowledged:
        sys.exit(1)


def _kinds(fleet: device_fleet.Fleet) -> str:
    return ", ".join(f"{count} {name}" for name, count in fleet.by_kind().items() if count)


@device.command("list")
@click.option("--owner", type=ADDRESS, default=None, help="Only devices registered by this owner.")
@click.option("--kind", type=click.Choice(KINDS), default=None, help="Only devices of this kind.")
@with_context(rpc=True)
def list_cmd(cmd: CommandContext, owner: str | None, kind: str | None) -> None:
    """List registered devices (from the registry's DeviceRegistered events) with kind, status and current key.

    \b
    Example:
      iotsettle device list --owner 0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266 --kind meter
    """
    views = ops.list_devices(cmd.ops, owner=owner, kind=kind)
    table = Table(
        "device",
        "kind",
        "status",
        "owner",
        "current key",
        "rotations",
        "registered (UTC)",
        title=f"{len(views)} devices",
    )
    for v in views:
        table.add_row(
            v.device, v.kind, v.status, short(v.owner), short(v.key), str(v.rotations), when(v.registered_at)[:16]
        )
    cmd.emit([v.as_dict() for v in views], table)


@device.command("show")
@click.argument("device_id", type=ADDRESS)
@with_context(rpc=True)
def show(cmd: CommandContext, device_id: str) -> None:
    """One device: owner, kind, status, current key, and the agreements and escrows that name it.

    \b
    Example:
      iotsettle device show 0xE7Bdb680F38e39652AdAE124F801EAF18557B714
    """
    view = ops.device_of(cmd.ops, device_id)
    agreements, escrows, _tokens = audit.device_targets(cmd.ops, view.device)
    data = {**view.as_dict(), "agreements": [str(a) for a in agreements], "escrows": escrows}
    table = Table(show_header=False, title=f"device {view.device}")
    for key, value in [
        ("kind", view.kind),
        ("status", view.status),
        ("owner", view.owner),
        ("current key", view.key),
        ("rotations", str(view.rotations)),
        ("registered", when(view.registered_at)),
        ("metadata hash", view.metadata_hash),
    ]:
        table.add_row(key, value)
    for agreement_id in agreements:
        a = billing.agreement_of(cmd.ops, agreement_id)
        table.add_row("agreement", f"{hex(agreement_id)} ({a.status}, register {a.last_value})")
    for escrow_id in escrows:
        table.add_row("escrow", f"{escrow_id} ({escrow.escrow_of(cmd.ops, escrow_id).state})")
    cmd.emit(data, table)


def _new_key(keystore: str | None, key_env: str | None, password_file: str | None) -> device_keys.DeviceKey:
    if (keystore is None) == (key_env is None):
        raise click.UsageError("give exactly one of --new-keystore or --new-key-env")
    if keystore is not None:
        return device_keys.load_keystore(keystore, device_keys.resolve_password(password_file))
    assert key_env is not None
    value = os.environ.get(key_env, "")
    if not value:
        raise KeyFileError(f"the environment variable {key_env} is empty or not set")
    return device_keys.DeviceKey.from_private_key(value)


@device.command("rotate")
@click.argument("device_id", type=ADDRESS)
@click.option(
    "--new-keystore",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Keystore of the new key (`iotsettle device keygen` makes one); it signs its consent.",
)
@click.option("--new-key-env", metavar="NAME", default=None, help="Or: environment variable holding the new hex key.")
@password_file_option
@with_context(sender=True)
def rotate(
    cmd: CommandContext, device_id: str, new_keystore: str | None, new_key_env: str | None, password_file: str | None
) -> None:
    """Owner: move a device to a new signing key; the old key's signatures stop settling at once.

    The device id (its first key's address) stays, so agreements and escrows keep working with the new key.
    Keys are single-use: a key that was ever registered or rotated in cannot be used again.

    \b
    Example:
      iotsettle device keygen --out keys/ --kind meter            # on the device
      iotsettle device rotate 0xDEVICE --new-keystore keys/0xNEW.json
    """
    key = _new_key(new_keystore, new_key_env, password_file)
    before = ops.device_of(cmd.ops, device_id)
    result = ops.rotate(cmd.ops, device_id, key)
    cmd.emit(
        {
            "device": before.device,
            "oldKey": before.key,
            "newKey": key.address,
            "tx": result.tx_hash,
            "block": result.block,
        },
        f"device {before.device}: key {before.key} → {key.address} (tx {result.tx_hash})",
    )


@device.command("revoke")
@click.argument("device_id", type=ADDRESS)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_context(sender=True)
def revoke(cmd: CommandContext, device_id: str, yes: bool) -> None:
    """Owner: revoke a device for good (a stolen or broken device); nothing it signs settles any more.

    \b
    Example:
      iotsettle device revoke 0xE7Bdb680F38e39652AdAE124F801EAF18557B714 --yes
    """
    if not yes:
        click.confirm(f"Revoke device {device_id} for good?", abort=True)
    result = ops.revoke(cmd.ops, device_id)
    cmd.emit(
        {"device": device_id, "tx": result.tx_hash, "block": result.block},
        f"device {device_id} revoked (tx {result.tx_hash})",
    )
