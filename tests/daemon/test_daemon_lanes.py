"""Several relayer keys, each its own nonce lane (`[oracle] relayer_keys` / `relayer_private_keys`): the
configuration, a settler on a real anvil spreading batches over two lanes while a target in flight stays on its lane,
and the daemon process settling a fleet from two accounts, with each one's funds on /health and /metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from iotsettle.oracle.chain.connection import load_lanes
from iotsettle.oracle.config import load_config
from iotsettle.oracle.daemon.store import EventStatus, Store
from iotsettle.oracle.daemon.txstore import TxStatus
from iotsettle.oracle.protocol.errors import ConfigError, KeyFileError, SignerError
from iotsettle.oracle.testing.devices import Publisher
from web3 import Web3

from tests.daemon.test_settlement_chain import automine_off, make_settler, settle_all
from tests.kit.daemon import DaemonProcess
from tests.kit.reliability import Fleet, fund_relayer, metrics
from tests.kit.settlement import PRICE, START, Scenario

KEY_A = "0x" + "11" * 32
KEY_B = "0x" + "22" * 32

# ------------------------------------------------------------------------------------------------ configuration


def test_relayer_keys_come_from_the_file_and_raw_keys_from_the_environment(tmp_path: Path) -> None:
    toml = tmp_path / "iotsettle.toml"
    toml.write_text('[chain]\npassword_file = "pw"\n[oracle]\nrelayer_keys = ["keys/a.json", "keys/b.json"]\n')
    config = load_config(toml, env={"IOTSETTLE_ORACLE_RELAYER_PRIVATE_KEYS": f"{KEY_A}, {KEY_B}"})
    assert config.oracle.relayer_keys == ("keys/a.json", "keys/b.json")
    assert config.oracle.relayer_private_keys == (KEY_A, KEY_B)
    shown = json.dumps(config.redacted())
    assert config.redacted()["oracle"]["relayer_private_keys"] == "***"
    assert "11" * 32 not in shown and "11" * 32 not in repr(config)
    # one key, today's configuration: no lane beside it
    assert load_config(env={}, read_files=False).oracle.relayer_keys == ()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IOTSETTLE_ORACLE_RELAYER_PRIVATE_KEYS": f"{KEY_A},0x1234"}, "relayer_private_keys: key 2 is not a 32-byte"),
        ({"IOTSETTLE_ORACLE_RELAYER_PRIVATE_KEYS": f"{KEY_A},{KEY_A.upper()[2:]}"}, "holds one key twice"),
        ({"IOTSETTLE_ORACLE_RELAYER_KEYS": "a.json,a.json", "IOTSETTLE_CHAIN_PASSWORD": "x"}, "names a keystore"),
        ({"IOTSETTLE_ORACLE_RELAYER_KEYS": "a.json"}, "set IOTSETTLE_CHAIN_PASSWORD or [chain] password_file"),
    ],
)
def test_bad_relayer_keys_are_one_line_config_errors_that_quote_no_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env=env, read_files=False)
    text = str(caught.value)
    assert message in text and "\n" not in text
    assert "11" * 32 not in text.lower() and "1234" not in text


def test_lane_keys_load_from_keystores_and_a_key_twice_is_refused(tmp_path: Path) -> None:
    keystore = tmp_path / "lane.json"
    keystore.write_text(json.dumps(Account.encrypt(KEY_B, "secret", iterations=2)))
    keystore.chmod(0o600)
    env = {"IOTSETTLE_ORACLE_RELAYER_KEYS": str(keystore), "IOTSETTLE_CHAIN_PASSWORD": "secret"}
    first = Account.from_key(KEY_A)
    lanes = load_lanes(load_config(env=env, read_files=False), first)
    assert [lane.address for lane in lanes] == [Account.from_key(KEY_B).address]
    wrong = load_config(env={**env, "IOTSETTLE_CHAIN_PASSWORD": "nope"}, read_files=False)
    with pytest.raises(KeyFileError, match="wrong password for the key file"):
        load_lanes(wrong, first)
    twice = load_config(env={"IOTSETTLE_ORACLE_RELAYER_PRIVATE_KEYS": KEY_A}, read_files=False)
    with pytest.raises(KeyFileError, match=f"relayer {first.address} is configured twice"):
        load_lanes(twice, first)


# ------------------------------------------------------------------------------------- a settler with two lanes


def _lane_key(scenario: Scenario) -> LocalAccount:
    account: LocalAccount = Account.create()
    scenario.fund(account.address)
    return account


def _sender_of(store: Store, settler: Any, event_id: int) -> str:
    (event,) = store.events([event_id])
    assert event.tx_key is not None, f"event {event_id} is in no transaction ({event.status})"
    tx = settler.txstore.get(event.tx_key)
    assert tx is not None
    return str(tx.sender)


def test_batches_spread_over_both_lanes_and_each_lane_keeps_its_nonces_gapless(
    scenario: Scenario, store: Store, relayer: LocalAccount
) -> None:
    second = _lane_key(scenario)
    meters = [scenario.meter() for _ in range(8)]
    ids = store.commit_batch([scenario.reading(m, 1, START + 10 + i) for i, m in enumerate(meters)], [], [])
    settler = make_settler(
        scenario, store, relayer, batch_max_events=2, relayer_private_keys=("0x" + bytes(second.key).hex(),)
    )
    with automine_off(scenario):  # the four batches are all in flight at once
        settler.run_once()
        open_by = settler.txstore.count_open_by_sender()
        scenario.mine()
    assert open_by == {relayer.address: 2, second.address: 2}, open_by
    settle_all(settler, store, ids)
    for i, meter in enumerate(meters):
        assert scenario.earnings(meter) == (10 + i) * PRICE
    w3: Web3 = scenario.chain.w3
    for lane in (relayer.address, second.address):
        nonces = sorted(tx.nonce for tx in settler.txstore.all() if tx.sender == lane and tx.status != TxStatus.LOST)
        assert nonces == list(range(w3.eth.get_transaction_count(lane))), (lane, nonces)
        assert settler.txstore.next_nonce(scenario.chain.chain_id, lane) == len(nonces)
    status = settler.status()
    assert [lane["relayer"] for lane in status["lanes"]] == [relayer.address, second.address]
    settler.stop(drain=False)


def test_a_target_in_flight_stays_on_its_lane_and_waits_when_that_lane_is_full(
    scenario: Scenario, store: Store, relayer: LocalAccount
) -> None:
    second = _lane_key(scenario)
    hot, other = scenario.meter(), scenario.meter()
    settler = make_settler(
        scenario, store, relayer, max_in_flight=1, relayer_private_keys=("0x" + bytes(second.key).hex(),)
    )
    with automine_off(scenario):
        (first,) = store.commit_batch([scenario.reading(hot, 1, START + 10)], [], [])
        settler.run_once()
        lane = _sender_of(store, settler, first)
        # the hot meter's next reading arrives while its first is in flight; the other lane is empty
        newer, unrelated = store.commit_batch(
            [scenario.reading(hot, 2, START + 25), scenario.reading(other, 1, START + 40)], [], []
        )
        for _ in range(3):
            settler.run_once()
        assert _sender_of(store, settler, unrelated) != lane  # the free lane took the other meter
        (waiting,) = store.events([newer])
        assert waiting.status is not EventStatus.SUBMITTED and waiting.tx_key is None, waiting  # not overtaking
        scenario.mine()
    settle_all(settler, store, [first, newer, unrelated], statuses=(EventStatus.SETTLED, EventStatus.FINAL))
    # both of the hot meter's readings settled, in order: neither was refused, the register is paid in full
    assert all(e.status in (EventStatus.SETTLED, EventStatus.FINAL) for e in store.events([first, newer]))
    assert scenario.earnings(hot) == 25 * PRICE and scenario.earnings(other) == 40 * PRICE
    settler.stop(drain=False)


class _Refusing:
    """A signer that refuses every transaction, as a remote signer whose operator said no."""

    def __init__(self, address: str) -> None:
        self.address = address

    def sign_transaction(self, transaction_dict: Any, /) -> Any:
        raise SignerError("the remote signer refused to sign")


def test_a_batch_split_over_two_lanes_goes_back_to_pending_when_one_part_cannot_be_signed(
    scenario: Scenario, store: Store, relayer: LocalAccount
) -> None:
    second = _lane_key(scenario)
    one, two = scenario.meter(), scenario.meter()
    settler = make_settler(scenario, store, relayer, relayer_private_keys=("0x" + bytes(second.key).hex(),))
    with automine_off(scenario):
        # one meter in flight on each lane: the next readings of both make one batch split over the two lanes
        (first_one,) = store.commit_batch([scenario.reading(one, 1, START + 10)], [], [])
        settler.run_once()
        (first_two,) = store.commit_batch([scenario.reading(two, 1, START + 20)], [], [])
        settler.run_once()
        assert {_sender_of(store, settler, first_one), _sender_of(store, settler, first_two)} == {
            relayer.address,
            second.address,
        }
        later = store.commit_batch([scenario.reading(one, 2, START + 30), scenario.reading(two, 2, START + 40)], [], [])
        lanes = settler.submitter.lanes
        lanes[relayer.address].account, kept = _Refusing(relayer.address), lanes[relayer.address].account
        with pytest.raises(SignerError):
            settler.run_once()
        assert all(e.status is EventStatus.PENDING for e in store.events(later)), store.events(later)
        lanes[relayer.address].account = kept
        scenario.mine()
    settle_all(settler, store, later)
    assert scenario.earnings(one) == 30 * PRICE and scenario.earnings(two) == 40 * PRICE
    settler.stop(drain=False)


# ------------------------------------------------------------------------------------------- the daemon process


def test_the_daemon_settles_a_fleet_from_two_keys_and_reports_each_ones_funds(
    tmp_path: Path, deployment: Any, mosquitto: Any, daemons: list[DaemonProcess]
) -> None:
    first, second = fund_relayer(deployment), fund_relayer(deployment)
    addresses = [Account.from_key(key).address for key in (first, second)]
    fleet = Fleet(deployment, 24)
    daemon = DaemonProcess(
        tmp_path,
        deployment,
        mosquitto,
        relayer_key=first,
        IOTSETTLE_ORACLE_RELAYER_PRIVATE_KEYS=second,
        IOTSETTLE_ORACLE_BATCH_MAX_EVENTS="3",
        IOTSETTLE_ORACLE_BATCH_MAX_WAIT="0.05",
        IOTSETTLE_ORACLE_BALANCE_REFRESH="0.2",
    )
    daemons.append(daemon)
    code, findings, output = daemon.check()
    assert code == 0, output
    assert findings["relayer lanes"]["detail"] == f"2 nonce lanes: {addresses[0]}, {addresses[1]}", findings
    # --check loads every lane's key: a lane keystore that is not there fails the check, named by its file
    missing = tmp_path / "lane-3.json"
    code, findings, output = daemon.check(
        IOTSETTLE_ORACLE_RELAYER_KEYS=str(missing), IOTSETTLE_CHAIN_PASSWORD="not-a-secret"
    )
    assert code == 1, output
    assert findings["relayer key"]["status"] == "fail", findings
    assert f"cannot read the key file {missing}" in findings["relayer key"]["detail"], findings
    daemon.start().wait_ready()
    publisher = Publisher(mosquitto.host, mosquitto.port, deployment.chain.chain_id)
    try:
        for seq in (1, 2):
            publisher.publish_many(fleet.readings(seq, timestamp=fleet.started + seq))
        ledger = fleet.wait_paid(60)
    finally:
        publisher.close()
    assert ledger.clean, ledger

    w3: Web3 = deployment.chain.w3
    sent = {address: w3.eth.get_transaction_count(address) for address in addresses}
    assert all(count > 0 for count in sent.values()), f"both lanes send: {sent}"
    report = daemon.health()
    assert report is not None
    funds = report["checks"]["funds"]["detail"]
    assert all(f"relayer {address} holds" in funds for address in addresses), funds
    samples = metrics(daemon)
    for address in addresses:
        assert samples.get(f'iotsettle_oracle_relayer_balance_eth{{address="{address}"}}', 0) > 0, samples
    # every key stays out of the log, /health and /metrics
    text = daemon.log.read_text() + json.dumps(report) + json.dumps(samples)
    assert not re.search(f"{first[2:]}|{second[2:]}", text.lower())
