"""The daemon as an optimistic relayer and as a watcher, on an anvil of this module's own (the tests move chain time)
and the session's mosquitto: meters → MQTT → daemon → commit → window → claim, billed as direct settlement bills the
same readings; a daemon killed between commit and claim claims after its restart; the daemon's watcher voids a
forged batch of another relayer."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from iotsettle.oracle.ops.tx import events_in, transact
from iotsettle.oracle.ops.watcher import Watcher
from iotsettle.oracle.protocol import batch_tree, eip712, wire
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.testing.devices import Publisher
from iotsettle.oracle.testing.stack import Deployment, private_deployment
from iotsettle.oracle.testing.wait import wait_for

from tests.kit.cli import Cli, User, register_device
from tests.kit.daemon import DaemonProcess
from tests.kit.products import chain_now, reading, telematics, warp_to

ETH = "0x0000000000000000000000000000000000000000"
PRICE = 3
START = 100
DEPOSIT = 10**15
OPT = "OptimisticBilling"
FAST = {
    "IOTSETTLE_OPTIMISTIC_ENABLED": "true",
    "IOTSETTLE_OPTIMISTIC_INTERVAL": "0",
    "IOTSETTLE_OPTIMISTIC_POLL": "0.2",
    "IOTSETTLE_ORACLE_BATCH_MAX_WAIT": "0.1",
}


@pytest.fixture(scope="module")
def own_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with private_deployment(tmp_path_factory.mktemp("optimistic")) as deployment:
        yield deployment


def _send(deployment: Any, user: User, contract: str, fn: str, *args: Any, value: int = 0) -> dict[str, Any]:
    ctx = deployment.ops(user.account)
    return transact(ctx, getattr(ctx.contract(contract).functions, fn)(*args), contract, value=value).receipt


def _agreement(deployment: Any, contract: str, provider: User, consumer: User, meter: str, tariff: int) -> int:
    receipt = _send(deployment, provider, contract, "offer", consumer.address, meter, tariff, ETH, START, 60)
    agreement = int(events_in(deployment.ops(), contract, receipt, "AgreementOffered")[0]["agreementId"])
    _send(deployment, consumer, contract, "accept", agreement, DEPOSIT, START, value=DEPOSIT)
    return agreement


def _batches(db: Path) -> list[tuple[str, int | None]]:
    with sqlite3.connect(db) as conn:
        try:
            rows = conn.execute("SELECT status, batch_id FROM optimistic_batch ORDER BY id").fetchall()
        except sqlite3.OperationalError:
            return []
    return [(str(r[0]), r[1]) for r in rows]


def _statuses(db: Path, agreement: int) -> dict[int, str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT seq, status FROM events WHERE target_id = ? ORDER BY seq", (str(agreement),))
        return {int(seq): str(status) for seq, status in rows}


def _committed_readings(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        try:
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM optimistic_leaf l JOIN optimistic_batch b ON b.id = l.batch "
                "WHERE b.status = 'committed'"
            ).fetchone()
        except sqlite3.OperationalError:
            return 0
    return int(count)


def test_readings_committed_then_claimed_after_a_restart_bill_what_direct_settlement_bills(
    own_deployment: Deployment, mosquitto: Any, tmp_path: Path
) -> None:
    deployment, w3 = own_deployment, own_deployment.chain.w3
    cli = Cli(deployment.config)
    provider, consumer = cli.user(w3), cli.user(w3)
    direct_meter = register_device(deployment.config, provider, DeviceKind.METER)
    opt_meter = register_device(deployment.config, provider, DeviceKind.METER)
    receipt = _send(deployment, provider, "MeteredBilling", "createTariff", [(0, PRICE)])
    tariff = int(events_in(deployment.ops(), "MeteredBilling", receipt, "TariffCreated")[0]["tariffId"])
    direct = _agreement(deployment, "MeteredBilling", provider, consumer, direct_meter.address, tariff)
    optimistic = _agreement(deployment, OPT, provider, consumer, opt_meter.address, tariff)
    opt = deployment.contract(OPT)
    billing = deployment.contract("MeteredBilling")
    chain_id = w3.eth.chain_id

    daemon = DaemonProcess(tmp_path, deployment, mosquitto, **FAST)
    publisher = Publisher(mosquitto.host, mosquitto.port, chain_id)
    try:
        daemon.start().wait_ready()
        now = chain_now(w3)
        values = [130, 175, 240]
        items = []
        for seq, value in enumerate(values, 1):
            for key, contract, agreement in (
                (direct_meter, billing.address, direct),
                (opt_meter, opt.address, optimistic),
            ):
                event = reading(key, chain_id, contract, agreement, seq, now + seq, value)
                items.append((wire.events_topic(chain_id, key.address), event.to_payload()))
        publisher.publish_many(items)
        replies = [body for _, body in publisher.collect(len(items), 20)]
        assert {r["status"] for r in replies} == {"accepted"}, replies

        expected = (values[-1] - START) * PRICE
        wait_for(lambda: billing.functions.earningsOf(direct).call() == expected, 30, "direct readings settled")
        wait_for(lambda: _batches(daemon.db)[-1:] == [("committed", 1)], 30, "the optimistic readings committed")
        assert opt.functions.earningsOf(optimistic).call() == 0, "nothing billed inside the window"
        daemon.kill()  # killed between commit and claim

        window = int(opt.functions.CHALLENGE_WINDOW().call())
        committed_at = int(opt.functions.batchOf(1).call()[3])
        warp_to(w3, committed_at + window + 1)
        daemon.start().wait_ready()
        wait_for(lambda: opt.functions.earningsOf(optimistic).call() == expected, 30, "the newest reading claimed")
        wait_for(lambda: opt.functions.batchOf(1).call()[4] == 3, 30, "the bond released")
        # final once a block sits on the claim's ([chain] confirmations = 1): the bond's release brought one
        wait_for(lambda: _statuses(daemon.db, optimistic) == {1: "final", 2: "final", 3: "final"}, 30, "final")
    finally:
        publisher.close()
        daemon.kill()

    # the same consumption billed the same in both modes; one commit (3 readings) and one claim
    assert opt.functions.agreementOf(optimistic).call()[10] == billing.functions.agreementOf(direct).call()[10] == 3
    assert billing.functions.earningsOf(direct).call() == opt.functions.earningsOf(optimistic).call() == expected
    commits = opt.events.BatchCommitted().get_logs(from_block=0)
    assert [int(c["args"]["count"]) for c in commits] == [3]
    claims = opt.events.ReadingClaimed().get_logs(from_block=0)
    assert [(int(c["args"]["agreementId"]), int(c["args"]["seq"])) for c in claims] == [(optimistic, 3)]


def test_the_daemons_watcher_voids_a_forged_batch_of_another_relayer(
    own_deployment: Deployment, mosquitto: Any, tmp_path: Path
) -> None:
    deployment, w3 = own_deployment, own_deployment.chain.w3
    cli = Cli(deployment.config)
    provider, consumer, relayer, watcher = (cli.user(w3) for _ in range(4))
    meter = register_device(deployment.config, provider, DeviceKind.METER)
    receipt = _send(deployment, provider, "MeteredBilling", "createTariff", [(0, PRICE)])
    tariff = int(events_in(deployment.ops(), "MeteredBilling", receipt, "TariffCreated")[0]["tariffId"])
    agreement = _agreement(deployment, OPT, provider, consumer, meter.address, tariff)
    opt = deployment.contract(OPT)
    domain = eip712.Domain(w3.eth.chain_id, opt.address)

    daemon = DaemonProcess(
        tmp_path,
        deployment,
        mosquitto,
        IOTSETTLE_WATCHER_ENABLED="true",
        IOTSETTLE_WATCHER_INTERVAL="0.5",
        IOTSETTLE_WATCHER_STORE=str(tmp_path / "watcher.db"),
        IOTSETTLE_WATCHER_PRIVATE_KEY=cli.keys[watcher.env_name],
    )
    try:
        daemon.start().wait_ready()
        before = w3.eth.get_balance(watcher.address)
        # a reading the meter never signed, at a register far ahead: the consumer would pay for it
        forged = batch_tree.sign_reading(bytes(32 * [7]), domain, agreement, 1, chain_now(w3), 10**9)
        receipt = _send(
            deployment,
            relayer,
            OPT,
            "commit",
            batch_tree.root([batch_tree.leaf(forged, domain)]),
            batch_tree.pack_batch([forged]),
            value=int(opt.functions.BOND().call()),
        )
        batch = int(events_in(deployment.ops(), OPT, receipt, "BatchCommitted")[0]["batchId"])
        wait_for(lambda: opt.functions.batchOf(batch).call()[4] == 2, 30, "the forged batch voided by the watcher")
        assert w3.eth.get_balance(watcher.address) > before, "the bond went to the daemon's watcher"
        assert opt.functions.agreementOf(agreement).call()[12] == DEPOSIT, "no money moved"
        time.sleep(0.1)
    finally:
        daemon.kill()


def test_a_commit_in_flight_is_not_sent_twice_and_a_voided_batch_is_committed_again_without_its_bad_reading(
    own_deployment: Deployment, mosquitto: Any, tmp_path: Path
) -> None:
    deployment, w3 = own_deployment, own_deployment.chain.w3
    cli = Cli(deployment.config)
    provider, consumer, watcher_user = (cli.user(w3) for _ in range(3))
    honest = register_device(deployment.config, provider, DeviceKind.METER)
    doomed = register_device(deployment.config, provider, DeviceKind.METER)
    receipt = _send(deployment, provider, "MeteredBilling", "createTariff", [(0, PRICE)])
    tariff = int(events_in(deployment.ops(), "MeteredBilling", receipt, "TariffCreated")[0]["tariffId"])
    honest_agreement = _agreement(deployment, OPT, provider, consumer, honest.address, tariff)
    doomed_agreement = _agreement(deployment, OPT, provider, consumer, doomed.address, tariff)
    opt = deployment.contract(OPT)
    registry = deployment.contract("DeviceRegistry")
    chain_id = w3.eth.chain_id
    earlier = len(opt.events.BatchCommitted().get_logs(from_block=0))

    # the module's chain runs ahead of the wall clock (an earlier test passed a window): readings carry chain time
    daemon = DaemonProcess(tmp_path, deployment, mosquitto, **FAST, IOTSETTLE_ORACLE_MAX_FUTURE_SKEW="100000000")
    publisher = Publisher(mosquitto.host, mosquitto.port, chain_id)
    try:
        daemon.start().wait_ready()
        now = chain_now(w3)
        w3.provider.make_request("evm_setAutomine", [False])
        signed = [
            (honest, reading(honest, chain_id, opt.address, honest_agreement, 1, now, 150)),
            (doomed, reading(doomed, chain_id, opt.address, doomed_agreement, 1, now + 100, 170)),
        ]
        publisher.publish_many([(wire.events_topic(chain_id, k.address), e.to_payload()) for k, e in signed])
        assert {body["status"] for _, body in publisher.collect(2, 20)} == {"accepted"}
        wait_for(lambda: [s for s, _ in _batches(daemon.db)] == ["sending"], 30, "the commit sent and not mined")

        # killed with its commit in the node's pool; the restarted daemon waits for it instead of committing again
        daemon.kill()
        daemon.start().wait_ready()
        time.sleep(1.0)
        assert [s for s, _ in _batches(daemon.db)] == ["sending"]

        # the owner revokes the second meter in the commit's block: its reading, stamped after the revocation, is a
        # fault as of the commit (DeviceRevoked), so the batch can be voided
        revoke = registry.functions.revoke(doomed.address).build_transaction(
            {
                "from": provider.address,
                "nonce": w3.eth.get_transaction_count(provider.address, "pending"),
                "gas": 200_000,
                "maxFeePerGas": 2 * int(w3.eth.get_block("latest")["baseFeePerGas"]) + 10,
                "maxPriorityFeePerGas": 10,
                "chainId": chain_id,
            }
        )
        w3.eth.send_raw_transaction(provider.account.sign_transaction(revoke).raw_transaction)
        w3.provider.make_request("evm_mine", [])
        w3.provider.make_request("evm_setAutomine", [True])
        wait_for(lambda: [s for s, _ in _batches(daemon.db)] == ["committed"], 30, "the commit mined")
        voided = _batches(daemon.db)[0][1]

        watcher = Watcher(deployment.ops(watcher_user.account), tmp_path / "watcher.db")
        judged = {v.batch_id: v for v in watcher.run_pass().verdicts}
        watcher.close()
        assert (judged[voided].verdict, judged[voided].reason, judged[voided].leaf_index) == (
            "challenged",
            "DeviceRevoked",
            1,
        )
        wait_for(
            lambda: [s for s, _ in _batches(daemon.db)] == ["voided", "committed"],
            30,
            "the honest reading committed again",
        )
        again = _batches(daemon.db)[1][1]
        assert again is not None
        commits = opt.events.BatchCommitted().get_logs(from_block=0)[earlier:]
        assert [(int(c["args"]["batchId"]), int(c["args"]["count"])) for c in commits] == [(voided, 2), (again, 1)]
        with sqlite3.connect(daemon.db) as conn:
            (status, reason) = conn.execute(
                "SELECT status, reason FROM events WHERE target_id = ?", (str(doomed_agreement),)
            ).fetchone()
        assert status == "dead" and reason.startswith("DeviceRevoked"), (status, reason)

        warp_to(w3, int(opt.functions.batchOf(again).call()[3]) + int(opt.functions.CHALLENGE_WINDOW().call()) + 1)
        expected = (150 - START) * PRICE
        wait_for(lambda: opt.functions.earningsOf(honest_agreement).call() == expected, 30, "the honest reading billed")
        assert opt.functions.earningsOf(doomed_agreement).call() == 0
    finally:
        w3.provider.make_request("evm_setAutomine", [True])
        publisher.close()
        daemon.kill()


def test_one_meter_with_an_agreement_in_each_mode_is_judged_per_agreement(
    own_deployment: Deployment, mosquitto: Any, tmp_path: Path
) -> None:
    """Both contracts number their agreements ``device << 96 | tariff << 64 | count``, each with its own count: one
    meter, one tariff and the same count in each must still give two ids, or the oracle's per-agreement state (the
    register a rollback is judged against) mixes two agreements."""
    deployment, w3 = own_deployment, own_deployment.chain.w3
    cli = Cli(deployment.config)
    provider, consumer = cli.user(w3), cli.user(w3)
    meter = register_device(deployment.config, provider, DeviceKind.METER)
    receipt = _send(deployment, provider, "MeteredBilling", "createTariff", [(0, PRICE)])
    tariff = int(events_in(deployment.ops(), "MeteredBilling", receipt, "TariffCreated")[0]["tariffId"])

    def offer(contract: str) -> int:
        args = (consumer.address, meter.address, tariff, ETH, START, 60)
        receipt = _send(deployment, provider, contract, "offer", *args)
        return int(events_in(deployment.ops(), contract, receipt, "AgreementOffered")[0]["agreementId"])

    # offers in the contract whose count is behind until both counts are equal (the low 63 bits of the id)
    count = (1 << 63) - 1
    ids = {contract: offer(contract) for contract in ("MeteredBilling", OPT)}
    while ids["MeteredBilling"] & count != ids[OPT] & count:
        behind = min(ids, key=lambda contract: ids[contract] & count)
        ids[behind] = offer(behind)
    for contract, agreement in ids.items():
        _send(deployment, consumer, contract, "accept", agreement, DEPOSIT, START, value=DEPOSIT)
    direct, optimistic = ids["MeteredBilling"], ids[OPT]
    opt, billing = deployment.contract(OPT), deployment.contract("MeteredBilling")
    chain_id = w3.eth.chain_id

    # the module's chain may run ahead of the wall clock (an earlier test passed a window): readings carry chain time
    daemon = DaemonProcess(tmp_path, deployment, mosquitto, **FAST, IOTSETTLE_ORACLE_MAX_FUTURE_SKEW="100000000")
    publisher = Publisher(mosquitto.host, mosquitto.port, chain_id)
    try:
        daemon.start().wait_ready()
        now = chain_now(w3)
        # the direct agreement's register is far ahead of the optimistic one's: neither is a rollback of the other
        signed = [
            (billing.address, direct, 1, 900),
            (opt.address, optimistic, 2, 200),
            (billing.address, direct, 3, 950),
            (opt.address, optimistic, 4, 260),
        ]
        for contract, agreement, seq, value in signed:
            event = reading(meter, chain_id, contract, agreement, seq, now + seq, value)
            reply = publisher.send(event)
            assert reply["status"] == "accepted", (seq, reply)

        wait_for(lambda: billing.functions.earningsOf(direct).call() == (950 - START) * PRICE, 30, "direct settled")
        wait_for(lambda: _committed_readings(daemon.db) == 2, 30, "both optimistic readings committed")
        batch = _batches(daemon.db)[-1][1]
        assert batch is not None
        warp_to(w3, int(opt.functions.batchOf(batch).call()[3]) + int(opt.functions.CHALLENGE_WINDOW().call()) + 1)
        expected = (260 - START) * PRICE
        wait_for(lambda: opt.functions.earningsOf(optimistic).call() == expected, 30, "the optimistic reading claimed")
    finally:
        publisher.close()
        daemon.kill()
    assert direct != optimistic, "an agreement id names one agreement across both billing contracts"


def test_bad_optimistic_or_watcher_settings_are_refused_in_one_line(
    own_deployment: Deployment, mosquitto: Any, tmp_path: Path
) -> None:
    daemon = DaemonProcess(tmp_path, own_deployment, mosquitto)
    code, output = daemon.run_to_exit(IOTSETTLE_OPTIMISTIC_ENABLED="true", IOTSETTLE_OPTIMISTIC_BATCH="0")
    assert code != 0 and "[optimistic] batch must be 1 to 4096" in output, output
    code, output = daemon.run_to_exit(IOTSETTLE_OPTIMISTIC_ENABLED="true", IOTSETTLE_OPTIMISTIC_BATCH="5000")
    assert code != 0 and "[optimistic] batch must be 1 to 4096" in output, output
    code, output = daemon.run_to_exit(IOTSETTLE_WATCHER_ENABLED="true")
    assert code != 0 and "IOTSETTLE_WATCHER_PRIVATE_KEY" in output, output
    code, output = daemon.run_to_exit(
        IOTSETTLE_WATCHER_ENABLED="true", IOTSETTLE_WATCHER_PRIVATE_KEY=daemon.env["IOTSETTLE_CHAIN_PRIVATE_KEY"]
    )
    assert code != 0 and "the relayer's key" in output, output
    assert "Traceback" not in output


def _policy(deployment: Any, contract: str, insurer: User, holder: User, vehicle: str) -> int:
    token = deployment.address("TestToken")
    terms = (10**15, 10_000, 20_000, 500, 0, 0, 0, 60)  # per km at 1.0; factor 1.0–2.0, +5 % per event per 100 km
    receipt = _send(deployment, insurer, contract, "offer", holder.address, vehicle, token, *terms)
    policy = int(events_in(deployment.ops(), contract, receipt, "PolicyOffered")[0]["policyId"])
    _send(deployment, holder, "TestToken", "approve", deployment.address(contract), 10**18)
    _send(deployment, holder, contract, "accept", policy, 10**18, 0, 0, 0)
    return policy


def test_telematics_committed_and_claimed_charge_what_direct_settlement_charges(
    own_deployment: Deployment, mosquitto: Any, tmp_path: Path
) -> None:
    """Vehicles → MQTT → daemon: the reports of a policy opened on OptimisticMotor are committed in a batch and the
    newest claimed after the window; the same reports of a MotorInsurance policy settle directly; both premiums
    equal."""
    deployment, w3 = own_deployment, own_deployment.chain.w3
    cli = Cli(deployment.config)
    insurer, holder = cli.user(w3), cli.user(w3)
    cli.ok(["token", "mint", "--amount", "5"], holder)
    direct_car = register_device(deployment.config, insurer, DeviceKind.VEHICLE)
    opt_car = register_device(deployment.config, insurer, DeviceKind.VEHICLE)
    direct = _policy(deployment, "MotorInsurance", insurer, holder, direct_car.address)
    optimistic = _policy(deployment, "OptimisticMotor", insurer, holder, opt_car.address)
    assert optimistic & batch_tree.AGREEMENT_ID_FLAG and not direct & batch_tree.AGREEMENT_ID_FLAG
    motor, om = deployment.contract("MotorInsurance"), deployment.contract("OptimisticMotor")
    chain_id = w3.eth.chain_id
    committed_before = len(om.events.BatchCommitted().get_logs(from_block=0))

    # the module's chain runs ahead of the wall clock (an earlier test passed a window): reports carry chain time
    daemon = DaemonProcess(tmp_path, deployment, mosquitto, **FAST, IOTSETTLE_ORACLE_MAX_FUTURE_SKEW="100000000")
    publisher = Publisher(mosquitto.host, mosquitto.port, chain_id)
    try:
        daemon.start().wait_ready()
        registers = [(5_000, 0), (12_000, 1), (20_000, 3)]  # odometer in metres, harsh-braking events
        items = []
        for seq, (odometer, harsh) in enumerate(registers, 1):
            warp_to(w3, chain_now(w3) + 600)  # ten minutes a report: the intake's plausible-speed rule
            for key, contract, policy in ((direct_car, motor.address, direct), (opt_car, om.address, optimistic)):
                payload = telematics(key, w3, contract, policy, seq, odometer, harsh)
                items.append((wire.events_topic(chain_id, key.address), payload.encode()))
        publisher.publish_many(items)
        replies = [body for _, body in publisher.collect(len(items), 20)]
        assert {r["status"] for r in replies} == {"accepted"}, [r for r in replies if r["status"] != "accepted"]

        wait_for(lambda: motor.functions.policyOf(direct).call()[15] == 3, 30, "the direct reports settled")
        charged = int(motor.functions.policyOf(direct).call()[20])
        assert charged > 0
        wait_for(
            lambda: len(om.events.BatchCommitted().get_logs(from_block=0)) == committed_before + 1,
            30,
            "the optimistic reports committed to OptimisticMotor",
        )
        batch = int(om.events.BatchCommitted().get_logs(from_block=0)[-1]["args"]["batchId"])
        assert int(om.functions.policyOf(optimistic).call()[20]) == 0, "nothing charged inside the window"
        committed_at = int(om.functions.batchOf(batch).call()[3])
        warp_to(w3, committed_at + int(om.functions.CHALLENGE_WINDOW().call()) + 1)
        wait_for(lambda: int(om.functions.policyOf(optimistic).call()[15]) == 3, 30, "the newest report claimed")
        wait_for(lambda: om.functions.batchOf(batch).call()[4] == 3, 30, "the bond released")
    finally:
        publisher.close()
        daemon.kill()

    assert int(om.functions.policyOf(optimistic).call()[20]) == charged, "the same premium in both modes"
    assert om.functions.policyOf(optimistic).call()[17] == motor.functions.policyOf(direct).call()[17], "factor"
    claims = om.events.ReportClaimed().get_logs(from_block=0)
    assert [(int(c["args"]["policyId"]), int(c["args"]["seq"])) for c in claims] == [(optimistic, 3)]
