"""Health cover end to end: a wearable publishes signed activity summaries over MQTT, the oracle daemon relays them
(HealthInsurance.settle, packed), and the chain prices each period at its best tier; a summary withheld until after
the close still gives its discount back, as a credit the holder withdraws."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from eth_account import Account
from iotsettle.oracle.chain.connection import ANVIL_DEV_KEYS
from iotsettle.oracle.chain.send import send
from iotsettle.oracle.daemon.store import EventStatus, Store
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.testing.devices import Publisher
from iotsettle.oracle.testing.wait import wait_for
from web3.logs import DISCARD

from tests.kit.daemon import DaemonProcess
from tests.kit.devices import OWNER, ChainRegistry
from tests.kit.products import chain_now

BASE_RATE = 10**18
DISCOUNTS = [0, 1_000, 2_000, 3_500]
PERIOD_S = 3
PERIODS = 3


def price(tier: int | None) -> int:
    return BASE_RATE - (0 if tier is None else BASE_RATE * DISCOUNTS[tier] // 10_000)


def test_a_wearables_summaries_price_its_periods_through_the_daemon_and_a_late_one_is_credited(
    tmp_path: Path, deployment: Any, mosquitto: Any, registry: ChainRegistry
) -> None:
    chain = deployment.chain
    health, token = deployment.contract("HealthInsurance"), deployment.contract("TestToken")
    holder = Account.from_key(ANVIL_DEV_KEYS[2])

    def tx(account: Any, call: Any) -> dict[str, Any]:
        return send(chain, account, call.build_transaction({"from": account.address}))

    wearable = registry.register(DeviceKind.WEARABLE)
    terms = (BASE_RATE, PERIOD_S, PERIODS, DISCOUNTS, [5_000, 8_000, 12_000], [20, 30, 60])
    receipt = tx(OWNER, health.functions.offer(holder.address, wearable.address, token.address, terms))
    policy = health.events.PolicyOffered().process_receipt(receipt, errors=DISCARD)[0]["args"]["policyId"]
    deposit = 5 * BASE_RATE
    tx(holder, token.functions.mint(holder.address, deposit))
    tx(holder, token.functions.approve(health.address, deposit))
    receipt = tx(holder, health.functions.accept(policy, deposit))
    start = health.events.PolicyAccepted().process_receipt(receipt, errors=DISCARD)[0]["args"]["start"]
    end = start + PERIOD_S * PERIODS
    # the chain's clock may run ahead of this machine's (earlier tests moved it): wait for the chain's end
    offset = chain_now(chain.w3) - time.time()
    time.sleep(max(0.0, end + 1 - offset - time.time()))

    daemon = DaemonProcess(tmp_path, deployment, mosquitto, IOTSETTLE_ORACLE_BATCH_MAX_WAIT="0.1")
    publisher: Publisher | None = None
    try:
        daemon.start().wait_ready()
        publisher = Publisher(mosquitto.host, mosquitto.port, chain.chain_id)

        def publish(items: list[bytes]) -> list[dict[str, Any]]:
            assert publisher is not None
            publisher.publish_many([(wearable.topic, item) for item in items])
            return sorted((body for _, body in publisher.collect(len(items), 20)), key=lambda b: b["seq"])

        def summary(seq: int, period: int, tier: int) -> bytes:
            # signed after the period is over (here: after the policy's end); timestamps rise with seq (fraud rules)
            return wearable.activity(seq, period, tier, policy=policy, timestamp=end + seq)

        # period 0 at tier 1, then a better summary of it (tier 3); period 1 at tier 2; period 2 withheld
        replies = publish([summary(1, 0, 1), summary(2, 1, 2), summary(3, 0, 3)])
        assert [r["status"] for r in replies] == ["accepted"] * 3, replies
        wait_for(lambda: health.functions.policyOf(policy).call()[7] == [0, 0, 1, 1], 20, "tiers of periods 0 and 1")
        assert health.functions.tierOf(policy, 0).call() == [True, 3]
        assert health.functions.tierOf(policy, 2).call() == [False, 0]

        # the policy closes with period 2 charged the base rate
        tx(holder, health.functions.close(policy))
        charged = price(3) + price(2) + price(None)
        assert token.functions.balanceOf(holder.address).call() == deposit - charged

        # the withheld summary of period 2 (tier 1) arrives after the close: its discount is credited
        (late,) = publish([summary(4, 2, 1)])
        assert late["status"] == "accepted"
        discount = BASE_RATE * DISCOUNTS[1] // 10_000
        wait_for(
            lambda: health.functions.withdrawable(token.address, holder.address).call() == discount,
            20,
            "the late discount credited",
        )
        tx(holder, health.functions.withdraw(token.address))
        assert token.functions.balanceOf(holder.address).call() == deposit - (price(3) + price(2) + price(1))
        # a summary for a period beyond the policy's end passes the oracle's rules and is refused on chain
        (beyond,) = publish([wearable.activity(5, PERIODS, 3, policy=policy, timestamp=end + 5)])
        assert beyond["status"] == "accepted"
        (onchain,) = (body for _, body in publisher.collect(1, 20))
        assert (onchain["seq"], onchain["status"], onchain["reason"]) == (5, "rejected", "rejected_onchain")
    finally:
        if publisher is not None:
            publisher.close()
        daemon.signal(signal.SIGTERM)
        code = daemon.wait(60)
    assert code == 0

    store = Store.open(daemon.db)
    try:
        events = store.events_of_device(wearable.address)
    finally:
        store.close()
    assert [(e.kind, e.seq) for e in events] == [("activity", s) for s in (1, 2, 3, 4, 5)]
    assert {e.status for e in events[:4]} <= {EventStatus.SETTLED, EventStatus.FINAL}
    assert events[4].status is EventStatus.DEAD and (events[4].reason or "").startswith("AfterEnd")
    # only the tier was stored: what the oracle keeps is what the device signed
    assert events[0].msg == {"policyId": policy, "seq": 1, "timestamp": end + 1, "period": 0, "tier": 1}
