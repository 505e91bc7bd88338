"""`iotsettle oracle run|status|alerts|release`: the long-running oracle daemon and a look at its store."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import click
from iotsettle.cli._common import IotSettleGroup, State, emit
from iotsettle.cli._lazy import lazy_import
from iotsettle.cli._params import CommandContext, with_context
from iotsettle.oracle.protocol.alerts import AlertKind
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    import eth_utils
    from iotsettle.oracle.daemon import alerts as daemon_alerts
    from iotsettle.oracle.daemon import checkup as daemon_checkup
    from iotsettle.oracle.daemon import intake as daemon_intake
    from iotsettle.oracle.daemon import service as daemon_service
    from iotsettle.oracle.daemon import store as daemon_store
    from iotsettle.oracle.ops import watcher as watcher_ops
else:
    eth_utils = lazy_import("eth_utils")
    daemon_checkup = lazy_import("iotsettle.oracle.daemon.checkup")
    daemon_alerts = lazy_import("iotsettle.oracle.daemon.alerts")
    daemon_intake = lazy_import("iotsettle.oracle.daemon.intake")
    daemon_service = lazy_import("iotsettle.oracle.daemon.service")
    daemon_store = lazy_import("iotsettle.oracle.daemon.store")
    watcher_ops = lazy_import("iotsettle.oracle.ops.watcher")

log = logging.getLogger(__name__)


@click.group(cls=IotSettleGroup)
def oracle() -> None:
    """The oracle daemon: MQTT intake → checks → durable store → batched settlement."""


@oracle.command()
@click.option("--intake-only", is_flag=True, help="Take in and store events but send no transactions.")
@click.option(
    "--check",
    is_flag=True,
    help="Check configuration, relayer key, chain, deployment, broker, database, health port and funds; then exit "
    "(1 when the daemon could not start or work).",
)
@with_context()
def run(cmd: CommandContext, intake_only: bool, check: bool) -> None:
    """Run the daemon until SIGTERM/SIGINT, then drain and exit 0.

    Settings: the [oracle], [mqtt] and [chain] sections (or IOTSETTLE_ORACLE_*, IOTSETTLE_MQTT_*, IOTSETTLE_CHAIN_*).
    The relayer key comes from [chain] keystore + IOTSETTLE_CHAIN_PASSWORD (or password_file); on a local chain
    without one, anvil development account 9 (0xa0Ee…9720) — never account 0, which the CLI sends from.

    With [chain] signer = "remote" the relayer signs outside the process: eth_signTransaction at [chain] signer_url
    for [chain] signer_address (Clef, Web3Signer); no key is loaded.

    More relayer keys ([oracle] relayer_keys: keystores unlocked with the [chain] password) are nonce lanes of their
    own beside the [chain] key: batches go to the lane with the fewest transactions in flight, and a target in flight
    stays on its lane until its transaction is mined (docs/SCALING.md).

    /health and /metrics listen on [oracle] health_host:health_port; /health turns "degraded" (and says how much to
    send where) when the relayer's balance lasts fewer than [oracle] min_gas_hours at the last hour's gas spending.
    Brokers: [mqtt] brokers (failover in order), TLS with [mqtt] tls_ca_file / tls_cert_file / tls_key_file.

    [optimistic] enabled: readings of agreements opened on OptimisticBilling are committed in bonded batches and the
    newest per agreement claimed after the challenge window. [watcher] enabled: the watcher of `iotsettle watch` runs
    beside the daemon with its own key (IOTSETTLE_WATCHER_PRIVATE_KEY) and challenges any relayer's bad batch.

    With several endpoints in [chain] rpc_urls the daemon moves to the next one when an endpoint does not answer or
    falls behind (/health "rpc" names the one in use; /metrics counts the switches).

    \b
    Examples:
      iotsettle --config /etc/iotsettle/iotsettle.toml oracle run --check    # test a configuration, start nothing
      iotsettle oracle run --check --json                                  # the same findings for a script
      iotsettle oracle run                                                 # the service itself
      curl -s http://127.0.0.1:9464/health                                 # from another shell: each check
      IOTSETTLE_MQTT_BROKERS=mqtts://mqtt-a:8883,mqtts://mqtt-b:8883 IOTSETTLE_MQTT_TLS_CA_FILE=ca.pem \\
        IOTSETTLE_MQTT_TLS_CERT_FILE=oracle.pem IOTSETTLE_MQTT_TLS_KEY_FILE=oracle.key iotsettle oracle run
      IOTSETTLE_CHAIN_RPC_URLS=http://node-a:8545,http://node-b:8545 iotsettle oracle run   # with failover
      IOTSETTLE_CHAIN_SIGNER=remote iotsettle oracle run   # signs at [chain] signer_url (Clef, Web3Signer)
      IOTSETTLE_ORACLE_RELAYER_KEYS=keys/lane2.json,keys/lane3.json iotsettle oracle run   # three nonce lanes
      IOTSETTLE_OPTIMISTIC_ENABLED=true iotsettle oracle run   # also relays OptimisticBilling agreements
      IOTSETTLE_WATCHER_ENABLED=true IOTSETTLE_WATCHER_PRIVATE_KEY=0x… iotsettle oracle run   # and watches batches
    """
    if check:
        findings = daemon_checkup.run_checks(cmd.config)
        failed = [f for f in findings if f.verdict == daemon_checkup.Verdict.FAIL]
        if cmd.as_json:
            cmd.emit({"ok": not failed, "findings": [f.as_dict() for f in findings]})
        else:
            colour = {"ok": "green", "warn": "yellow", "fail": "red"}
            for f in findings:
                emit(None, False, f"[{colour[f.verdict]}]{f.verdict:>4}[/] {f.name}: {escape(f.detail)}")
        cmd.click.exit(1 if failed else 0)
    root = logging.getLogger()
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)  # a daemon's operator wants its life events without -v
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    daemon_intake.prefer_fast_keccak()
    daemon = daemon_service.OracleDaemon(cmd.config, settle=not intake_only)
    watcher = None
    if cmd.config.watcher.enabled:
        # beside the daemon, not inside it: the watcher is an operation (ops), the daemon never imports one
        watcher = watcher_ops.WatchLoop(
            watcher_ops.context_of(cmd.config), watcher_ops.store_of(cmd.config), cmd.config.watcher.interval
        )
        watcher.start()
    try:
        code = daemon.run()
    finally:
        if watcher is not None:
            watcher.stop()
    cmd.click.exit(code)


def _health(host: str, port: int) -> dict[str, Any] | None:
    if not port:
        return None
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=1.0) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read() or b"{}")) or {"status": "down"}
    except (urllib.error.URLError, OSError, ValueError):
        return None


@oracle.command()
@click.option("--rejects", default=10, show_default=True, help="How many recent rejections to show.")
@with_context()
def status(cmd: CommandContext, rejects: int) -> None:
    """Backlog, last settled block, recent rejections and quarantined devices (from the oracle's database)."""
    config = cmd.config
    path = config.path(config.oracle.db_path)
    if not path.exists():
        raise click.ClickException(f"no oracle database at {path}: the daemon has not run with this configuration")
    store = daemon_store.Store.open(path)
    try:
        backlog = store.backlog()
        recent = store.recent_rejects(rejects)
        data: dict[str, Any] = {  # the --json document: one value type per key
            "database": str(path),
            "daemon": _health(config.oracle.health_host, config.oracle.health_port),
            "backlog": backlog,
            "unsettled": store.pending_count(),
            "lastSettledBlock": store.last_settled_block(),
            "rejectedByReason": store.reject_counts(),
            "recentRejects": [
                {
                    "time": row.received_at,
                    "reason": row.reason,
                    "device": row.device,
                    "seq": row.seq,
                    "detail": row.detail,
                }
                for row in recent
            ],
            "quarantined": [
                {"device": s.device, "since": s.quarantined_at, "reason": s.quarantine_reason}
                for s in store.quarantined_devices()
            ],
        }
    finally:
        store.close()
    if cmd.as_json:
        cmd.emit(data)
        return
    daemon = data["daemon"]
    emit(
        None,
        False,
        f"daemon: [bold]{daemon['status'] if daemon else 'not running (no health endpoint)'}[/bold]   database: {path}",
    )
    counts = ", ".join(f"{k} {v}" for k, v in backlog.items() if v)
    for name, check in (daemon or {}).get("checks", {}).items():
        if check["status"] != "ok":
            emit(None, False, f"[yellow]{name}[/yellow]: {escape(check['detail'])}")
    emit(None, False, f"backlog: {counts or 'empty'}")
    emit(
        None, False, f"last settled block: {data['lastSettledBlock'] if data['lastSettledBlock'] is not None else '-'}"
    )
    if data["rejectedByReason"]:
        emit(None, False, "rejected: " + ", ".join(f"{k} {v}" for k, v in data["rejectedByReason"].items()))
    if recent:
        table = Table("time", "reason", "device", "seq", "detail", title="recent rejections")
        for row in recent:
            table.add_row(
                time.strftime("%H:%M:%S", time.localtime(row.received_at)),
                row.reason,
                row.device or "-",
                "-" if row.seq is None else str(row.seq),
                row.detail[:60],
            )
        emit(table, False)
    for item in data["quarantined"]:
        emit(None, False, f"[red]quarantined[/red] {item['device']}: {item['reason']}")


def _open_store(cmd: CommandContext) -> daemon_store.Store:
    config = cmd.config
    path = config.path(config.oracle.db_path)
    if not path.exists():
        raise click.ClickException(f"no oracle database at {path}: the daemon has not run with this configuration")
    return daemon_store.Store.open(path)


def _alert_line(alert: daemon_alerts.Alert) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(alert.timestamp))
    return f"{when}  [bold]{alert.kind}[/bold]  {alert.device} {alert.event_type} seq {alert.seq}: {alert.detail}"


