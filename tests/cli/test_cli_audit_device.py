"""`iotsettle audit` matches what happened on chain; `iotsettle device list/show/rotate/revoke` for owners."""

from __future__ import annotations

from iotsettle.oracle.device.keys import DeviceKey
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.protocol.location import location_bytes32

from tests.kit.cli import register_device
from tests.kit.products import chain_now, delivery, reading

TOKEN = 10**18


def test_audit_agreement_and_device_match_what_happened(cli, deployment, w3) -> None:
    provider, consumer = cli.user(w3), cli.user(w3)
    meter = register_device(deployment.config, provider, DeviceKind.METER)
    agreement_id = int(
        cli.ok(
            ["agreement", "open", "--consumer", consumer.address, "--device", meter.address, "--price", "0.1"], provider
        )["agreementId"]
    )
    cli.ok(["token", "mint", "--amount", "20"], consumer)
    cli.ok(["agreement", "accept", str(agreement_id), "--deposit", "20"], consumer)
    contract, now = deployment.address("MeteredBilling"), chain_now(w3)
    batch = "\n".join(
        reading(meter, w3.eth.chain_id, contract, agreement_id, seq, now, value).to_payload().decode()
        for seq, value in [(1, 30), (2, 25), (3, 50)]
    )  # seq 2 rolls the counter back
    settled = cli.ok(["agreement", "settle", "-"], provider, stdin=batch)
    withdrawn = cli.ok(["agreement", "withdraw", str(agreement_id)], provider)

    report = cli.ok(["audit", "agreement", str(agreement_id)])
    events = [(e["event"], e["amount"]) for e in report["entries"]]
    assert events == [
        ("AgreementOffered", None),
        ("AgreementAccepted", str(20 * TOKEN)),
        # refusals are logged per item as they happen, the settled readings in one batch log at the end
        ("ReadingRejected", None),
        ("ReadingsSettled", str(3 * TOKEN)),
        ("ReadingsSettled", str(2 * TOKEN)),
        ("EarningsWithdrawn", str(5 * TOKEN)),
    ]
    assert {e["tx"] for e in report["entries"] if e["event"].startswith("Reading")} == {settled["tx"]}
    assert report["entries"][-1]["tx"] == withdrawn["tx"]
    assert "CounterRollback" in report["entries"][2]["detail"]
    assert [e["detail"] for e in report["entries"][3:5]] == ["reading seq 1 billed", "reading seq 3 billed"]
    assert report["totals"] == {
        "token": deployment.address("TestToken"),
        "deposited": str(20 * TOKEN),
        "billed": str(5 * TOKEN),
        "readingsSettled": "2",
        "readingsRejected": "1",
        "withdrawn": str(5 * TOKEN),
        "refunded": "0",
    }

    device = cli.ok(["audit", "device", meter.address])
    assert device["entries"][0]["event"] == "DeviceRegistered"
    assert device["totals"]["billed"] == str(5 * TOKEN) and device["totals"]["readingsSettled"] == "2"
    human = cli.run(["audit", "agreement", hex(agreement_id)], COLUMNS="200")
    assert human.exit_code == 0 and "ReadingRejected" in human.stdout and "2 TEST" in human.stdout


def test_audit_escrow(cli, deployment, w3) -> None:
    buyer, seller = cli.user(w3), cli.user(w3)
    tracker = register_device(deployment.config, buyer, DeviceKind.TRACKER)
    cli.ok(["token", "mint", "--amount", "8"], buyer)
    created = cli.ok(
        [
            "escrow",
            "create",
            "--seller",
            seller.address,
            "--device",
            tracker.address,
            "--amount",
            "8",
            "--destination",
            "9q8yyk8y",
            "--deadline",
            "+1h",
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
        location_bytes32("9q8yyk8y"),
    )
    confirmed = cli.ok(["escrow", "confirm", "-"], seller, stdin=signed.to_payload().decode())
    report = cli.ok(["audit", "escrow", str(created["escrowId"])])
    assert [(e["event"], e["tx"], e["amount"]) for e in report["entries"]] == [
        ("EscrowCreated", created["tx"], str(8 * TOKEN)),
        ("DeliveryConfirmed", confirmed["tx"], str(8 * TOKEN)),
    ]
    assert report["totals"]["toSeller"] == str(8 * TOKEN)
    assert "does not exist" in cli.fails(["audit", "escrow", "999999"])


def test_device_rotate_and_revoke(cli, deployment, w3, monkeypatch) -> None:
    owner, stranger = cli.user(w3), cli.user(w3)
    meter = register_device(deployment.config, owner, DeviceKind.METER)
    listed = cli.ok(["device", "list", "--owner", owner.address])
    assert [(d["device"], d["kind"], d["status"]) for d in listed] == [(meter.address, "meter", "active")]

    new_key = DeviceKey.from_private_key("0x" + "5a" * 31 + "01")
    env = {"NEW_METER_KEY": "0x" + new_key.private_key.hex()}
    error = cli.fails(["device", "rotate", meter.address, "--new-key-env", "NEW_METER_KEY"], stranger, **env)
    assert error == f"only the owner of device {meter.address} may do this, not {stranger.address}"
    rotated = cli.ok(["device", "rotate", meter.address, "--new-key-env", "NEW_METER_KEY"], owner, **env)
    assert (rotated["oldKey"], rotated["newKey"]) == (meter.address, new_key.address)
    shown = cli.ok(["device", "show", meter.address])
    assert (shown["key"], shown["rotations"]) == (new_key.address, 1)

    # the old key no longer settles anything dated after the rotation (dated before, it would for the grace)
    provider, consumer = owner, cli.user(w3)
    agreement_id = int(
        cli.ok(
            ["agreement", "open", "--consumer", consumer.address, "--device", meter.address, "--price", "1"], provider
        )["agreementId"]
    )
    cli.ok(["token", "mint", "--amount", "5"], consumer)
    cli.ok(["agreement", "accept", str(agreement_id), "--deposit", "5"], consumer)
    old = reading(meter, w3.eth.chain_id, deployment.address("MeteredBilling"), agreement_id, 1, chain_now(w3) + 1, 2)
    error = cli.fails(["agreement", "settle", "-"], provider, stdin=old.to_payload().decode())
    assert error == (
        f"reading event seq 1 for agreement {agreement_id} was signed by a key its device had rotated out, "
        "or relayed more than the settlement grace after the rotation"
    )

    revoked = cli.run(["device", "revoke", meter.address, "--yes", "--json"], owner)
    assert revoked.exit_code == 0, revoked.output
    assert cli.ok(["device", "show", meter.address])["status"] == "revoked"
    again = cli.fails(["device", "revoke", meter.address, "--yes"], owner)
    assert again == f"device {meter.address} is revoked"
    assert "is not registered" in cli.fails(["device", "show", stranger.address])
