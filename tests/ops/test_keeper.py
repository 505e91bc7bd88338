"""The keeper on a real anvil: a due crop season is finalized and paid, and the loan's payout account swept, with
nobody calling finalize or sweep; an idle pass sends nothing; a season not yet due is left alone; SIGTERM stops it.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from typing import Any

import pytest
from iotsettle.oracle.ops.context import open_context
from iotsettle.oracle.ops.keeper import Keeper
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.location import location_bytes32

from tests.kit.cli import Cli, User, cli_env, register_device
from tests.kit.products import allow_insurer, chain_now, delivery, token_balance, warp_to, weather
from tests.kit.stack import REPO

TOKEN = 10**18
DAY = 86_400


def _nonce(w3: Any, user: User) -> int:
    return int(w3.eth.get_transaction_count(user.address))


def _keeper_pass(cli: Cli, keeper: User) -> dict[str, Any]:
    return cli.ok(["keeper", "run", "--once"], keeper)


def test_due_season_is_paid_and_the_loan_swept_without_anyone_asking(own_deployment) -> None:
    deployment, w3 = own_deployment, own_deployment.chain.w3
    cli = Cli(deployment.config)
    insurer, farmer, lender, buyer, keeper = (cli.user(w3) for _ in range(5))
    stations = [register_device(deployment.config, insurer, DeviceKind.WEATHER_STATION) for _ in range(3)]
    allow_insurer(cli, insurer, stations)
    crop = deployment.address("CropInsurance")

    pool_id = cli.ok(["crop", "pool-create"], insurer)["poolId"]
    cli.ok(["token", "mint", "--amount", "1000"], insurer)
    cli.ok(["crop", "pool-deposit", str(pool_id), "--amount", "1000"], insurer)
    start = chain_now(w3) + 600
    common = [
        "--pool",
        str(pool_id),
        *[a for s in stations for a in ("--station", s.address)],
        "--k",
        "2",
        "--index",
        "rain",
        "--threshold",
        "50mm",
        "--premium",
        "5%",
        "--coverage-slack",
        "1h",
        "--finalize-delay",
        "10s",
    ]
    season_id = cli.ok(
        ["crop", "season-create", *common, "--start", str(start), "--end", str(start + 3 * DAY)], insurer
    )["seasonId"]
    later_id = cli.ok(
        ["crop", "season-create", *common, "--start", str(start), "--end", str(start + 30 * DAY)], insurer
    )["seasonId"]

    # the farmer's loan (110 to repay, half of each payout) is repaid from cover paid to its payout account
    cli.ok(["token", "mint", "--amount", "100"], lender)
    loan_id = cli.ok(
        [
            "loan",
            "offer",
            "--borrower",
            farmer.address,
            "--principal",
            "100",
            "--repayment",
            "110",
            "--share",
            "50%",
            "--due-by",
            "+60d",
        ],
        lender,
    )["loanId"]
    account = cli.ok(["loan", "accept", str(loan_id)], farmer)["account"]
    cli.ok(["crop", "buy", str(season_id), "--cover", "200", "--beneficiary", account], farmer)
    cli.ok(["crop", "buy", str(later_id), "--cover", "50", "--beneficiary", account], farmer)

    # and from a delivery escrow released to the account: 60 TEST credited in DeliveryEscrow
    tracker = register_device(deployment.config, buyer, DeviceKind.TRACKER)
    cli.ok(["token", "mint", "--amount", "60"], buyer)
    escrow_id = cli.ok(
        [
            "escrow",
            "create",
            "--seller",
            account,
            "--device",
            tracker.address,
            "--amount",
            "60",
            "--destination",
            "u33dc0cr",
            "--deadline",
            "+2h",
        ],
        buyer,
    )["escrowId"]
    signed = delivery(
        tracker,
        w3.eth.chain_id,
        deployment.address("DeliveryEscrow"),
        escrow_id,
        1,
        chain_now(w3),
        location_bytes32("u33dc0cr"),
    )
    cli.ok(["escrow", "confirm", "-"], buyer, stdin=signed.to_payload().decode())

    # a drought: 10 mm over the season at every station
    warp_to(w3, start + 60)
    cli.ok(["crop", "record", "-"], stdin="\n".join(weather(s, w3, crop, 1, 10_000) for s in stations))
    warp_to(w3, start + 3 * DAY - 60)
    cli.ok(["crop", "record", "-"], stdin="\n".join(weather(s, w3, crop, 2, 11_000) for s in stations))
    warp_to(w3, start + 3 * DAY + 1)  # each station reports once after the end: it votes only then
    cli.ok(["crop", "record", "-"], stdin="\n".join(weather(s, w3, crop, 3, 11_000) for s in stations))
    farmer_before = token_balance(deployment, farmer.address)

    warp_to(w3, start + 3 * DAY + 11)
    summary = _keeper_pass(cli, keeper)
    assert [(a["kind"], a["target"], a["error"]) for a in summary["actions"]] == [
        ("finalize", season_id, None),
        ("sweep", loan_id, None),
    ]
    assert summary["actions"][0]["text"] == f"season {season_id} finalized: trigger 3/3 → 1 cover paid, 200 TEST"
    # 200 TEST cover pushed to the account + 60 TEST pulled from the escrow: half is 130, capped at the 110 owed
    assert summary["actions"][1]["text"] == (
        f"loan {loan_id} swept: 110 TEST repaid, 150 TEST forwarded (loan repaid in full)"
    )
    assert summary["actions"][1]["details"]["collected"] == [
        {"source": deployment.address("DeliveryEscrow"), "amount": str(60 * TOKEN)}
    ]
    assert token_balance(deployment, lender.address) == 110 * TOKEN
    assert token_balance(deployment, farmer.address) == farmer_before + 150 * TOKEN
    assert token_balance(deployment, account) == 0
    assert cli.ok(["crop", "season", str(season_id)])["policies"][0]["status"] == "paid"
    assert cli.ok(["loan", "show", str(loan_id)])["status"] == "repaid"

    # the season ending in 30 days is left alone, and a second pass has nothing to do: no transaction sent
    assert cli.ok(["crop", "season", str(later_id)])["finalized"] is False
    nonce = _nonce(w3, keeper)
    again = _keeper_pass(cli, keeper)
    assert again["actions"] == [] and again["failures"] == 0
    assert _nonce(w3, keeper) == nonce

    # someone else finalizes the later season first: the keeper only sweeps what reaches the repaid loan's account
    warp_to(w3, start + 30 * DAY + 11)
    cli.ok(["crop", "finalize", str(later_id)], insurer)  # no station reported at the end: the cover expires
    assert _keeper_pass(cli, keeper)["actions"] == []
    cli.ok(["token", "mint", "--to", account, "--amount", "7"], buyer)  # any later payment to the account
    late = _keeper_pass(cli, keeper)
    assert [a["text"] for a in late["actions"]] == [f"loan {loan_id} swept: 0 TEST repaid, 7 TEST forwarded"]
    assert token_balance(deployment, farmer.address) == farmer_before + 157 * TOKEN


def test_a_season_not_yet_due_is_left_alone_and_history_is_read_once(own_deployment, tmp_path) -> None:
    deployment, w3 = own_deployment, own_deployment.chain.w3
    cli = Cli(deployment.config)
    insurer, keeper = cli.user(w3), cli.user(w3)
    stations = [register_device(deployment.config, insurer, DeviceKind.WEATHER_STATION) for _ in range(3)]
    allow_insurer(cli, insurer, stations)
    pool_id = cli.ok(["crop", "pool-create"], insurer)["poolId"]
    start = chain_now(w3) + 600
    season_id = cli.ok(
        [
            "crop",
            "season-create",
            "--pool",
            str(pool_id),
            *[a for s in stations for a in ("--station", s.address)],
            "--k",
            "2",
            "--index",
            "rain",
            "--threshold",
            "50mm",
            "--premium",
            "5%",
            "--start",
            str(start),
            "--end",
            str(start + DAY),
        ],
        insurer,
    )["seasonId"]
    nonce = _nonce(w3, keeper)
    result = cli.run(["keeper", "run", "--once"], keeper)
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.stdout
    assert cli.ok(["crop", "season", str(season_id)])["finalized"] is False
    assert _nonce(w3, keeper) == nonce

    # a running keeper reads only the blocks it has not seen yet, and still watches the season
    worker = Keeper(dataclasses.replace(open_context(deployment.config), sender=keeper.account))
    first = worker.run_pass()
    cli.ok(["token", "mint", "--amount", "1"], insurer)  # a new block
    second = worker.run_pass()
    assert second.from_block == first.to_block + 1 and second.to_block > first.to_block
    assert season_id in worker.seasons and (first.actions, second.actions) == ((), ())
    assert _nonce(w3, keeper) == nonce

    # so does a cron job with --state: the second run starts where the first stopped
    state = tmp_path / "keeper.json"
    cron = [cli.ok(["keeper", "run", "--once", "--state", str(state)], keeper) for _ in range(2)]
    assert cron[1]["fromBlock"] == cron[0]["toBlock"] + 1 and cron[1]["seasonsWatched"] >= 1
    assert _nonce(w3, keeper) == nonce


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_keeper_run_stops_on_sigterm_with_exit_0_and_ctrl_c_with_130(own_deployment, signum: int, status: int) -> None:
    deployment, w3 = own_deployment, own_deployment.chain.w3
    cli = Cli(deployment.config)
    keeper = cli.user(w3)
    env = {**os.environ, **cli_env(deployment.config), **cli.keys, "COLUMNS": "300"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from iotsettle.cli.main import main; main()",
            "keeper",
            "run",
            "--interval",
            "1s",
            "--from-key-env",
            keeper.env_name,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        started = proc.stderr.readline()  # the banner is printed once the context is open
        assert "SIGTERM or Ctrl-C stops it" in started, started
        proc.send_signal(signum)
        assert proc.wait(timeout=15) == status
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