@oracle.command()
@click.option(
    "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many of the newest alerts to show."
)
@click.option("--kind", type=click.Choice([str(k) for k in AlertKind]), help="Only alerts of this kind.")
@click.option("--device", help="Only alerts of this device (0x…).")
@click.option("--follow", is_flag=True, help="Keep printing new alerts as the daemon raises them (Ctrl-C stops).")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between looks for new alerts (--follow).",
)
@with_context()
def alerts(
    cmd: CommandContext, limit: int, kind: str | None, device: str | None, follow: bool, interval: float
) -> None:
    """Early alerts the daemon raised on accepted events: unusual for the device, never refused (docs/ALERTS.md).

    Read from the oracle's database, also while the daemon runs. With --json: a list of alert objects (the
    alerts topic's payload, docs/PROTOCOL.md); with --follow --json: one object per line.

    \b
    Examples:
      iotsettle oracle alerts
      iotsettle oracle alerts --kind meter_spike --limit 5 --json
      iotsettle oracle alerts --follow --json
    """
    if device is not None:
        if not eth_utils.is_hex_address(device):
            raise click.BadParameter(f"{device!r} is not a 0x-prefixed 20-byte address", param_hint="--device")
        device = eth_utils.to_checksum_address(device)
    store = _open_store(cmd)
    try:
        shown = [daemon_alerts.Alert.from_row(row) for row in store.alerts(limit=limit, kind=kind, device=device)]
        if not follow:
            if cmd.as_json:
                cmd.emit([alert.as_dict() for alert in shown])
                return
            if not shown:
                emit(None, False, "no alerts")
            for alert in shown:
                emit(None, False, _alert_line(alert))
            return
        last = shown[-1].id if shown else max((row[0] for row in store.alerts(limit=1)), default=0)
        try:
            while True:
                for alert in shown:
                    if cmd.as_json:
                        click.echo(json.dumps(alert.as_dict(), sort_keys=True))
                    else:
                        emit(None, False, _alert_line(alert))
                time.sleep(interval)
                rows = store.alerts(after_id=last, limit=10_000, kind=kind, device=device)
                shown = [daemon_alerts.Alert.from_row(row) for row in rows]
                last = shown[-1].id if shown else last
        except KeyboardInterrupt:
            return
    finally:
        store.close()


@oracle.command()
@click.argument("device")
@with_context()
def release(cmd: CommandContext, device: str) -> None:
    """Let a quarantined DEVICE (its id, 0x…) send events again; works while the daemon runs."""
    if not eth_utils.is_hex_address(device):
        raise click.BadParameter(f"{device!r} is not a 0x-prefixed 20-byte address", param_hint="DEVICE")
    store = _open_store(cmd)
    try:
        released = store.release_quarantine(eth_utils.to_checksum_address(device))
    finally:
        store.close()
    if not released:
        raise click.ClickException(f"{eth_utils.to_checksum_address(device)} is not quarantined")
    cmd.emit({"released": eth_utils.to_checksum_address(device)}, f"released {eth_utils.to_checksum_address(device)}")


def main() -> None:
    """Entry point for `python -m iotsettle.cli.oracle` (the same commands as `iotsettle oracle`)."""
    oracle(prog_name="iotsettle oracle", auto_envvar_prefix="IOTSETTLE", obj=State(None))


if __name__ == "__main__":
    main()
