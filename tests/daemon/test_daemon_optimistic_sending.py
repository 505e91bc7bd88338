"""The optimistic relayer's own transactions on an anvil of this module's own (the tests move chain time and fees):
a commit or a claim left in the pool is re-signed at its nonce with the settlement submitter's higher fees, whichever
stored version is mined is found again after a restart, and a claim's readings are final only once ``[chain]
confirmations`` blocks sit on it (a reorg that drops the claim sends it again and bills once)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from iotsettle.oracle.daemon.deployment import resolve
from iotsettle.oracle.daemon.optimistic import OptimisticRelayer, OptimisticSettings
from iotsettle.oracle.daemon.settler import Settler
from iotsettle.oracle.daemon.store import Store
from iotsettle.oracle.testing.stack import Deployment, private_deployment

from tests.kit.products import warp_to
from tests.kit.settlement import PRICE, START, Meter, Scenario, automine_off

OPT = "OptimisticBilling"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """This module's own chain, under the folder's ``scenario``, ``relayer`` and ``store``."""
    with private_deployment(tmp_path_factory.mktemp("optimistic-sending")) as own:
        yield own


def relay(scenario: Scenario, store: Store, account: LocalAccount, **settings: Any) -> OptimisticRelayer:
    """The daemon's relayer, in this process: the settlement half's nonces, fee policy and recovery."""
    config = scenario.d.config.replace(
        "chain", private_key="0x" + bytes(account.key).hex(), confirmations=settings.get("confirmations", 1)
    )
    settler = Settler.from_deployment(config, resolve(config, scenario.chain), store)
    return OptimisticRelayer(
        config,
        scenario.chain,
        scenario.d.manifest,
        settler.submitter.account,
        store,
        OptimisticSettings(interval_s=0.0, poll_s=0.1, **settings),
        fees=settler.submitter,
        recover=settler.recover,
    )


def store_reading(scenario: Scenario, store: Store, meter: Meter, seq: int, value: int) -> int:
    (event,) = store.commit_batch([scenario.reading(meter, seq, value)], [], [], optimistic=(scenario.d.address(OPT),))
    return event


def rows(store: Store, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the oracle's file as an operator would, beside the relayer's connection."""
    (path,) = [row[2] for row in store.conn.execute("PRAGMA database_list") if row[1] == "main"]
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


def attempts(store: Store, column: str, row: int) -> list[str]:
    return [str(h) for (h,) in rows(store, f"SELECT tx_hash FROM optimistic_attempt WHERE {column} = ?", row)]


def statuses(store: Store, ids: list[int]) -> list[str]:
    return [e.status for e in store.events(ids)]


def price_out(scenario: Scenario, tx_hash: str) -> Any:
    """The base fee jumps to 20 × what ``tx_hash`` offers and a block is mined without it (anvil then drops it from
    its pool); returns the transaction as it was sent."""
    sent = scenario.w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
    scenario.rpc("anvil_setNextBlockBaseFeePerGas", hex(20 * int(sent["maxFeePerGas"])))
    scenario.mine()
    assert scenario.rpc("eth_getTransactionReceipt", tx_hash) is None, "priced out of the block"
    return sent


