"""`iotsettle device sign` as a device owner uses it: the payload it prints settles on a real anvil through the
relaying commands, its sequence numbers come from the keystore's counter, and a tracker never signs twice."""

from __future__ import annotations

import json
from pathlib import Path

from iotsettle.oracle.device.keys import load_keystore
from iotsettle.oracle.ops.tx import events_in, transact
from iotsettle.oracle.protocol import eip712
from iotsettle.oracle.protocol.eip712 import Domain
from iotsettle.oracle.protocol.location import location_geohash
from iotsettle.oracle.protocol.wire import decode

from tests.kit.cli import Cli, User
from tests.kit.products import token_balance

TOKEN = 10**18
PASSWORD = {"IOTSETTLE_DEVICE_PASSWORD": "correct horse"}


def _device(cli: Cli, tmp_path: Path, owner: User, kind: str) -> Path:
    """A keystore made and registered with the CLI, owned by ``owner``."""
    made = cli.run(["device", "keygen", "--out", str(tmp_path), "--kind", kind, "--light-kdf", "--json"], **PASSWORD)
    assert made.exit_code == 0, made.output
    key_file = Path(json.loads(made.stdout)["keyFile"])
    registered = cli.run(
        ["device", "register", "--key", str(key_file)], IOTSETTLE_CHAIN_PRIVATE_KEY=owner.key_hex, **PASSWORD
    )
    assert registered.exit_code == 0, registered.output
    return key_file


def _sign(cli: Cli, *args: str) -> str:
    result = cli.run(["device", "sign", *args], **PASSWORD)
    assert result.exit_code == 0, f"{args}: {result.output}"
    assert len(result.stdout.splitlines()) == 1, "one JSON line"
    return result.stdout


def test_signed_readings_settle_through_agreement_settle(cli, deployment, w3, tmp_path) -> None:
    provider, consumer = cli.user(w3), cli.user(w3)
    meter = _device(cli, tmp_path, provider, "meter")
    opened = cli.ok(
        [
            "agreement",
            "open",
            "--consumer",
            consumer.address,
            "--device",
            meter.stem,
            "--price",
            "0.5",
            "--start-value",
            "1000",
        ],
        provider,
    )
    agreement = opened["agreementIdHex"]
    cli.ok(["token", "mint", "--to", consumer.address, "--amount", "100"], consumer)
    cli.ok(["agreement", "accept", agreement, "--deposit", "10"], consumer)

    lines = [
        _sign(cli, "reading", "--key", str(meter), "--agreement", agreement, "--value", str(value))
        for value in (1004, 1010)
    ]
    assert [decode(line.encode()).seq for line in lines] == [1, 2], "the keystore's counter, one number per run"

    out = cli.ok(["agreement", "settle", "-"], provider, stdin="".join(lines))
    assert [(r["seq"], r["settled"], r["amount"]) for r in out["results"]] == [
        (1, True, str(2 * TOKEN)),
        (2, True, str(3 * TOKEN)),
    ]
    status = cli.ok(["agreement", "status", agreement])
    assert (status["last_value"], status["earnings"]) == (1010, str(5 * TOKEN))


def test_a_reading_of_an_optimistic_agreement_is_signed_for_optimistic_billing(cli, deployment, w3, tmp_path) -> None:
    """No --contract: the agreement id says which contract minted it, and so which domain its readings are for."""
    provider, consumer = cli.user(w3), cli.user(w3)
    meter = _device(cli, tmp_path, provider, "meter")
    ctx = deployment.ops(provider.account)
    opt = ctx.contract("OptimisticBilling")
    tariff = cli.ok(
        ["agreement", "open", "--consumer", consumer.address, "--device", meter.stem, "--price", "0.5"], provider
    )["tariffId"]
    offer = opt.functions.offer(consumer.address, meter.stem, int(tariff), deployment.address("TestToken"), 0, 60)
    receipt = transact(ctx, offer, "OptimisticBilling").receipt
    agreement = int(events_in(ctx, "OptimisticBilling", receipt, "AgreementOffered")[0]["agreementId"])

    line = _sign(cli, "reading", "--key", str(meter), "--agreement", hex(agreement), "--value", "1004")
    event = decode(line.encode())
    assert event.contract == opt.address
    assert event.digest == bytes(opt.functions.hashReading(agreement, event.seq, event.msg["timestamp"], 1004).call())
    assert event.signer() == load_keystore(meter, PASSWORD["IOTSETTLE_DEVICE_PASSWORD"]).address


