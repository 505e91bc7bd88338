"""`iotsettle guard` and `device approve` end to end on a real anvil: a seller's own device is the second factor of its
escrow withdrawals."""

from __future__ import annotations

import json
from pathlib import Path

from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.location import location_bytes32

from tests.cli.test_cli_device_sign import PASSWORD, _device
from tests.kit.cli import Cli, User, register_device
from tests.kit.products import chain_now, delivery, token_balance

TOKEN = 10**18
DEST = "u33dc0cr"


def _credited_seller(cli: Cli, deployment, w3, amount: int = 25) -> User:
    """A seller with ``amount`` TEST credited by a released escrow."""
    buyer, seller = cli.user(w3), cli.user(w3)
    tracker = register_device(deployment.config, buyer, DeviceKind.TRACKER)
    cli.ok(["token", "mint", "--to", buyer.address, "--amount", str(amount)], buyer)
    created = cli.ok(
        [
            *("escrow", "create", "--seller", seller.address, "--device", tracker.address),
            *("--amount", str(amount), "--destination", DEST, "--deadline", "+2h"),
        ],
        buyer,
    )
    signed = delivery(
        tracker,
        w3.eth.chain_id,
        deployment.address("DeliveryEscrow"),
        created["escrowId"],
        1,
        chain_now(w3),
        location_bytes32(DEST),
    )
    cli.ok(["escrow", "confirm", "-"], buyer, stdin=signed.to_payload().decode())
    return seller


def _approve(cli: Cli, phone: Path, seller: User, path: Path, amount: str, *extra: str) -> Path:
    result = cli.run(
        ["device", "approve", "--key", str(phone), "--account", seller.address, "--amount", amount, *extra],
        **PASSWORD,
    )
    assert result.exit_code == 0, result.output
    path.write_text(result.stdout)
    return path


def test_a_guarded_withdrawal_above_the_threshold_needs_the_device(cli: Cli, deployment, w3, tmp_path: Path) -> None:
    seller = _credited_seller(cli, deployment, w3)
    phone = _device(cli, tmp_path, seller, "tracker")
    set_out = cli.ok(
        ["guard", "set", "--threshold", "10", "--cell", "u33db", "--device-key", str(phone)], seller, **PASSWORD
    )
    assert set_out["threshold"] == str(10 * TOKEN) and set_out["cells"] == ["u33db"]

    shown = cli.ok(["guard", "show"], seller)
    assert shown["enabled"] is True and shown["threshold"] == str(10 * TOKEN) and shown["cells"] == ["u33db"]
    escrow = next(led for led in shown["ledgers"] if led["name"] == "DeliveryEscrow")
    assert escrow["guarded"] is True and escrow["withdrawable"] == str(25 * TOKEN)

    # The account key alone: refused in one sentence, the money stays credited.
    error = cli.fails(["escrow", "withdraw"], seller)
    assert "needs the account's device" in error
    assert token_balance(deployment, seller.address) == 0

    # Approved by the phone, outside the allowed cell: refused.
    away = _approve(cli, phone, seller, tmp_path / "away.json", "25", "--contract", "escrow", "--location", "u4pruyd")
    assert "outside every cell" in cli.fails(["escrow", "withdraw", "--approval", str(away)], seller)

    # Approved from inside the cell: paid.
    approval = _approve(cli, phone, seller, tmp_path / "ok.json", "25", "--contract", "escrow", "--location", "u33dbfc")
    assert json.loads(approval.read_text())["ledger"] == deployment.address("DeliveryEscrow")
    paid = cli.ok(["escrow", "withdraw", "--approval", str(approval)], seller)
    assert paid["amount"] == str(25 * TOKEN)
    assert token_balance(deployment, seller.address) == 25 * TOKEN

    # The same approval again: its nonce is spent.
    assert "is not the current key of an active device" in cli.fails(
        ["escrow", "withdraw", "--approval", str(approval)], seller
    )


def test_an_approval_for_another_contract_or_account_is_refused_before_sending(
    cli: Cli, deployment, w3, tmp_path: Path
) -> None:
    seller = _credited_seller(cli, deployment, w3, amount=5)
    phone = _device(cli, tmp_path, seller, "tracker")
    cli.ok(["guard", "set", "--threshold", "1", "--device-key", str(phone)], seller, **PASSWORD)
    for_motor = _approve(cli, phone, seller, tmp_path / "motor.json", "5", "--contract", "motor")
    assert "is for the contract at" in cli.fails(["escrow", "withdraw", "--approval", str(for_motor)], seller)
    stranger = cli.user(w3)
    for_escrow = _approve(cli, phone, seller, tmp_path / "escrow.json", "5", "--contract", "escrow")
    assert f"the sender is {stranger.address}" in cli.fails(
        ["escrow", "withdraw", "--approval", str(for_escrow)], stranger
    )


def test_opting_out_needs_the_device_or_a_time_locked_recovery(cli: Cli, deployment, w3, tmp_path: Path) -> None:
    seller = _credited_seller(cli, deployment, w3, amount=5)
    phone = _device(cli, tmp_path, seller, "tracker")
    cli.ok(["guard", "set", "--threshold", "1", "--device-key", str(phone)], seller, **PASSWORD)

    # Without the device: a recovery starts, and nothing clears before its delay.
    started = cli.ok(["guard", "clear", "--without-device"], seller)
    assert started["stage"] == "started" and started["readyAt"] >= chain_now(w3) + 7 * 86_400 - 60
    again = cli.ok(["guard", "clear", "--without-device"], seller)
    assert again["stage"] == "pending"
    assert cli.ok(["guard", "show"], seller)["recoveryReadyAt"] == started["readyAt"]
    assert "needs the account's device" in cli.fails(["escrow", "withdraw"], seller)

    # With the device: cleared at once, and the whole credit leaves.
    cleared = cli.ok(["guard", "clear", "--device-key", str(phone)], seller, **PASSWORD)
    assert cleared["stage"] == "cleared"
    shown = cli.ok(["guard", "show"], seller)
    assert shown["enabled"] is False and not any(led["guarded"] for led in shown["ledgers"])
    assert cli.ok(["escrow", "withdraw"], seller)["amount"] == str(5 * TOKEN)


def test_guard_show_reads_another_account_in_a_table(cli: Cli, deployment, w3) -> None:
    someone = cli.user(w3)
    result = cli.run(["guard", "show", "--account", someone.address])
    assert result.exit_code == 0, result.output
    assert "does not guard" in result.output
