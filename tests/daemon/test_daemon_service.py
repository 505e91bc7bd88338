"""The daemon as operators run it (`python -m iotsettle.cli.oracle run`, a real process) against anvil + mosquitto:
kill -9 before the store commit loses nothing, SIGTERM drains and exits 0, and bad start-up conditions are
refused with a clear one-line error."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from eth_account import Account
from iotsettle.oracle.chain.connection import ANVIL_DEV_KEYS
from iotsettle.oracle.chain.node import Anvil, free_port
from iotsettle.oracle.daemon.service import status_topic
from iotsettle.oracle.daemon.store import Store
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.testing.devices import Publisher
from iotsettle.oracle.testing.wait import wait_for

from tests.kit.daemon import RELAYER_KEY, DaemonProcess
from tests.kit.devices import OWNER, ChainRegistry, Device
from tests.kit.stack import REPO


def readings(device: Device, count: int, first_seq: int = 1) -> list[tuple[str, bytes]]:
    now = int(time.time()) - count
    return [
        (device.topic, device.reading(seq, 1_000 + seq, timestamp=now + seq))
        for seq in range(first_seq, first_seq + count)
    ]


def test_sigkill_between_receive_and_commit_loses_nothing(
    tmp_path: Path,
    deployment: Any,
    mosquitto: Any,
    registry: ChainRegistry,
    daemons: list[DaemonProcess],
) -> None:
    device = registry.register(DeviceKind.METER)
    # A batch window of 60 s keeps received messages in the daemon, unacknowledged and not stored.
    daemon = DaemonProcess(
        tmp_path,
        deployment,
        mosquitto,
        IOTSETTLE_ORACLE_INTAKE_BATCH_LATENCY="60",
        IOTSETTLE_ORACLE_INTAKE_BATCH_SIZE="100000",
    )
    daemons.append(daemon)
    daemon.start("--intake-only").wait_ready()
    publisher = Publisher(mosquitto.host, mosquitto.port, device.chain_id)
    try:
        publisher.publish_many(readings(device, 25))
        wait_for(lambda: daemon.metric("iotsettle_oracle_intake_queue") == 25, 10, "25 messages received")
        daemon.kill()  # SIGKILL: no drain, no ack, no offline message
        assert daemon.stored() == 0

        # The same client id resumes its session: the broker redelivers all 25.
        daemon.start("--intake-only", IOTSETTLE_ORACLE_INTAKE_BATCH_LATENCY="0.01").wait_ready()
        wait_for(lambda: daemon.stored() == 25, 20, "25 redelivered events stored")
        replies = publisher.collect(25, timeout=10)
        assert {body["status"] for _, body in replies} == {"accepted"}
    finally:
        publisher.close()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    store = Store.open(daemon.db)
    assert [e.seq for e in store.events_of_device(device.address)] == list(range(1, 26))
    store.close()

    # `iotsettle oracle status` reads the same database
    from click.testing import CliRunner
    from iotsettle.cli._common import State
    from iotsettle.cli.oracle import oracle

    env = {k: v for k, v in daemon.env.items() if k.startswith("IOTSETTLE_")}
    result = CliRunner().invoke(oracle, ["status", "--json"], env=env, obj=State(None))
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert (status["backlog"]["pending"], status["unsettled"], status["daemon"]) == (25, 25, None)


def test_sigterm_drains_the_queue_and_exits_zero(
    tmp_path: Path,
    deployment: Any,
    mosquitto: Any,
    registry: ChainRegistry,
    daemons: list[DaemonProcess],
) -> None:
    device = registry.register(DeviceKind.METER)
    daemon = DaemonProcess(
        tmp_path,
        deployment,
        mosquitto,
        IOTSETTLE_ORACLE_INTAKE_BATCH_LATENCY="30",
        IOTSETTLE_ORACLE_INTAKE_BATCH_SIZE="100000",
    )
    daemons.append(daemon)
    statuses: list[dict[str, Any]] = []
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    watcher.on_message = lambda c, u, m: statuses.append(json.loads(m.payload))
    watcher.connect(mosquitto.host, mosquitto.port)
    watcher.subscribe(status_topic(device.chain_id, daemon.oracle_id), qos=1)
    watcher.loop_start()
    publisher = Publisher(mosquitto.host, mosquitto.port, device.chain_id)
    try:
        daemon.start("--intake-only").wait_ready()
        wait_for(lambda: statuses and statuses[-1]["status"] == "online", 10, "retained online status")
        publisher.publish_many(readings(device, 30))
        wait_for(lambda: daemon.metric("iotsettle_oracle_intake_queue") == 30, 10, "30 messages received")
        assert daemon.stored() == 0
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
        assert daemon.stored() == 30  # drained: stored before exit, not left for redelivery
        assert {body["status"] for _, body in publisher.collect(30)} == {"accepted"}
        wait_for(lambda: statuses[-1]["status"] == "offline", 10, "retained offline status")

        # They were acknowledged too: a restart gets nothing redelivered.
        daemon.start("--intake-only", IOTSETTLE_ORACLE_INTAKE_BATCH_LATENCY="0.01").wait_ready()
        time.sleep(1.0)
        assert daemon.metric("iotsettle_oracle_received_total") == 0
        assert daemon.stored() == 30
    finally:
        publisher.close()
        watcher.disconnect()
        watcher.loop_stop()
    daemon.signal(signal.SIGINT)
    assert daemon.wait(30) == 0


def test_world_readable_or_wrongly_unlocked_key_is_refused(
    tmp_path: Path,
    deployment: Any,
    mosquitto: Any,
) -> None:
    keystore = tmp_path / "relayer.json"
    keystore.write_text(json.dumps(Account.encrypt(RELAYER_KEY, "correct horse", iterations=2)))
    keystore.chmod(0o644)
    daemon = DaemonProcess(
        tmp_path,
        deployment,
        mosquitto,
        IOTSETTLE_CHAIN_PRIVATE_KEY="",
        IOTSETTLE_CHAIN_KEYSTORE=str(keystore),
        IOTSETTLE_CHAIN_PASSWORD="correct horse",
    )
    code, output = daemon.run_to_exit()
    assert code != 0
    assert "readable by other users" in output and "Traceback" not in output

    keystore.chmod(0o600)
    code, output = daemon.run_to_exit(IOTSETTLE_CHAIN_PASSWORD="wrong")
    assert code != 0
    assert "wrong password" in output and "Traceback" not in output
    assert not daemon.db.exists() or daemon.stored() == 0


def test_wrong_chain_or_a_fresh_node_is_refused(tmp_path: Path, deployment: Any, mosquitto: Any) -> None:
    daemon = DaemonProcess(tmp_path, deployment, mosquitto)
    code, output = daemon.run_to_exit(IOTSETTLE_CHAIN_CHAIN_ID="1")
    assert code != 0
    assert "expects chain 1" in output and "Traceback" not in output

    # A fresh anvil with the same chain id: different genesis, no contract code → refused.
    fresh = Anvil(deployment.config, state_dir=tmp_path / "fresh", port=free_port())
    fresh.start()
    try:
        code, output = daemon.run_to_exit(IOTSETTLE_CHAIN_RPC_URL=fresh.endpoint)
    finally:
        fresh.stop()
    assert code != 0
    assert "iotsettle deploy" in output and "Traceback" not in output


def _metered_agreement(
    deployment: Any,
    registry: ChainRegistry,
    price: int,
    start: int,
    *,
    close_now: bool = False,
) -> tuple[Device, int]:
    """A registered meter and an accepted ETH agreement on a flat tariff (notice 0); with ``close_now`` the consumer
    has requested the close, so the agreement ends at once."""
    from iotsettle.oracle.chain.send import send

    consumer = Account.from_key(ANVIL_DEV_KEYS[2])
    chain, billing = deployment.chain, deployment.contract("MeteredBilling")

    def tx(account: Any, call: Any, value: int = 0) -> dict[str, Any]:
        return send(chain, account, call.build_transaction({"from": account.address, "value": value}))

    receipt = tx(OWNER, billing.functions.createTariff([(0, price)]))
    tariff = billing.events.TariffCreated().process_receipt(receipt)[0]["args"]["tariffId"]
    meter = registry.register(DeviceKind.METER)
    receipt = tx(OWNER, billing.functions.offer(consumer.address, meter.address, tariff, "0x" + "00" * 20, start, 0))
    agreement = billing.events.AgreementOffered().process_receipt(receipt)[0]["args"]["agreementId"]
    tx(consumer, billing.functions.accept(agreement, 10**18, start), value=10**18)
    if close_now:
        tx(consumer, billing.functions.requestClose(agreement))
    return meter, agreement


def test_signed_readings_become_a_payment_through_the_daemon(
    tmp_path: Path,
    deployment: Any,
    mosquitto: Any,
    registry: ChainRegistry,
    daemons: list[DaemonProcess],
) -> None:
    chain, billing = deployment.chain, deployment.contract("MeteredBilling")
    price, start = 10, 1_000
    meter, agreement = _metered_agreement(deployment, registry, price, start)

    # verification in two worker processes, as the daemon runs by default
    daemon = DaemonProcess(
        tmp_path, deployment, mosquitto, IOTSETTLE_ORACLE_BATCH_MAX_WAIT="0.2", IOTSETTLE_ORACLE_VERIFY_WORKERS="2"
    )
    daemons.append(daemon)
    daemon.start().wait_ready()
    publisher = Publisher(mosquitto.host, mosquitto.port, meter.chain_id)
    try:
        now = int(chain.w3.eth.get_block("latest")["timestamp"])  # readings must follow the acceptance
        items = [
            (meter.topic, meter.reading(seq, start + 25 * seq, timestamp=now + seq, agreement=agreement))
            for seq in range(1, 5)
        ]
        items.append(items[-1])  # a device retry: answered duplicate, paid once
        publisher.publish_many(items)
        assert sorted(body["status"] for _, body in publisher.collect(5)) == ["accepted"] * 4 + ["duplicate"]
        wait_for(lambda: billing.functions.earningsOf(agreement).call() == 100 * price, 30, "the meter's earnings")
    finally:
        publisher.close()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(60) == 0
    assert billing.functions.earningsOf(agreement).call() == 100 * price  # cumulative: 4 readings, one payment of Δ100


def test_health_endpoint_reports_the_worst_check_and_serves_metrics() -> None:
    from iotsettle.oracle.daemon.health import Health, State
    from iotsettle.oracle.daemon.metrics import Metrics

    metrics = Metrics("t")
    states = {"mqtt": (State.OK, "connected"), "registry": (State.OK, "next block 9")}
    health = Health(metrics, port=0)
    for name in states:
        health.add_check(name, lambda name=name: states[name])
    metrics.stored.inc(3)
    health.start()
    try:

        def get(path: str) -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health.port}{path}", timeout=5) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        assert get("/health")[0] == 200 and json.loads(get("/health")[1])["status"] == "ok"
        states["registry"] = (State.DEGRADED, "node unreachable")  # e.g. anvil stopped: settlement waits
        code, body = get("/health")
        assert (code, json.loads(body)["status"]) == (200, "degraded")
        assert json.loads(body)["checks"]["registry"]["detail"] == "node unreachable"
        states["mqtt"] = (State.DOWN, "not connected to the broker")  # intake stopped: probes must see it
        assert get("/health")[0] == 503
        assert b"iotsettle_oracle_stored_total 3.0" in get("/metrics")[1]
        assert get("/nope")[0] == 404
    finally:
        health.stop()


def test_oracle_release_lets_a_quarantined_device_back_in(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from iotsettle.cli._common import State
    from iotsettle.cli.oracle import oracle
    from iotsettle.oracle.daemon.store import DeviceState

    db = tmp_path / "oracle.db"
    device = Account.create().address
    store = Store.open(db)
    store.commit_batch(
        [],
        [],
        [DeviceState(device, last_seq=3, failures=5, quarantined_at=time.time(), quarantine_reason="5 rule failures")],
    )
    env = {
        "IOTSETTLE_CONFIG": str(REPO / "tests" / "empty.toml"),
        "IOTSETTLE_ORACLE_DB_PATH": str(db),
        "IOTSETTLE_ORACLE_HEALTH_PORT": "0",
    }
    status = json.loads(CliRunner().invoke(oracle, ["status", "--json"], env=env, obj=State(None)).output)
    assert [q["device"] for q in status["quarantined"]] == [device]

    result = CliRunner().invoke(oracle, ["release", device.lower()], env=env, obj=State(None))
    assert result.exit_code == 0, result.output
    assert store.quarantined_devices() == [] and store.device_state(device).last_seq == 3  # type: ignore[union-attr]
    again = CliRunner().invoke(oracle, ["release", device], env=env, obj=State(None))
    assert again.exit_code != 0 and "is not quarantined" in again.output
    store.close()


def test_rejected_messages_leave_the_audit_table_after_the_retention(
    tmp_path: Path,
    deployment: Any,
    mosquitto: Any,
    daemons: list[DaemonProcess],
) -> None:
    """A device sending garbage cannot fill the disk: rejected rows are pruned after [oracle] reject_retention."""
    daemon = DaemonProcess(tmp_path, deployment, mosquitto, IOTSETTLE_ORACLE_REJECT_RETENTION="3")
    daemons.append(daemon)
    publisher = Publisher(mosquitto.host, mosquitto.port)
    try:
        daemon.start("--intake-only").wait_ready()
        publisher.publish(Device().topic, b'{"not": "an event"}')

        def rejected_rows() -> int:
            store = Store.open(daemon.db)
            try:
                return sum(store.reject_counts().values())
            finally:
                store.close()

        wait_for(lambda: rejected_rows() == 1, 10, "the malformed message in the audit table")
        wait_for(lambda: rejected_rows() == 0, 15, "the audit row pruned after its 3 s retention")
        assert daemon.proc is not None and daemon.proc.poll() is None  # pruning left the daemon serving
    finally:
        publisher.close()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0


def test_a_reading_signed_after_the_close_time_makes_way_for_the_last_one_before_it(
    tmp_path: Path,
    deployment: Any,
    mosquitto: Any,
    registry: ChainRegistry,
    daemons: list[DaemonProcess],
) -> None:
    """The planner relays only the newest reading of a window; when that one was signed after the agreement's
    closeAt the contract refuses it (AfterEnd), and the daemon relays the newest earlier one instead, which still
    settles during the grace period: the consumption up to the end is billed, not lost to the daemon's batching."""
    _chain, billing = deployment.chain, deployment.contract("MeteredBilling")
    price, start = 10, 1_000
    meter, agreement = _metered_agreement(deployment, registry, price, start, close_now=True)  # notice 0: ends now
    close_at = billing.functions.agreementOf(agreement).call()[7]
    assert close_at > 0

    daemon = DaemonProcess(
        tmp_path, deployment, mosquitto, IOTSETTLE_ORACLE_BATCH_MAX_WAIT="0.1", IOTSETTLE_ORACLE_SETTLEMENT_WINDOW="1.5"
    )
    daemons.append(daemon)
    daemon.start().wait_ready()
    publisher = Publisher(mosquitto.host, mosquitto.port, meter.chain_id)
    try:
        publisher.publish_many(
            [
                (meter.topic, meter.reading(1, start + 100, timestamp=close_at, agreement=agreement)),
                (meter.topic, meter.reading(2, start + 150, timestamp=close_at + 1, agreement=agreement)),
            ]
        )
        assert [body["status"] for _, body in publisher.collect(2)] == ["accepted", "accepted"]
        wait_for(
            lambda: billing.functions.earningsOf(agreement).call() == 100 * price,
            30,
            "the reading signed by closeAt to be billed",
        )
    finally:
        publisher.close()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(60) == 0
    assert billing.functions.earningsOf(agreement).call() == 100 * price, "the reading after closeAt is never billed"
    import sqlite3

    with sqlite3.connect(daemon.db) as conn:
        rows = dict(
            conn.execute(
                "SELECT seq, status FROM events WHERE kind = 'reading' AND target_id = ?", (str(agreement),)
            ).fetchall()
        )
        reason = conn.execute("SELECT reason FROM events WHERE seq = 2 AND target_id = ?", (str(agreement),)).fetchone()
    assert rows[1] in ("settled", "final"), rows
    assert rows[2] == "dead" and "AfterEnd" in reason[0], (rows, reason)
