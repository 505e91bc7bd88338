"""The optimistic-settlement watcher on a real anvil: a relayer's batch with a forged reading is challenged and the
bond paid to the watcher; the honest readings, posted again, stand and settle after the window; a watcher restarted
from its store judges nothing twice and catches up on a replayed reading committed while it was down.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from iotsettle.oracle.chain.connection import load_sender
from iotsettle.oracle.chain.deploy import deploy_all
from iotsettle.oracle.ops.tx import events_in, transact
from iotsettle.oracle.ops.watcher import CONTRACT, Watcher
from iotsettle.oracle.protocol import batch_tree, eip712
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.testing.stack import Deployment

from tests.kit.cli import Cli, User, register_device
from tests.kit.products import chain_now, warp_to

ETH = "0x0000000000000000000000000000000000000000"
PRICE = 3
START = 100
DEPOSIT = 10**15


def _send(deployment: Any, user: User, contract: str, fn: str, *args: Any, value: int = 0) -> dict[str, Any]:
    ctx = deployment.ops(user.account)
    call = getattr(ctx.contract(contract).functions, fn)(*args)
    return transact(ctx, call, contract, value=value).receipt


def _eth_spent(w3: Any, tx: str) -> int:
    receipt = w3.eth.get_transaction_receipt(tx)
    return int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])


def test_a_forged_batch_is_challenged_and_the_honest_readings_settle(own_deployment: Any, tmp_path: Path) -> None:
    deployment, w3 = own_deployment, own_deployment.chain.w3
    cli = Cli(deployment.config)
    provider, consumer, relayer, watcher_user = (cli.user(w3) for _ in range(4))
    meter = register_device(deployment.config, provider, DeviceKind.METER)
    opt = deployment.contract(CONTRACT)
    domain = eip712.Domain(w3.eth.chain_id, opt.address)
    bond = int(opt.functions.BOND().call())

    receipt = _send(deployment, provider, "MeteredBilling", "createTariff", [(0, PRICE)])
    tariff = events_in(deployment.ops(), "MeteredBilling", receipt, "TariffCreated")[0]["tariffId"]
    receipt = _send(deployment, provider, CONTRACT, "offer", consumer.address, meter.address, tariff, ETH, START, 60)
    agreement = events_in(deployment.ops(), CONTRACT, receipt, "AgreementOffered")[0]["agreementId"]
    _send(deployment, consumer, CONTRACT, "accept", agreement, DEPOSIT, START, value=DEPOSIT)

    def reading(seq: int, value: int, key: bytes = meter.private_key) -> bytes:
        return batch_tree.sign_reading(key, domain, agreement, seq, chain_now(w3), value)

    def commit(items: list[bytes]) -> int:
        leaves = [batch_tree.leaf(item, domain) for item in items]
        data = batch_tree.pack_batch(items)
        receipt = _send(deployment, relayer, CONTRACT, "commit", batch_tree.root(leaves), data, value=bond)
        return int(events_in(deployment.ops(), CONTRACT, receipt, "BatchCommitted")[0]["batchId"])

    store = tmp_path / "watcher.sqlite"
    honest = reading(1, 150)
    forged = reading(2, 10**9, key=secrets.token_bytes(32))
    bad = commit([honest, forged])

    watcher = Watcher(deployment.ops(watcher_user.account), store)
    before = w3.eth.get_balance(watcher_user.address)
    verdicts = watcher.run_pass().verdicts
    assert [(v.batch_id, v.verdict, v.reason, v.leaf_index) for v in verdicts] == [(bad, "challenged", "UnknownKey", 1)]
    assert verdicts[0].tx is not None
    # Half the bond pays the watcher, half is burnt.
    assert w3.eth.get_balance(watcher_user.address) == before + bond - bond // 2 - _eth_spent(w3, verdicts[0].tx)
    assert opt.functions.batchOf(bad).call()[4] == 2, "voided"
    assert opt.functions.agreementOf(agreement).call()[12] == DEPOSIT, "no money moved"

    # The honest reading posted again stands; after the window it settles.
    again = commit([honest])
    assert [(v.batch_id, v.verdict) for v in watcher.run_pass().verdicts] == [(again, "valid")]
    watcher.close()
    window = int(opt.functions.CHALLENGE_WINDOW().call())
    committed_at = int(opt.functions.batchOf(again).call()[3])
    warp_to(w3, committed_at + window // 2)
    overtaken = commit([honest])  # valid when committed; the claim below overtakes it
    warp_to(w3, committed_at + window + 1)
    leaves = [batch_tree.leaf(honest, domain)]
    _send(deployment, provider, CONTRACT, "claim", again, honest, batch_tree.proof(leaves, 0))
    assert opt.functions.earningsOf(agreement).call() == (150 - START) * PRICE

    # Down while a relayer replays the claimed reading (a second later: a claim counts against batches committed
    # after it); the restarted watcher catches up from its cursor.
    warp_to(w3, chain_now(w3) + 1)
    replay = commit([reading(2, 160), honest])
    restarted = Watcher(deployment.ops(watcher_user.account), store)
    nonce = w3.eth.get_transaction_count(watcher_user.address)
    verdicts = restarted.run_pass().verdicts
    assert [(v.batch_id, v.verdict, v.reason, v.leaf_index) for v in verdicts] == [
        (overtaken, "valid", None, None),
        (replay, "challenged", "Replayed", 1),
    ]
    assert w3.eth.get_transaction_count(watcher_user.address) == nonce + 1, "one challenge, nothing judged twice"
    assert [v.batch_id for v in restarted.verdicts()] == [bad, again, overtaken, replay]
    assert restarted.run_pass().verdicts == ()
    restarted.close()


def test_watch_once_challenges_from_the_command_line(own_deployment: Any, tmp_path: Path) -> None:
    deployment, w3 = own_deployment, own_deployment.chain.w3
    cli = Cli(deployment.config)
    provider, relayer, watcher_user = (cli.user(w3) for _ in range(3))
    opt = deployment.contract(CONTRACT)
    domain = eip712.Domain(w3.eth.chain_id, opt.address)
    meter = register_device(deployment.config, provider, DeviceKind.METER)
    # A reading for an agreement that does not exist, signed by a registered meter: UnknownTarget.
    stray = batch_tree.sign_reading(meter.private_key, domain, 12345, 1, chain_now(w3), 1)
    receipt = _send(
        deployment,
        relayer,
        CONTRACT,
        "commit",
        batch_tree.root([batch_tree.leaf(stray, domain)]),
        batch_tree.pack_batch([stray]),
        value=int(opt.functions.BOND().call()),
    )
    batch = int(events_in(deployment.ops(), CONTRACT, receipt, "BatchCommitted")[0]["batchId"])
    store = str(tmp_path / "cli-watcher.db")

    out = cli.ok(["watch", "--once", "--json", "--store", store], watcher_user)
    judged = {v["batchId"]: v for v in out["verdicts"]}
    assert judged[batch]["verdict"] == "challenged"
    assert judged[batch]["reason"] == "UnknownTarget"
    assert opt.functions.batchOf(batch).call()[4] == 2, "voided"
    assert cli.ok(["watch", "--once", "--json", "--store", store], watcher_user)["verdicts"] == []


def test_the_window_and_bond_come_from_the_deployment(own_deployment: Any, tmp_path: Path) -> None:
    """[deploy] settings reach the contract's constructor and the manifest; the watcher takes the window from the
    contract (a batch 20 minutes old is past a 20-minute window, though well inside the default hour)."""
    base, w3 = own_deployment, own_deployment.chain.w3
    config = base.config.replace("paths", deployments_dir=str(tmp_path / "deployments")).replace(
        "deploy", optimistic_window=1_200, optimistic_bond="0.02"
    )
    sender = load_sender(config, base.chain)
    manifest = deploy_all(config, base.chain, sender)
    assert manifest["contracts"][CONTRACT]["args"][2:] == [1_200, 2 * 10**16]
    deployment = Deployment(config, base.chain, manifest)
    opt = deployment.contract(CONTRACT)
    assert (opt.functions.CHALLENGE_WINDOW().call(), opt.functions.BOND().call()) == (1_200, 2 * 10**16)
    assert deploy_all(config, base.chain, sender)["contracts"] == manifest["contracts"], "unchanged: kept"
    longer = deploy_all(config.replace("deploy", optimistic_window=1_800), base.chain, sender)["contracts"]
    assert longer[CONTRACT]["address"] != manifest["contracts"][CONTRACT]["address"], "a new window: redeployed"
    assert longer["MeteredBilling"] == manifest["contracts"]["MeteredBilling"], "the others kept"

    cli = Cli(config)
    relayer, watcher_user = cli.user(w3), cli.user(w3)
    domain = eip712.Domain(w3.eth.chain_id, opt.address)
    forged = batch_tree.sign_reading(secrets.token_bytes(32), domain, 12345, 1, chain_now(w3), 1)
    data = batch_tree.pack_batch([forged])
    root = batch_tree.root([batch_tree.leaf(forged, domain)])
    receipt = transact(deployment.ops(relayer.account), opt.functions.commit(root, data), CONTRACT, value=2 * 10**16)
    batch = int(events_in(deployment.ops(), CONTRACT, receipt.receipt, "BatchCommitted")[0]["batchId"])
    warp_to(w3, chain_now(w3) + 1_201)
    watcher = Watcher(deployment.ops(watcher_user.account), tmp_path / "watcher.db")
    assert [w.window for w in watcher.watched] == [1_200, 1_200], "both optimistic contracts' windows"
    assert [(v.batch_id, v.verdict) for v in watcher.run_pass().verdicts] == [(batch, "missed")]
    watcher.close()


def test_data_that_names_no_reading_is_challenged(own_deployment: Any, tmp_path: Path) -> None:
    """An item pointing past the agreement table: no reading to rebuild, so the data challenge voids the batch."""
    deployment, w3 = own_deployment, own_deployment.chain.w3
    cli = Cli(deployment.config)
    relayer, watcher_user = cli.user(w3), cli.user(w3)
    opt = deployment.contract(CONTRACT)
    domain = eip712.Domain(w3.eth.chain_id, opt.address)
    reading = batch_tree.sign_reading(secrets.token_bytes(32), domain, 7, 1, chain_now(w3), 1)
    data = bytearray(batch_tree.pack_batch([reading]))
    data[batch_tree.HEADER_SIZE + 32 + 1] = 1  # index 1 of a table of one
    root = batch_tree.root([batch_tree.leaf(reading, domain)])
    receipt = _send(deployment, relayer, CONTRACT, "commit", root, bytes(data), value=int(opt.functions.BOND().call()))
    batch = int(events_in(deployment.ops(), CONTRACT, receipt, "BatchCommitted")[0]["batchId"])
    watcher = Watcher(deployment.ops(watcher_user.account), tmp_path / "watcher.db")
    verdicts = [v for v in watcher.run_pass().verdicts if v.batch_id == batch]
    assert [(v.verdict, v.reason) for v in verdicts] == [("challenged", "DataDoesNotBuildRoot")]
    assert opt.functions.batchOf(batch).call()[4] == 2, "voided"
    watcher.close()


def test_a_forged_telematics_batch_is_challenged_and_the_honest_report_settles(
    own_deployment: Any, tmp_path: Path
) -> None:
    """OptimisticMotor's batches are watched like OptimisticBilling's: a report signed by an unknown key is
    challenged (the bond paid to the watcher), the honest report posted again is valid and its claim charges the
    premium; a report rolled back below the claimed odometer, committed after the claim, is challenged too."""
    deployment, w3 = own_deployment, own_deployment.chain.w3
    cli = Cli(deployment.config)
    insurer, holder, relayer, watcher_user = (cli.user(w3) for _ in range(4))
    vehicle = register_device(deployment.config, insurer, DeviceKind.VEHICLE)
    motor = "OptimisticMotor"
    om = deployment.contract(motor)
    domain = eip712.Domain(w3.eth.chain_id, om.address)
    bond = int(om.functions.BOND().call())
    token = deployment.address("TestToken")
    rate = 10**15  # per km at factor 1.0
    receipt = _send(
        deployment,
        insurer,
        motor,
        "offer",
        holder.address,
        vehicle.address,
        token,
        rate,
        10_000,
        20_000,
        500,
        0,
        0,
        0,
        60,
    )
    policy = int(events_in(deployment.ops(), motor, receipt, "PolicyOffered")[0]["policyId"])
    assert policy & batch_tree.AGREEMENT_ID_FLAG, "an optimistic policy id"
    cli.ok(["token", "mint", "--amount", "10"], holder)
    _send(deployment, holder, "TestToken", "approve", om.address, 10**19)
    _send(deployment, holder, motor, "accept", policy, 10**19, 0, 0, 0)
    terms = bytes(om.functions.telematicsTerms(policy).call())

    def report(seq: int, odometer: int, key: bytes = vehicle.private_key) -> bytes:
        message = {
            "policyId": policy,
            "seq": seq,
            "timestamp": chain_now(w3),
            "odometer": odometer,
            "harshBraking": 0,
            "speeding": 0,
        }
        return batch_tree.sign_telematics(key, domain, message, terms)

    def commit(items: list[bytes]) -> int:
        leaves = [batch_tree.leaf(item, domain, "telematics") for item in items]
        data = batch_tree.pack_batch(items, "telematics")
        receipt = _send(deployment, relayer, motor, "commit", batch_tree.root(leaves), data, value=bond)
        return int(events_in(deployment.ops(), motor, receipt, "BatchCommitted")[0]["batchId"])

    warp_to(w3, chain_now(w3) + 1)
    honest = report(1, 50_000)
    bad = commit([report(2, 10**9, key=secrets.token_bytes(32)), honest])
    watcher = Watcher(deployment.ops(watcher_user.account), tmp_path / "watcher.db")
    verdicts = [v for v in watcher.run_pass().verdicts if v.contract == motor]  # the module's reading batches too
    assert [(v.contract, v.batch_id, v.verdict, v.reason, v.leaf_index) for v in verdicts] == [
        (motor, bad, "challenged", "UnknownKey", 0)
    ]
    assert om.functions.batchOf(bad).call()[4] == 2, "voided"

    again = commit([honest])
    assert [(v.batch_id, v.verdict) for v in watcher.run_pass().verdicts] == [(again, "valid")]
    committed_at = int(om.functions.batchOf(again).call()[3])
    warp_to(w3, committed_at + int(om.functions.CHALLENGE_WINDOW().call()) + 1)
    # the batch carries no terms: the claim sends the report with them (zeros would read the stored ones)
    leaves = [batch_tree.leaf(honest, domain, "telematics")]
    _send(deployment, relayer, motor, "claim", again, honest, batch_tree.proof(leaves, 0))
    charged = om.functions.policyOf(policy).call()[20]
    assert charged == 50 * rate, "50 km at factor 1.0"

    warp_to(w3, chain_now(w3) + 1)
    rolled_back = commit([report(3, 40_000)])
    verdicts = watcher.run_pass().verdicts
    assert [(v.batch_id, v.verdict, v.reason) for v in verdicts] == [(rolled_back, "challenged", "CounterRollback")]
    assert om.functions.policyOf(policy).call()[20] == charged, "no money moved"
    watcher.close()
