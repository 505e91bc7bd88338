"""Settlement against a real anvil with the contracts deployed: stored events become payments, exactly once,
through batching, poison items, replays, dropped transactions, restarts and reorgs."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from iotsettle.oracle.chain.node import free_port
from iotsettle.oracle.chain.revert import ErrorDecoder, RejectReason
from iotsettle.oracle.config import Config
from iotsettle.oracle.daemon.calldata import KindSpec
from iotsettle.oracle.daemon.deployment import resolve
from iotsettle.oracle.daemon.metrics import Metrics
from iotsettle.oracle.daemon.planner import Batch
from iotsettle.oracle.daemon.settler import Settler, SettlerSettings
from iotsettle.oracle.daemon.store import EventStatus, Store, StoredEvent
from iotsettle.oracle.daemon.txstore import TxStatus
from iotsettle.oracle.testing.wait import wait_for
from web3 import HTTPProvider, Web3

from tests.kit.settlement import DEPOSIT, FUNDER, PRICE, PROVIDER, START, Scenario, automine_off
from tests.kit.stack import REPO


def make_settler(
    scenario: Scenario, store: Store, relayer: LocalAccount, metrics: Metrics | None = None, **oracle: Any
) -> Settler:
    config: Config = scenario.d.config.replace(
        "chain", private_key="0x" + bytes(relayer.key).hex(), confirmations=oracle.pop("confirmations", 1)
    )
    config = config.replace("oracle", **{"batch_max_wait": 0.0, **oracle})
    return Settler.from_deployment(config, resolve(config, scenario.chain), store, metrics=metrics)


def settle_all(
    settler: Settler,
    store: Store,
    ids: list[int],
    timeout: float = 20.0,
    statuses: tuple[EventStatus, ...] = (EventStatus.SETTLED, EventStatus.FINAL),
) -> list[StoredEvent]:
    """Drive the loop until every event in ``ids`` is in one of ``statuses`` (or dead / superseded)."""
    done = (*statuses, EventStatus.DEAD, EventStatus.SUPERSEDED)
    deadline = time.monotonic() + timeout
    while True:
        settler.run_once()
        events = store.events(ids)
        if all(e.status in done for e in events):
            return events
        if time.monotonic() > deadline:
            raise TimeoutError(f"not settled: {[(e.id, e.status) for e in events if e.status not in done]}")
        time.sleep(0.02)


def our_nonces(settler: Settler) -> list[int]:
    return sorted({tx.nonce for tx in settler.txstore.all() if tx.status is not TxStatus.LOST})


# ----------------------------------------------------------------------------------------------------- tests


def test_batch_for_many_agreements_settles_newest_reading_and_pays_providers(
    scenario: Scenario, store: Store, relayer: LocalAccount
) -> None:
    meters = [scenario.meter() for _ in range(12)]
    records = []
    for i, meter in enumerate(meters):
        records.append(scenario.reading(meter, 1, START + 50))
        records.append(scenario.reading(meter, 2, START + 100 + i))  # newer cumulative reading: only this one is billed
    ids = store.commit_batch(records, [], [])
    metrics = Metrics()
    settler = make_settler(scenario, store, relayer, metrics)

    events = settle_all(settler, store, ids)

    for i, meter in enumerate(meters):
        assert scenario.earnings(meter) == (100 + i) * PRICE
        agreement = scenario.billing.functions.agreementOf(meter.agreement).call()
        assert agreement[9] == START + 100 + i  # lastValue
        assert agreement[12] == DEPOSIT - (100 + i) * PRICE  # prepaid
    by_status = {s: sum(1 for e in events if e.status is s) for s in EventStatus}
    assert by_status[EventStatus.SUPERSEDED] == 12
    assert by_status[EventStatus.SETTLED] + by_status[EventStatus.FINAL] == 12
    txs = settler.txstore.all()
    assert len(txs) == 1, "12 readings fit one batch"
    gas = metrics.gas_per_event.collect()[0].samples
    assert metrics.settled.labels(kind="reading")._value.get() == 12
    assert any(s.name.endswith("_count") and s.value == 12 for s in gas)
    # The next transaction puts a block on top: the first one becomes final (confirmations = 1).
    more = store.commit_batch([scenario.reading(meters[0], 3, START + 500)], [], [])
    settle_all(settler, store, more)
    scenario.mine()
    settle_all(settler, store, ids, statuses=(EventStatus.FINAL,))


def test_poison_items_are_dead_lettered_with_the_onchain_reason_while_the_rest_settle(
    scenario: Scenario, store: Store, relayer: LocalAccount
) -> None:
    good, other = scenario.meter(), scenario.meter()
    stranger = os.urandom(32)
    records = [
        scenario.reading(good, 1, START + 10),
        scenario.reading(good, 1, START + 10, agreement=good.agreement + 999_999),  # no such agreement
        scenario.reading(other, 1, START + 30, key=stranger),  # signed by a key the registry never saw
        scenario.reading(other, 2, START - 1),  # register below the agreement's start: counter rollback
    ]
    # The store keys events by (device, seq): give the poison items distinct sequence numbers.
    records[1] = scenario.reading(good, 7, START + 10, agreement=good.agreement + 999_999)
    ids = store.commit_batch(records, [], [])
    settler = make_settler(scenario, store, relayer)

    events = {e.id: e for e in settle_all(settler, store, ids)}

    assert events[ids[0]].status in (EventStatus.SETTLED, EventStatus.FINAL)
    assert scenario.earnings(good) == 10 * PRICE
    assert events[ids[1]].status is EventStatus.DEAD
    assert events[ids[1]].reason is not None and events[ids[1]].reason.startswith("UnknownTarget")
    # Readings of one agreement collapse to the newest (seq 2) before settlement.
    assert events[ids[2]].status is EventStatus.SUPERSEDED
    assert events[ids[3]].status is EventStatus.DEAD
    assert events[ids[3]].reason is not None and events[ids[3]].reason.startswith("CounterRollback")
    assert scenario.earnings(other) == 0

    unknown_key = store.commit_batch([scenario.reading(other, 3, START + 40, key=stranger)], [], [])
    (event,) = settle_all(settler, store, unknown_key)
    assert event.status is EventStatus.DEAD and event.reason is not None and event.reason.startswith("UnknownKey")


def test_an_event_replayed_by_a_second_oracle_is_paid_once(
    scenario: Scenario, tmp_path: Path, store: Store, relayer: LocalAccount
) -> None:
    meter = scenario.meter()
    record = scenario.reading(meter, 1, START + 70)
    first = make_settler(scenario, store, relayer)
    ids = store.commit_batch([record], [], [])
    settle_all(first, store, ids)
    assert scenario.earnings(meter) == 70 * PRICE

    # A second oracle with its own database and key got the same event (MQTT redelivery, shared fleet).
    other_store = Store.open(tmp_path / "other.db")
    other_relayer = Account.create()
    scenario.fund(other_relayer.address)
    second = make_settler(scenario, other_store, other_relayer)
    other_ids = other_store.commit_batch([record], [], [])
    (event,) = settle_all(second, other_store, other_ids)

    # it reads the agreement's last settled seq before sending: the reading is on chain already, so it is
    # superseded and costs the second relayer no transaction (no Replayed refusal paid for)
    assert event.status is EventStatus.SUPERSEDED, event
    assert event.reason is None
    assert scenario.w3.eth.get_transaction_count(other_relayer.address) == 0, "nothing sent"
    assert scenario.earnings(meter) == 70 * PRICE, "paid once"
    other_store.close()


def test_the_settled_seq_check_reads_each_agreements_last_seq_as_the_contract_reports_it(
    scenario: Scenario, tmp_path: Path, store: Store, relayer: LocalAccount
) -> None:
    meters = [scenario.meter() for _ in range(3)]
    ids = store.commit_batch(
        [scenario.reading(meter, seq, START + 10 * seq) for meter, seq in zip(meters, (1, 4, 9), strict=True)], [], []
    )
    settler = make_settler(scenario, store, relayer)
    settle_all(settler, store, ids)
    # one event per agreement at, below and above the chain's seq (1, 4, 9), plus one of an agreement never settled
    probes = [
        scenario.reading(meters[0], 1, START + 10),
        scenario.reading(meters[1], 3, START + 30),
        scenario.reading(meters[2], 10, START + 100),
        scenario.reading(scenario.meter(), 1, START + 10),
    ]
    other = Store.open(tmp_path / "probes.db")  # the same (device, seq) as stored events: a second oracle's store
    probe_ids = other.commit_batch(probes, [], [])
    events = other.events(probe_ids)
    other.close()
    seqs = settler.settled_seqs

    stale = seqs.already_settled("reading", events)

    assert [e.id for e in stale] == probe_ids[:2]
    on_chain = [scenario.billing.functions.agreementOf(m.agreement).call()[10] for m in meters]
    assert on_chain == [1, 4, 9]
    # the one-word read (a static struct) and eth-abi's decoding of the whole struct agree
    view = seqs._views["reading"]
    seqs._views["reading"] = dataclasses.replace(view, selector=None)
    assert seqs.already_settled("reading", events) == stale
    assert seqs.already_settled("delivery", events) == []


def test_batches_cut_together_are_checked_against_the_chain_in_one_request(
    scenario: Scenario, tmp_path: Path, store: Store, relayer: LocalAccount
) -> None:
    meters = [scenario.meter() for _ in range(4)]
    first = make_settler(scenario, store, relayer)
    settle_all(first, store, store.commit_batch([scenario.reading(meters[0], 5, START + 50)], [], []))
    settle_all(first, store, store.commit_batch([scenario.reading(meters[3], 5, START + 50)], [], []))
    # a second oracle holds older readings of meters 0 and 3 (settled by the first) and new ones of meters 1 and 2
    other_store = Store.open(tmp_path / "other.db")
    other_relayer = Account.create()
    scenario.fund(other_relayer.address)
    second = make_settler(scenario, other_store, other_relayer, batch_max_events=2)
    ids = other_store.commit_batch(
        [
            scenario.reading(meters[0], 4, START + 40),
            scenario.reading(meters[1], 1, START + 10),
            scenario.reading(meters[2], 1, START + 20),
            scenario.reading(meters[3], 5, START + 50),
        ],
        [],
        [],
    )
    second.recover()
    calls = second.settled_seqs.rpc.calls

    second._submit_pass()

    assert second.settled_seqs.rpc.calls == calls + 1, "two batches, one read of the four agreements"
    events = settle_all(second, other_store, ids)
    paid = (EventStatus.SETTLED, EventStatus.FINAL)
    assert [e.status is EventStatus.SUPERSEDED for e in events] == [True, False, False, True]
    assert events[1].status in paid and events[2].status in paid
    assert [scenario.earnings(m) for m in meters] == [50 * PRICE, 10 * PRICE, 20 * PRICE, 50 * PRICE]
    # the stale readings of meters 0 and 3 were not sent: each batch went with its one new reading
    assert sorted(len(other_store.events_by_tx(tx.tx_key)) for tx in second.txstore.all()) == [1, 1]
    other_store.close()


def test_a_delivery_releases_its_escrow_at_once(scenario: Scenario, store: Store, relayer: LocalAccount) -> None:
    destination = b"u33dc0".ljust(32, b"\0")
    device, escrow_id, seller = scenario.tracker_escrow(destination)
    wrong = scenario.tracker_escrow(destination)
    records = [
        scenario.delivery(device, escrow_id, 1, destination),
        scenario.delivery(wrong[0], wrong[1], 1, b"u0".ljust(32, b"\0")),
    ]
    ids = store.commit_batch(records, [], [])
    # An hour-long meter settlement window does not hold deliveries back.
    settler = make_settler(scenario, store, relayer, settlement_window=3600.0, batch_max_wait=0.05)

    events = settle_all(settler, store, ids, timeout=10)

    assert scenario.escrow.functions.withdrawable("0x" + "00" * 20, seller).call() == 5 * 10**15
    assert events[1].status is EventStatus.DEAD and events[1].reason.startswith("WrongLocation")  # type: ignore[union-attr]


class _DirtySeqSpec(KindSpec):
    """Encodes the item with sequence number ``POISON`` one byte short. The packed batch is then not a whole number
    of items and the contract reverts the whole call (``MalformedBatch``): a real poison item (the products
    themselves skip every bad event they can name)."""

    POISON = 666

    def item(self, event: StoredEvent) -> bytes:
        encoded = super().item(event)
        if event.seq != self.POISON:
            return encoded
        return encoded[:-1]


def test_an_item_that_reverts_the_whole_batch_is_bisected_out_and_dead_lettered(
    scenario: Scenario, store: Store, relayer: LocalAccount
) -> None:
    meters = [scenario.meter() for _ in range(5)]
    settler = make_settler(scenario, store, relayer)
    spec = settler.submitter.specs["reading"]
    dirty = _DirtySeqSpec(
        spec.kind, spec.contract, spec.selector, spec.item_types, spec.settled_topic, spec.rejected_topic, spec.packed
    )
    settler.submitter.specs["reading"] = dirty
    settler.submitter._by_contract[spec.contract] = dirty
    records = [scenario.reading(m, 1, START + 10 * (i + 1)) for i, m in enumerate(meters)]
    records[2] = scenario.reading(meters[2], _DirtySeqSpec.POISON, START + 30)
    ids = store.commit_batch(records, [], [])
    metrics = Metrics()
    settler.submitter.metrics = metrics

    events = settle_all(settler, store, ids)

    assert events[2].status is EventStatus.DEAD and events[2].reason is not None
    assert events[2].reason.startswith("MalformedBatch")
    assert [scenario.earnings(m) for m in meters] == [10 * PRICE, 20 * PRICE, 0, 40 * PRICE, 50 * PRICE]
    assert len(settler.txstore.all()) == 1, "the four good items went in one transaction; the poison cost no gas"
    assert metrics.dead_lettered.labels(reason="MalformedBatch")._value.get() == 1


def test_a_dropped_transaction_is_resent_at_the_same_nonce_with_higher_fees(
    scenario: Scenario, store: Store, relayer: LocalAccount
) -> None:
    meter = scenario.meter()
    ids = store.commit_batch([scenario.reading(meter, 1, START + 40)], [], [])
    settler = make_settler(scenario, store, relayer, rebroadcast_after=600.0)
    with automine_off(scenario):
        settler.run_once()
        (sent,) = settler.txstore.all()
        assert sent.status is TxStatus.SENT
        scenario.rpc("anvil_dropTransaction", sent.tx_hash)

        deadline = time.monotonic() + 10
        while (current := settler.txstore.get(sent.tx_key)) is not None and current.attempts < 2:
            assert time.monotonic() < deadline, "the dropped transaction was not re-sent"
            settler.run_once()
            time.sleep(0.05)
        assert current is not None
        assert current.nonce == sent.nonce
        assert current.max_fee * 8 >= sent.max_fee * 9 and current.tip * 8 >= sent.tip * 9, "fees +12.5 %"
        assert scenario.w3.eth.get_transaction(current.tx_hash)["nonce"] == sent.nonce  # in the pool again
        scenario.mine()
        settle_all(settler, store, ids)
    assert scenario.w3.eth.get_transaction_receipt(current.tx_hash)["status"] == 1
    assert scenario.earnings(meter) == 40 * PRICE


def test_a_stuck_transaction_is_replaced_with_higher_fees_and_the_replacement_is_mined(
    scenario: Scenario, store: Store, relayer: LocalAccount
) -> None:
    meter = scenario.meter()
    ids = store.commit_batch([scenario.reading(meter, 1, START + 15)], [], [])
    settler = make_settler(scenario, store, relayer, rebroadcast_after=0.3)
    with automine_off(scenario):
        settler.run_once()
        (sent,) = settler.txstore.all()
        deadline = time.monotonic() + 10
        while (current := settler.txstore.get(sent.tx_key)) is not None and current.attempts < 2:
            assert time.monotonic() < deadline, "the stuck transaction was not replaced"
            settler.run_once()
            time.sleep(0.05)
        assert current is not None and current.tx_hash != sent.tx_hash and current.max_fee > sent.max_fee
        scenario.mine()
        settle_all(settler, store, ids)
    assert scenario.earnings(meter) == 15 * PRICE
    (tx,) = settler.txstore.all()
    assert tx.mined_hash == current.tx_hash, "the replacement (same nonce) was mined, the original never"


def test_a_restarted_settler_resumes_with_no_nonce_gap_and_no_double_payment(
    scenario: Scenario, store: Store, relayer: LocalAccount
) -> None:
    meters = [scenario.meter() for _ in range(3)]
    first_nonce = scenario.w3.eth.get_transaction_count(relayer.address)
    with automine_off(scenario):
        crashed = make_settler(scenario, store, relayer, batch_max_events=1)
        ids = store.commit_batch([scenario.reading(m, 1, START + 20) for m in meters], [], [])
        crashed.run_once()  # three transactions broadcast, none mined
        assert len(crashed.txstore.by_status(TxStatus.SENT)) == 3
        # ... and one stored and signed, but the process died before broadcasting it.
        late = store.commit_batch([scenario.reading(meters[0], 2, START + 90)], [], [])
        crashed.planner.claim()
        (batch,) = crashed.planner.cut(1, flush=True)
        assert isinstance(batch, Batch) and crashed.submitter.prepare(batch) is not None
        # ... plus one event claimed by the planner but in no transaction yet.
        claimed = store.commit_batch([scenario.reading(meters[1], 2, START + 80)], [], [])
        crashed.planner.claim()
        del crashed  # kill -9: nothing is cleaned up

        restarted = make_settler(scenario, store, relayer, batch_max_events=1)
        deadline = time.monotonic() + 20
        while any(e.status not in (EventStatus.SETTLED, EventStatus.FINAL) for e in store.events(ids + late + claimed)):
            assert time.monotonic() < deadline, "the restarted settler did not finish"
            restarted.run_once()
            scenario.mine()
            time.sleep(0.1)
        events = store.events(ids + late + claimed)

    assert all(e.status in (EventStatus.SETTLED, EventStatus.FINAL) for e in events)
    assert our_nonces(restarted) == list(range(first_nonce, first_nonce + 5)), "consecutive nonces, no gap"
    assert scenario.w3.eth.get_transaction_count(relayer.address) == first_nonce + 5
    assert restarted.txstore.next_nonce(scenario.chain_id, relayer.address) == first_nonce + 5
    assert scenario.earnings(meters[0]) == 90 * PRICE
    assert scenario.earnings(meters[1]) == 80 * PRICE
    assert scenario.earnings(meters[2]) == 20 * PRICE


def test_a_reorg_below_the_confirmation_depth_resubmits_and_pays_once(
    scenario: Scenario, store: Store, relayer: LocalAccount
) -> None:
    meter = scenario.meter()
    settler = make_settler(scenario, store, relayer, confirmations=3)
    ids = store.commit_batch([scenario.reading(meter, 1, START + 60)], [], [])
    settle_all(settler, store, ids)
    (tx,) = settler.txstore.all()
    assert tx.status is TxStatus.MINED and store.events(ids)[0].status is EventStatus.SETTLED
    assert scenario.earnings(meter) == 60 * PRICE

    with automine_off(scenario):
        scenario.rpc("anvil_rollback", 1)  # the settlement's block leaves the chain
        assert scenario.earnings(meter) == 0
        deadline = time.monotonic() + 10
        while not scenario.w3.eth.get_block("pending")["transactions"]:
            assert time.monotonic() < deadline, "the reorged transaction was not re-sent"
            settler.run_once()
            time.sleep(0.05)
        assert store.events(ids)[0].status is EventStatus.SUBMITTED
        scenario.mine()
        settle_all(settler, store, ids)
        assert scenario.earnings(meter) == 60 * PRICE, "paid once after the reorg"
        # not final before three blocks sit on top
        scenario.mine(2)
        for _ in range(3):
            settler.run_once()
        assert store.events(ids)[0].status is EventStatus.SETTLED
        scenario.mine(1)
        settle_all(settler, store, ids, statuses=(EventStatus.FINAL,))
    (tx,) = settler.txstore.all()
    assert tx.status is TxStatus.FINAL and tx.nonce == 0


def test_a_reverting_single_item_call_is_decoded_into_a_named_reason(scenario: Scenario) -> None:
    from web3.exceptions import ContractLogicError

    decoder = ErrorDecoder.from_artifacts(scenario.d.config, ["MeteredBilling", "DeliveryEscrow", "DeviceRegistry"])
    meter = scenario.meter()
    record = scenario.reading(meter, 1, START + 1, agreement=meter.agreement + 424_242)
    sig = record.sig
    vs = (int.from_bytes(sig[32:64], "big") | ((sig[64] - 27) << 255)).to_bytes(32, "big")
    call = scenario.billing.functions.settleReading((record.target_id, 1, record.timestamp, record.value, sig[:32], vs))
    with pytest.raises(ContractLogicError) as info:
        call.estimate_gas({"from": PROVIDER.address})
    decoded = decoder.decode_exception(info.value)
    assert decoded.name == "EventRejected" and decoded.reject_reason is RejectReason.UNKNOWN_TARGET
    assert decoded.label == "EventRejected:UnknownTarget"
    assert "no such agreement or escrow" in decoded.sentence and str(record.target_id) in decoded.sentence


def test_reject_reason_codes_match_the_solidity_enum() -> None:
    source = (REPO / "contracts" / "interfaces" / "IDeviceEvents.sol").read_text()
    body = re.search(r"enum RejectReason \{(.*?)\}", source, re.S)
    assert body is not None
    names = re.findall(r"^\s*(\w+)\s*,?\s*//", body.group(1), re.M)
    assert names == [reason.solidity_name for reason in RejectReason]


def test_the_running_settler_settles_in_the_background_and_drains_on_stop(
    scenario: Scenario, store: Store, relayer: LocalAccount
) -> None:
    meters = [scenario.meter() for _ in range(3)]
    # Without the eth_call preflight: after the first (estimated) batch, gas comes from what was learned.
    settler = make_settler(scenario, store, relayer, batch_max_wait=0.05, batch_preflight=False)
    settler.start()
    try:
        ids = store.commit_batch([scenario.reading(m, 1, START + 5) for m in meters], [], [])
        wait_for(
            lambda: all(e.status in (EventStatus.SETTLED, EventStatus.FINAL) for e in store.events(ids)),
            timeout=15,
            what="background settlement",
        )
        late = store.commit_batch([scenario.reading(m, 2, START + 9) for m in meters], [], [])
    finally:
        drained = settler.stop(drain=True, timeout=20)
    assert drained and not settler.running
    assert all(e.status in (EventStatus.SETTLED, EventStatus.FINAL) for e in store.events(late))
    assert [scenario.earnings(m) for m in meters] == [9 * PRICE] * 3
    assert settler.health == "ok"


def test_an_unreachable_node_degrades_health_and_loses_nothing(
    scenario: Scenario, store: Store, relayer: LocalAccount
) -> None:
    meter = scenario.meter()
    ids = store.commit_batch([scenario.reading(meter, 1, START + 33)], [], [])
    dead = Web3(HTTPProvider(f"http://127.0.0.1:{free_port()}", request_kwargs={"timeout": 1}))
    contracts = {"reading": (scenario.billing.address, scenario.billing.abi)}
    settler = Settler(
        store,
        dead,
        scenario.chain_id,
        relayer,
        contracts,
        ErrorDecoder([scenario.billing.abi]),
        SettlerSettings(max_backoff=0.2),
    )
    settler.start()
    try:
        wait_for(lambda: settler.health == "degraded", timeout=10, what="degraded health")
        time.sleep(0.5)
        assert settler.running, "the loop keeps running through node errors"
        assert settler.last_error is not None
    finally:
        settler.stop(drain=False)
    assert store.events(ids)[0].status is EventStatus.PENDING

    # The node is back (here: the real one): the stored event settles, once.
    (event,) = settle_all(make_settler(scenario, store, relayer), store, ids)
    assert event.status in (EventStatus.SETTLED, EventStatus.FINAL)
    assert scenario.earnings(meter) == 33 * PRICE


def test_a_relayer_without_funds_pauses_with_a_clear_reason_and_resumes_once_funded(
    scenario: Scenario, store: Store
) -> None:
    meter = scenario.meter()
    broke = Account.create()
    ids = store.commit_batch([scenario.reading(meter, 1, START + 44)], [], [])
    settler = make_settler(scenario, store, broke)
    for _ in range(3):
        settler.run_once()
    assert settler.health == "degraded"
    assert settler.last_error is not None and "cannot pay for gas" in settler.last_error
    assert store.events(ids)[0].status is EventStatus.SUBMITTED, "stored and signed, waiting for funds"

    scenario.fund(broke.address)
    time.sleep(1.1)  # the stored transaction is re-sent at most once a second
    (event,) = settle_all(settler, store, ids)
    assert event.status in (EventStatus.SETTLED, EventStatus.FINAL)
    assert settler.health == "ok"
    assert scenario.earnings(meter) == 44 * PRICE
    assert [tx.nonce for tx in settler.txstore.all()] == [0], "the same transaction, no nonce skipped"


def test_a_nonce_taken_by_another_sender_of_the_key_replans_the_events_once(
    scenario: Scenario, store: Store, relayer: LocalAccount
) -> None:
    meter = scenario.meter()
    ids = store.commit_batch([scenario.reading(meter, 1, START + 25)], [], [])
    settler = make_settler(scenario, store, relayer, rebroadcast_after=600.0)
    settler.tracker.settings = dataclasses.replace(settler.tracker.settings, lost_after=0.5)
    with automine_off(scenario):
        settler.run_once()
        (ours,) = settler.txstore.all()
        # Someone else with the same key replaces our transaction in the pool with a plain transfer.
        foreign = relayer.sign_transaction(
            {
                "type": 2,
                "chainId": scenario.chain_id,
                "nonce": ours.nonce,
                "to": FUNDER.address,
                "value": 1,
                "gas": 21_000,
                "maxFeePerGas": 4 * ours.max_fee,
                "maxPriorityFeePerGas": 4 * ours.tip + 1,
            }
        )
        scenario.w3.eth.send_raw_transaction(foreign.raw_transaction)
        scenario.mine()
        deadline = time.monotonic() + 15
        while (tx := settler.txstore.get(ours.tx_key)) is not None and tx.status is not TxStatus.LOST:
            assert time.monotonic() < deadline, "the taken nonce was not noticed"
            settler.run_once()
            time.sleep(0.1)
        settler.run_once()
        scenario.mine()
        (event,) = settle_all(settler, store, ids)
    assert event.status in (EventStatus.SETTLED, EventStatus.FINAL)
    assert scenario.earnings(meter) == 25 * PRICE
    assert next((t.nonce, t.status) for t in settler.txstore.all()) == (ours.nonce, TxStatus.LOST)
    assert sorted(t.nonce for t in settler.txstore.all() if t.status is not TxStatus.LOST) == [ours.nonce + 1]


def test_a_reorg_that_replaces_the_block_at_the_same_height_resubmits_and_pays_once(
    scenario: Scenario, store: Store, relayer: LocalAccount
) -> None:
    meter = scenario.meter()
    settler = make_settler(scenario, store, relayer, confirmations=2)
    ids = store.commit_batch([scenario.reading(meter, 1, START + 12)], [], [])
    settle_all(settler, store, ids)
    (mined,) = settler.txstore.all()
    height = scenario.w3.eth.block_number

    with automine_off(scenario):
        scenario.rpc("anvil_reorg", 1, [])  # same height, another block without our transaction
        assert scenario.w3.eth.block_number == height and scenario.earnings(meter) == 0
        deadline = time.monotonic() + 10
        while (
            store.events(ids)[0].status is not EventStatus.SUBMITTED
            or not scenario.w3.eth.get_block("pending")["transactions"]
        ):
            assert time.monotonic() < deadline, "the reorged transaction was not re-sent"
            settler.run_once()
            time.sleep(0.05)
        scenario.mine()
        settle_all(settler, store, ids)
        scenario.mine(2)
        settle_all(settler, store, ids, statuses=(EventStatus.FINAL,))
    (tx,) = settler.txstore.all()
    assert tx.nonce == mined.nonce and tx.block_hash != mined.block_hash
    assert scenario.earnings(meter) == 12 * PRICE, "paid once"