def test_a_signed_delivery_releases_the_escrow_and_a_second_is_refused(cli, deployment, w3, tmp_path) -> None:
    buyer, seller = cli.user(w3), cli.user(w3)
    tracker = _device(cli, tmp_path, buyer, "tracker")
    cli.ok(["token", "mint", "--to", buyer.address, "--amount", "10"], buyer)
    escrow_id = cli.ok(
        [
            "escrow",
            "create",
            "--seller",
            seller.address,
            "--device",
            tracker.stem,
            "--amount",
            "10",
            "--destination",
            "u33dbfc",
            "--deadline",
            "+1d",
            "--temperature-limit",
            "8",
            "--penalty-bps",
            "1000",
        ],
        buyer,
    )["escrowId"]

    line = _sign(
        cli,
        "delivery",
        "--key",
        str(tracker),
        "--escrow",
        str(escrow_id),
        "--location",
        "u33dbfc",
        "--max-temperature",
        "9.1",
    )
    event = decode(line.encode())
    assert (event.msg["maxTemperature"], location_geohash(event.msg["location"])) == (910, "u33dbfc")

    out = cli.ok(["escrow", "confirm", "-"], seller, stdin=line)
    assert (out["results"][0]["toSeller"], out["results"][0]["toBuyer"]) == (str(9 * TOKEN), str(1 * TOKEN))
    cli.ok(["escrow", "withdraw"], seller)
    assert token_balance(deployment, seller.address) == 9 * TOKEN

    again = cli.fails(
        [
            "device",
            "sign",
            "delivery",
            "--key",
            str(tracker),
            "--escrow",
            str(escrow_id),
            "--location",
            "u33dbfc",
            "--max-temperature",
            "5",
        ],
        **PASSWORD,
    )
    assert f"escrow {escrow_id}" in again


def test_offline_signing_of_the_products_kinds_recovers_to_the_device(cli, tmp_path) -> None:
    """With --chain-id and --contract nothing is read from a node or a manifest: a telematics report and a weather
    observation carry the given fields and the device's signature over that domain."""
    made = cli.run(["device", "keygen", "--out", str(tmp_path), "--light-kdf", "--json"], **PASSWORD)
    key_file = json.loads(made.stdout)["keyFile"]
    address = json.loads(made.stdout)["address"]
    contract = "0x" + "ab" * 20
    domain = ["--chain-id", "1337", "--contract", contract, "--rpc-url", "http://127.0.0.1:9"]

    report = decode(
        _sign(
            cli,
            "telematics",
            "--key",
            key_file,
            "--policy",
            "0x2a",
            "--odometer",
            "1100000",
            "--harsh-braking",
            "2",
            "--speeding",
            "1",
            "--seq",
            "7",
            "--timestamp",
            "1700000000",
            *domain,
        ).encode()
    )
    assert (report.type, report.seq, report.chain_id, report.device) == ("telematics", 7, 1337, address)
    assert (report.msg["policyId"], report.msg["odometer"], report.msg["harshBraking"], report.msg["speeding"]) == (
        42,
        1100000,
        2,
        1,
    )
    assert report.msg["timestamp"] == 1700000000

    observation = decode(
        _sign(cli, "weather", "--key", key_file, "--rainfall", "110.25", "--max-temperature", "-3.5", *domain).encode()
    )
    assert (observation.msg["station"], observation.msg["rainfall"], observation.msg["maxTemperature"]) == (
        address,
        11025,
        -350,
    )
    assert observation.seq == 1, "an explicit --seq left the counter alone"
    key = load_keystore(key_file, PASSWORD["IOTSETTLE_DEVICE_PASSWORD"])
    digest = eip712.digest("WeatherObservation", observation.msg, Domain(1337, observation.contract))
    assert eip712.recover(digest, observation.sig) == key.address


def test_bad_figures_are_one_line_errors(cli, tmp_path) -> None:
    made = cli.run(["device", "keygen", "--out", str(tmp_path), "--light-kdf", "--json"], **PASSWORD)
    key_file = json.loads(made.stdout)["keyFile"]
    domain = ["--chain-id", "1337", "--contract", "0x" + "ab" * 20]
    error = cli.run(
        ["device", "sign", "weather", "--key", key_file, "--rainfall", "1.001", "--max-temperature", "20", *domain],
        **PASSWORD,
    )
    assert error.exit_code == 2 and "'1.001' has more than two decimals" in error.output
    wrong = cli.fails(
        ["device", "sign", "reading", "--key", key_file, "--agreement", "1", "--value", "1", *domain],
        IOTSETTLE_DEVICE_PASSWORD="wrong",
    )
    assert wrong.startswith("wrong password")