def until(condition: Callable[[], bool], step: Callable[[], None], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        step()
        time.sleep(0.05)


def past_window(scenario: Scenario, store: Store) -> None:
    opt = scenario.d.contract(OPT)
    (batch_id,) = rows(store, "SELECT MAX(batch_id) FROM optimistic_batch")[0]
    committed_at = int(opt.functions.batchOf(batch_id).call()[3])
    warp_to(scenario.w3, committed_at + int(opt.functions.CHALLENGE_WINDOW().call()) + 1)


def test_a_commit_and_a_claim_priced_out_of_the_pool_are_re_signed_at_their_nonce_with_higher_fees(
    scenario: Scenario, store: Store, relayer: LocalAccount
) -> None:
    w3, opt = scenario.w3, scenario.d.contract(OPT)
    meter = scenario.optimistic_meter()
    ids = [store_reading(scenario, store, meter, 1, START + 40)]
    relayer_ = relay(scenario, store, relayer, rebroadcast_s=0.3)

    with automine_off(scenario):
        relayer_.run_once(flush=True)
        ((batch, first),) = rows(store, "SELECT id, tx_hash FROM optimistic_batch")
        original = price_out(scenario, first)

        def mine_and_pass() -> None:
            relayer_.run_once()
            scenario.mine()

        until(lambda: rows(store, "SELECT status FROM optimistic_batch")[0][0] == "committed", mine_and_pass, "commit")
    versions = attempts(store, "batch", batch)
    ((mined,),) = rows(store, "SELECT tx_hash FROM optimistic_batch")
    assert len(versions) >= 2 and versions[0] == first and mined in versions[1:], "a replacement was mined"
    replacement = w3.eth.get_transaction(mined)  # type: ignore[arg-type]
    assert replacement["nonce"] == original["nonce"]
    assert replacement["maxFeePerGas"] * 8 >= original["maxFeePerGas"] * 9, "fees +12.5 % at least"
    assert replacement["maxPriorityFeePerGas"] * 8 >= original["maxPriorityFeePerGas"] * 9
    assert len(opt.events.BatchCommitted().get_logs(from_block=0, argument_filters={"relayer": relayer.address})) == 1

    ((batch_id,),) = rows(store, "SELECT batch_id FROM optimistic_batch")
    scenario.mine(40)  # the base fee falls back (12.5 % a block), so that the node takes the claim at first
    past_window(scenario, store)
    with automine_off(scenario):
        relayer_.run_once()
        ((claim, claimed),) = rows(store, "SELECT id, tx_hash FROM optimistic_claim")
        price_out(scenario, claimed)
        until(
            lambda: statuses(store, ids) == ["final"] and int(opt.functions.batchOf(batch_id).call()[4]) == 3,
            mine_and_pass,
            "the claim mined and final, the bond released",
        )
    assert len(attempts(store, "claim", claim)) >= 2, "the claim was re-signed"
    assert int(opt.functions.earningsOf(meter.agreement).call()) == 40 * PRICE
    assert [
        int(c["args"]["seq"])
        for c in opt.events.ReadingClaimed().get_logs(from_block=0)
        if int(c["args"]["agreementId"]) == meter.agreement
    ] == [1], "claimed once"
    assert w3.eth.get_transaction_count(relayer.address) == original["nonce"] + 3, "commit, claim, bond: no gap"


def test_after_a_restart_the_original_of_a_replaced_commit_may_be_the_one_mined(
    scenario: Scenario, store: Store, relayer: LocalAccount
) -> None:
    w3, opt = scenario.w3, scenario.d.contract(OPT)
    meter = scenario.optimistic_meter()
    store_reading(scenario, store, meter, 1, START + 25)
    crashed = relay(scenario, store, relayer, rebroadcast_s=0.3)
    with automine_off(scenario):
        crashed.run_once(flush=True)
        ((batch, first, raw),) = rows(store, "SELECT id, tx_hash, raw FROM optimistic_batch")
        until(lambda: len(attempts(store, "batch", batch)) == 2, crashed.run_once, "the commit re-signed")
        replacement = attempts(store, "batch", batch)[1]
        del crashed  # stopped with the replacement stored and broadcast

        # the node lost the replacement, and the original came back (another node still had it)
        scenario.rpc("anvil_dropTransaction", replacement)
        scenario.rpc("eth_sendRawTransaction", "0x" + bytes(raw).hex())
        scenario.mine()
        assert w3.eth.get_transaction_receipt(first)["status"] == 1  # type: ignore[arg-type]

        restarted = relay(scenario, store, relayer, rebroadcast_s=0.3)
        until(
            lambda: rows(store, "SELECT status FROM optimistic_batch")[0][0] == "committed",
            restarted.run_once,
            "the restarted relayer finding the original's receipt",
        )
    ((status, mined, batch_id),) = rows(store, "SELECT status, tx_hash, batch_id FROM optimistic_batch")
    assert (status, mined) == ("committed", first)
    commits = opt.events.BatchCommitted().get_logs(from_block=0, argument_filters={"relayer": relayer.address})
    assert [int(c["args"]["batchId"]) for c in commits] == [batch_id], "committed once"
    restarted.run_once()
    assert len(rows(store, "SELECT id FROM optimistic_batch")) == 1, "its reading is not committed again"


def test_a_claims_readings_are_final_after_the_confirmations_and_a_reorged_claim_is_sent_again_and_bills_once(
    scenario: Scenario, store: Store, relayer: LocalAccount
) -> None:
    opt = scenario.d.contract(OPT)
    meter = scenario.optimistic_meter()
    ids = [store_reading(scenario, store, meter, seq, START + 10 * seq) for seq in (1, 2)]
    relayer_ = relay(scenario, store, relayer, confirmations=2)
    relayer_.run_once(flush=True)
    until(lambda: rows(store, "SELECT status FROM optimistic_batch")[0][0] == "committed", relayer_.run_once, "commit")
    past_window(scenario, store)

    with automine_off(scenario):
        relayer_.run_once()  # the claim of seq 2, in the pool
        scenario.mine()
        relayer_.run_once()  # its receipt: settled, not final
        assert statuses(store, ids) == ["settled", "settled"]
        assert int(opt.functions.earningsOf(meter.agreement).call()) == 20 * PRICE

        # the claim's block is replaced by one without it
        scenario.rpc("anvil_reorg", 1, [])
        assert int(opt.functions.earningsOf(meter.agreement).call()) == 0
        relayer_.run_once()
        assert statuses(store, ids) == ["optimistic", "optimistic"], "back to waiting for the claim"
        relayer_.run_once()  # the same signed claim, sent again
        scenario.mine()
        relayer_.run_once()
        assert statuses(store, ids) == ["settled", "settled"], "the claim mined again"

        scenario.mine()  # one block on top of the claim's: not enough
        relayer_.run_once()
        assert statuses(store, ids) == ["settled", "settled"]
        scenario.mine()  # two
        relayer_.run_once()
        assert statuses(store, ids) == ["final", "final"]

    assert int(opt.functions.earningsOf(meter.agreement).call()) == 20 * PRICE, "billed once"
    (claim_hash,) = {e.tx_hash for e in store.events(ids)}
    assert scenario.w3.eth.get_transaction_receipt(claim_hash)["status"] == 1  # type: ignore[arg-type]
