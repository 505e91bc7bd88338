"""`iotsettle escrow` end to end on a real anvil: the money moves as a buyer and a seller would see it."""

from __future__ import annotations

import json

from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.location import location_bytes32

from tests.kit.cli import Cli, register_device
from tests.kit.products import chain_now, delivery, token_balance

TOKEN = 10**18
DEST = "u33dc0cr"


def _escrow(cli: Cli, deployment, w3, amount: str = "25", deadline: str = "+2h"):
    buyer, seller = cli.user(w3), cli.user(w3)
    tracker = register_device(deployment.config, buyer, DeviceKind.TRACKER)
    cli.ok(["token", "mint", "--to", buyer.address, "--amount", "100"], buyer)
    created = cli.ok(
        [
            "escrow",
            "create",
            "--seller",
            seller.address,
            "--device",
            tracker.address,
            "--amount",
            amount,
            "--destination",
            DEST,
            "--deadline",
            deadline,
        ],
        buyer,
    )
    return buyer, seller, tracker, created["escrowId"]


def test_create_relay_withdraw_pays_the_seller(cli, deployment, w3, tmp_path) -> None:
    buyer, seller, tracker, escrow_id = _escrow(cli, deployment, w3)
    assert token_balance(deployment, buyer.address) == 75 * TOKEN
    status = cli.ok(["escrow", "status", str(escrow_id)])
    assert status["state"] == "funded" and status["amount"] == str(25 * TOKEN) and status["seller"] == seller.address

    signed = delivery(
        tracker,
        w3.eth.chain_id,
        deployment.address("DeliveryEscrow"),
        escrow_id,
        1,
        chain_now(w3),
        location_bytes32(DEST),
    )
    payload = tmp_path / "delivery.json"
    payload.write_bytes(signed.to_payload())
    relayer = cli.user(w3)  # anyone may relay: the contract checks the tracker's signature
    confirmed = cli.ok(["escrow", "confirm", str(payload)], relayer)
    assert confirmed["results"] == [
        {
            "escrowId": escrow_id,
            "seq": 1,
            "confirmed": True,
            "reason": None,
            "toSeller": str(25 * TOKEN),
            "toBuyer": "0",
        }
    ]
    assert cli.ok(["escrow", "status", str(escrow_id)])["state"] == "released"

    credit = cli.ok(["balances", seller.address])[seller.address]
    assert credit["escrowCreditTEST"] == str(25 * TOKEN) and credit["TEST"] == "0"
    paid = cli.ok(["escrow", "withdraw"], seller)
    assert paid["amount"] == str(25 * TOKEN)
    assert token_balance(deployment, seller.address) == 25 * TOKEN

    # the same payload again, from stdin this time: a sentence, not a selector
    error = cli.fails(["escrow", "confirm", "-"], relayer, stdin=signed.to_payload().decode())
    block = confirmed["block"]
    assert error == f"escrow {escrow_id} was already released on block {block}"
    assert token_balance(deployment, seller.address) == 25 * TOKEN


def test_batch_confirm_reports_rejected_items(cli, deployment, w3) -> None:
    _buyer, seller, tracker, escrow_id = _escrow(cli, deployment, w3)
    contract = deployment.address("DeliveryEscrow")
    now = chain_now(w3)
    good = delivery(tracker, w3.eth.chain_id, contract, escrow_id, 1, now, location_bytes32(DEST))
    elsewhere = delivery(tracker, w3.eth.chain_id, contract, escrow_id, 2, now, location_bytes32("u33dc0cs"))
    lines = "\n".join(p.to_payload().decode() for p in (elsewhere, good))
    out = cli.ok(["escrow", "confirm", "-"], seller, stdin=lines)
    by_seq = {r["seq"]: r for r in out["results"]}
    assert by_seq[2]["confirmed"] is False and by_seq[2]["reason"] == "WrongLocation"
    assert by_seq[1]["confirmed"] is True


def test_cold_chain_penalty_returns_a_share_to_the_buyer(cli, deployment, w3) -> None:
    buyer, seller = cli.user(w3), cli.user(w3)
    tracker = register_device(deployment.config, buyer, DeviceKind.TRACKER)
    cli.ok(["token", "mint", "--to", buyer.address, "--amount", "10"], buyer)
    escrow_id = cli.ok(
        [
            "escrow",
            "create",
            "--seller",
            seller.address,
            "--device",
            tracker.address,
            "--amount",
            "10",
            "--destination",
            DEST,
            "--deadline",
            "+1d",
            "--temperature-limit",
            "8",
            "--penalty-bps",
            "2500",
        ],
        buyer,
    )["escrowId"]
    warm = delivery(
        tracker,
        w3.eth.chain_id,
        deployment.address("DeliveryEscrow"),
        escrow_id,
        1,
        chain_now(w3),
        location_bytes32(DEST),
        max_temperature=1150,
    )  # 11.5 °C > 8 °C
    out = cli.ok(["escrow", "confirm", "-"], seller, stdin=warm.to_payload().decode())
    assert out["results"][0]["toSeller"] == str(75 * TOKEN // 10) and out["results"][0]["toBuyer"] == str(
        25 * TOKEN // 10
    )
    cli.ok(["escrow", "withdraw"], buyer)
    assert token_balance(deployment, buyer.address) == 25 * TOKEN // 10


def test_cancel_by_seller_credits_the_buyer(cli, deployment, w3) -> None:
    buyer, seller, _tracker, escrow_id = _escrow(cli, deployment, w3, amount="40")
    error = cli.fails(["escrow", "cancel", str(escrow_id)], buyer)
    assert error == f"only the seller of escrow {escrow_id} may do this, not {buyer.address}"
    cli.ok(["escrow", "cancel", str(escrow_id)], seller)
    assert cli.ok(["escrow", "status", str(escrow_id)])["state"] == "cancelled"
    cli.ok(["escrow", "withdraw"], buyer)
    assert token_balance(deployment, buyer.address) == 100 * TOKEN


def test_list_filters_by_party_and_state(cli, deployment, w3) -> None:
    _buyer, seller, _tracker, escrow_id = _escrow(cli, deployment, w3)
    listed = cli.ok(["escrow", "list", "--party", seller.address])
    assert [e["escrow_id"] for e in listed] == [escrow_id]
    assert cli.ok(["escrow", "list", "--party", seller.address, "--state", "released"]) == []


def test_eth_escrow_and_human_output(cli, deployment, w3) -> None:
    buyer, seller = cli.user(w3, eth=5), cli.user(w3)
    tracker = register_device(deployment.config, buyer, DeviceKind.TRACKER)
    result = cli.run(
        [
            "escrow",
            "create",
            "--seller",
            seller.address,
            "--device",
            tracker.address,
            "--amount",
            "1.5",
            "--token",
            "ETH",
            "--destination",
            DEST,
            "--deadline",
            "+1h",
        ],
        buyer,
    )
    assert result.exit_code == 0, result.output
    assert "funded with 1.5 ETH" in result.stdout
    assert w3.eth.get_balance(deployment.address("DeliveryEscrow")) >= 15 * 10**17
    too_much = cli.fails(
        [
            "escrow",
            "create",
            "--seller",
            seller.address,
            "--device",
            tracker.address,
            "--amount",
            "50",
            "--token",
            "ETH",
            "--destination",
            DEST,
            "--deadline",
            "+1h",
        ],
        buyer,
    )
    assert "has not enough ETH" in too_much or "but this needs 50 ETH" in too_much
    assert (
        json.loads(cli.run(["escrow", "list", "--party", seller.address, "--json"]).stdout)[0]["token"]
        == "0x0000000000000000000000000000000000000000"
    )
