"""The relayer's money as an operator sees it: the daemon (a real process on anvil + mosquitto) exports its balance
and the gas it paid, and /health turns degraded with how much to send where once the balance lasts fewer than
[oracle] min_gas_hours at the last hour's spending; a restart remembers that hour from its database."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from iotsettle.cli._common import State
from iotsettle.cli.oracle import oracle
from iotsettle.oracle.daemon.funds import RelayerFunds
from iotsettle.oracle.testing.accounts import ETHER, funded_account
from iotsettle.oracle.testing.devices import Publisher
from iotsettle.oracle.testing.wait import wait_for

from tests.kit.daemon import DaemonProcess
from tests.kit.settlement import Meter, Scenario

FUNDED = ETHER // 100
#: a settlement costs ≥ 10^13 wei at anvil's 1 gwei tip: 0.01 ETH lasts ≤ 1,000 h at the test's few an hour
MIN_HOURS = 100_000


def _funds(daemon: DaemonProcess) -> dict[str, str]:
    report = daemon.health()
    assert report is not None
    return dict(report["checks"]["funds"])


def _send_readings(scenario: Scenario, mosquitto: Any, meter: Meter, count: int) -> None:
    publisher = Publisher(mosquitto.host, mosquitto.port, scenario.chain_id)
    try:
        start = scenario.now()
        for seq in range(1, count + 1):
            body = meter.device.reading(seq, 1_000 + seq, timestamp=start + seq, agreement=meter.agreement)
            publisher.publish(meter.device.topic, body)
        wait_for(lambda: scenario.earnings(meter) > 0, 60, "a reading settled")
    finally:
        publisher.close()


def test_health_says_how_much_to_send_where_when_gas_runs_short(
    tmp_path: Path, deployment: Any, mosquitto: Any, scenario: Scenario, daemons: list[DaemonProcess]
) -> None:
    relayer = funded_account(deployment.chain, FUNDED)
    key = "0x" + bytes(relayer.key).hex()
    w3 = deployment.chain.w3
    daemon = DaemonProcess(
        tmp_path,
        deployment,
        mosquitto,
        relayer_key=key,
        IOTSETTLE_ORACLE_MIN_GAS_HOURS=str(MIN_HOURS),
        IOTSETTLE_ORACLE_BALANCE_REFRESH="0.2",
        IOTSETTLE_ORACLE_BATCH_MAX_WAIT="0.05",
    )
    daemons.append(daemon)
    meter = scenario.meter()  # registered before the start: the daemon knows it from its first registry sync
    daemon.start().wait_ready()

    # nothing spent yet: ok, and the balance the node reports is on /metrics
    funds = _funds(daemon)
    assert funds["status"] == "ok", funds
    assert relayer.address in funds["detail"] and "no gas spent" in funds["detail"]
    assert daemon.metric(f'iotsettle_oracle_relayer_balance_eth{{address="{relayer.address}"}}') == FUNDED / 10**18
    assert daemon.metric("iotsettle_oracle_min_gas_hours") == MIN_HOURS

    _send_readings(scenario, mosquitto, meter, 3)

    def settled_up() -> int:
        """What left the account, once the daemon's figures agree with the node's (the relayer only pays gas)."""
        balance = w3.eth.get_balance(relayer.address)
        spent = FUNDED - balance
        seen_balance = daemon.metric(f'iotsettle_oracle_relayer_balance_eth{{address="{relayer.address}"}}') * 10**18
        seen_spent = daemon.metric(f'iotsettle_oracle_gas_spent_eth_total{{address="{relayer.address}"}}') * 10**18
        agree = abs(seen_balance - balance) <= balance * 1e-9 and abs(seen_spent - spent) <= spent * 1e-9
        return spent if spent > 0 and agree and _funds(daemon)["status"] == "degraded" else 0

    spent = wait_for(settled_up, 30, "the receipts' cost and the new balance on /metrics, and /health degraded")
    report = daemon.health()
    assert report is not None and report["status"] == "degraded"
    detail = report["checks"]["funds"]["detail"]

    # "send at least X ETH to <address> to reach N h": X tops the balance up to N hours of the hour's spending
    match = re.search(rf"send at least ([0-9.]+) ETH to (0x[0-9a-fA-F]{{40}}) to reach {MIN_HOURS} h", detail)
    assert match is not None, detail
    assert match.group(2) == relayer.address
    needed = MIN_HOURS * spent - (FUNDED - spent)
    assert needed <= float(match.group(1)) * 10**18 <= needed * 1.001, (detail, needed)
    metrics = daemon.get("/metrics")
    assert metrics is not None and 'iotsettle_oracle_health_check{check="funds"} 1.0' in metrics[1].decode()
    assert 0 < daemon.metric(f'iotsettle_oracle_gas_hours_left{{address="{relayer.address}"}}') < MIN_HOURS

    # a restart seeds the hour from the database: still degraded before anything new is spent
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(60) == 0
    daemon.start().wait_ready()
    assert _funds(daemon)["status"] == "degraded", _funds(daemon)
    # and `iotsettle oracle status` shows the line to a person
    env = {k: v for k, v in daemon.env.items() if k.startswith("IOTSETTLE_")}
    status = CliRunner().invoke(oracle, ["status"], env=env, obj=State(None), terminal_width=400)
    assert status.exit_code == 0, status.output
    assert f"funds: relayer {relayer.address} has" in status.output and "send at least" in status.output

    # the key never reaches the log, /health or /metrics
    for text in (daemon.log.read_text(), str(daemon.health()), daemon.get("/metrics")[1].decode()):  # type: ignore[index]
        assert key[2:] not in text.lower()

    # `oracle run --check` reads the hour from the database too: a warning with the amount, and it would start
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(60) == 0
    code, findings, output = daemon.check()
    assert code == 0, output
    assert findings["funds"]["status"] == "warn" and "send at least" in findings["funds"]["detail"], findings


def test_enough_gas_is_ok_and_names_the_hours_left(
    tmp_path: Path, deployment: Any, mosquitto: Any, scenario: Scenario, daemons: list[DaemonProcess]
) -> None:
    relayer = funded_account(deployment.chain, 10 * ETHER)
    daemon = DaemonProcess(
        tmp_path,
        deployment,
        mosquitto,
        relayer_key="0x" + bytes(relayer.key).hex(),
        IOTSETTLE_ORACLE_MIN_GAS_HOURS="1",
        IOTSETTLE_ORACLE_BALANCE_REFRESH="0.2",
        IOTSETTLE_ORACLE_BATCH_MAX_WAIT="0.05",
    )
    daemons.append(daemon)
    meter = scenario.meter()  # registered before the start: the daemon knows it from its first registry sync
    daemon.start().wait_ready()
    _send_readings(scenario, mosquitto, meter, 2)
    wait_for(lambda: "h of gas at" in _funds(daemon)["detail"], 20, "the spending seen by the funds check")
    funds = _funds(daemon)
    assert funds["status"] == "ok", funds
    pattern = rf"relayer {relayer.address} holds [0-9.]+ ETH: \d+\.\d h of gas at [0-9.]+ ETH/h"
    assert re.search(pattern, funds["detail"]), funds


class _Node:
    """A balance that the test sets, and counts how often it is read (stands in for eth_getBalance)."""

    def __init__(self, wei: int) -> None:
        self.wei, self.reads, self.down = wei, 0, False

    def __call__(self, address: str) -> int:
        self.reads += 1
        if self.down:
            raise ConnectionError(f"HTTPSConnectionPool: Max retries exceeded with url /v3/api-key-1 for {address}")
        return self.wei


def test_the_rate_is_the_last_hour_and_the_balance_is_read_at_most_every_refresh() -> None:
    now = [1_000_000.0]
    node = _Node(ETHER)
    funds = RelayerFunds("0xR", node, min_hours=24, refresh=3600, clock=lambda: now[0])
    funds.seed([(now[0] - 4000, 10**18), (now[0] - 1800, 10**16)])  # the first one is older than the hour
    assert funds.rate() == 10**16
    funds.spent(2 * 10**16)
    assert funds.rate() == 3 * 10**16
    state, detail = funds.check()  # 1 ETH at 0.03 ETH/h: 33.3 h ≥ 24 h
    assert (str(state), detail) == ("ok", "relayer 0xR holds 1.000 ETH: 33.3 h of gas at 0.03000 ETH/h")
    now[0] += 1801  # the seeded 0.01 ETH leaves the window
    assert funds.rate() == 2 * 10**16
    node.wei = ETHER // 4
    for _ in range(5):
        funds.check()
    assert node.reads == 1  # one read for all those checks: refresh is an hour
    assert funds.balance() == ETHER


def test_a_node_error_keeps_the_last_balance_and_quotes_no_url() -> None:
    node = _Node(ETHER // 10)
    funds = RelayerFunds("0xR", node, min_hours=24, refresh=0)
    funds.spent(10**16)  # 0.1 ETH at 0.01 ETH/h: 10 h
    assert funds.balance() == ETHER // 10
    node.down = True
    state, detail = funds.check()
    assert str(state) == "degraded"
    assert detail == (
        "relayer 0xR has 10.0 h of gas at the last hour's rate (0.01000 ETH/h) (balance as last read; now node "
        "error ConnectionError): send at least 0.1400 ETH to 0xR to reach 24 h"
    )
    assert "api-key" not in detail
