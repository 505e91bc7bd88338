"""The CLI's failure modes: one line, non-zero exit, and a sentence a user can act on.

The refund test moves chain time forward (evm_increaseTime), so it runs on an anvil of its own: the session's
shared anvil keeps a clock close to the wall clock for everyone else.
"""

from __future__ import annotations

import pytest
from iotsettle.oracle.chain.node import free_port
from iotsettle.oracle.protocol.device_kinds import DeviceKind

from tests.kit.cli import Cli, User, register_device
from tests.kit.products import chain_now, reading, token_balance

TOKEN = 10**18


def _warp(w3, seconds: int) -> None:
    w3.provider.make_request("evm_increaseTime", [seconds])
    w3.provider.make_request("evm_mine", [])


def test_refund_only_after_the_deadline_and_the_grace(own_deployment) -> None:
    cli, w3 = Cli(own_deployment.config), own_deployment.chain.w3
    buyer, seller = cli.user(w3), cli.user(w3)
    tracker = register_device(own_deployment.config, buyer, DeviceKind.TRACKER)
    cli.ok(["token", "mint", "--amount", "30"], buyer)
    escrow_id = cli.ok(
        [
            "escrow",
            "create",
            "--seller",
            seller.address,
            "--device",
            tracker.address,
            "--amount",
            "30",
            "--destination",
            "u33dc0cr",
            "--deadline",
            "+1h",
        ],
        buyer,
    )["escrowId"]
    early = cli.fails(["escrow", "refund", str(escrow_id)], buyer)
    assert early.startswith(f"escrow {escrow_id} can be refunded from ")
    assert early.endswith("deliveries signed by the deadline may still arrive until then")
    assert token_balance(own_deployment, buyer.address) == 0

    _warp(w3, 3601)  # past the deadline, inside the settlement grace: a delivery signed in time may still arrive
    still_early = cli.fails(["escrow", "refund", str(escrow_id)], buyer)
    assert still_early.startswith(f"escrow {escrow_id} can be refunded from ")
    _warp(w3, 3600)
    not_buyer = cli.fails(["escrow", "refund", str(escrow_id)], seller)
    assert not_buyer == f"only the buyer of escrow {escrow_id} may do this, not {seller.address}"
    refunded = cli.ok(["escrow", "refund", str(escrow_id)], buyer)
    assert refunded["amount"] == str(30 * TOKEN)
    assert cli.ok(["escrow", "status", str(escrow_id)])["state"] == "refunded"
    again = cli.fails(["escrow", "refund", str(escrow_id)], buyer)
    assert again == f"escrow {escrow_id} was already refunded on block {refunded['block']}"
    cli.ok(["escrow", "withdraw"], buyer)
    assert token_balance(own_deployment, buyer.address) == 30 * TOKEN
    nothing = cli.fails(["escrow", "withdraw"], buyer)
    assert nothing == f"{buyer.address} has no TEST to withdraw from the escrow contract"


def test_a_reading_signed_before_close_at_bills_when_relayed_after_it(own_deployment) -> None:
    """A consumer cannot close before a late reading arrives: the close waits for closeAt + the grace."""
    cli, w3 = Cli(own_deployment.config), own_deployment.chain.w3
    provider, consumer = cli.user(w3), cli.user(w3)
    meter = register_device(own_deployment.config, provider, DeviceKind.METER)
    agreement_id = int(
        cli.ok(
            [
                "agreement",
                "open",
                "--consumer",
                consumer.address,
                "--device",
                meter.address,
                "--price",
                "0.01",
                "--start-value",
                "100",
            ],
            provider,
        )["agreementId"]
    )
    cli.ok(["token", "mint", "--amount", "20"], consumer)
    cli.ok(["agreement", "accept", str(agreement_id), "--deposit", "20"], consumer)
    signed = reading(
        meter, w3.eth.chain_id, own_deployment.address("MeteredBilling"), agreement_id, 1, chain_now(w3) + 1, 1000
    )  # 900 units, signed before the close request below
    _warp(w3, 1)
    requested = cli.ok(["agreement", "close", str(agreement_id)], consumer)  # notice 0: closeAt is now
    assert requested["closed"] is False
    early = cli.fails(["agreement", "close", str(agreement_id)], consumer)
    assert early.startswith(f"agreement {agreement_id} can be closed from ")

    _warp(w3, 600)  # the relayer was late
    cli.ok(["agreement", "settle", "-"], provider, stdin=signed.to_payload().decode())
    _warp(w3, 3600)
    closed = cli.ok(["agreement", "close", str(agreement_id)], consumer)
    assert closed["refund"] == str(20 * TOKEN - 9 * TOKEN), "the 900 signed units are billed, the rest refunded"
    assert token_balance(own_deployment, consumer.address) == 11 * TOKEN


def test_unreachable_rpc(cli) -> None:
    error = cli.fails(["escrow", "status", "1"], IOTSETTLE_CHAIN_RPC_URL=f"http://127.0.0.1:{free_port()}")
    assert error.startswith("cannot reach the RPC endpoint http://127.0.0.1:")


def test_an_unreachable_endpoint_is_named_without_the_api_key_in_its_path(cli) -> None:
    """A hosted endpoint carries its API key in the path: the one-line error names only scheme, host and port."""
    port = free_port()
    for command in (["escrow", "status", "1"], ["agreement", "status", "1"], ["loan", "show", "1"]):
        error = cli.fails(command, IOTSETTLE_CHAIN_RPC_URL=f"http://127.0.0.1:{port}/v3/0123456789abcdef-secret")
        assert error.startswith(f"cannot reach the RPC endpoint http://127.0.0.1:{port}/*** ("), error
        assert "secret" not in error and "0123456789abcdef" not in error


def test_wrong_chain(cli, deployment) -> None:
    error = cli.fails(["balances", "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"], IOTSETTLE_CHAIN_CHAIN_ID="1")
    assert error == f"{deployment.config.chain.rpc_url} is chain 31337, but the configuration expects chain 1"


def test_nothing_deployed_on_this_chain(cli, tmp_path) -> None:
    error = cli.fails(["escrow", "list"], IOTSETTLE_PATHS_DEPLOYMENTS_DIR=str(tmp_path))
    assert error.startswith("nothing is deployed on chain 31337 yet") and "iotsettle deploy" in error


def test_no_eth_for_gas(cli, w3) -> None:
    poor = cli.user(w3, eth=0)
    error = cli.fails(["token", "mint", "--amount", "1"], poor)
    assert "has not enough ETH" in error and poor.address in error


def test_not_enough_tokens(cli, deployment, w3) -> None:
    buyer = cli.user(w3)
    tracker = register_device(deployment.config, buyer, DeviceKind.TRACKER)
    error = cli.fails(
        [
            "escrow",
            "create",
            "--seller",
            buyer.address,
            "--device",
            tracker.address,
            "--amount",
            "5",
            "--destination",
            "u33dc0cr",
            "--deadline",
            "+1h",
        ],
        buyer,
    )
    assert error == f"{buyer.address} holds 0 TEST but this needs 5 TEST (mint some with `iotsettle token mint`)"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["balances", "0x1234"], "'0x1234' is not an address"),
        (["balances", "0x70997970C51812dc3A010C7d01b50e0d17dc79c8"], "wrong EIP-55 checksum"),
        (["token", "mint", "--amount", "-3"], "is negative"),
        (["token", "mint", "--amount", "1.2.3"], "is not an amount"),
        (["token", "mint", "--amount", "1.5wei"], "base units (wei) are whole numbers"),
        (["escrow", "status", "seven"], "is not an id"),
        (
            [
                "escrow",
                "create",
                "--seller",
                "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
                "--device",
                "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
                "--amount",
                "1",
                "--destination",
                "u33dc0cr",
                "--deadline",
                "next week",
            ],
            "is not a time",
        ),
    ],
)
def test_bad_input_is_refused_before_anything_is_sent(cli, args, expected) -> None:
    assert expected in cli.fails(args)


def test_too_many_decimals(cli, w3) -> None:
    error = cli.fails(["token", "mint", "--amount", "0.0000000000000000001"], cli.user(w3))
    assert error == "0.0000000000000000001 TEST has more than 18 decimals; give base units as <n>wei"


def test_base_units_are_exact(cli, deployment, w3) -> None:
    user: User = cli.user(w3)
    cli.ok(["token", "mint", "--amount", "1_500wei"], user)
    assert token_balance(deployment, user.address) == 1500


def test_confirm_refuses_a_payload_for_another_chain_or_contract(cli, deployment, w3) -> None:
    from iotsettle.oracle.device.keys import DeviceKey
    from iotsettle.oracle.device.signer import sign_event

    key = DeviceKey.from_private_key("0x" + "42" * 32)
    msg = {"escrowId": 1, "seq": 1, "timestamp": 1, "location": b"\0" * 32, "maxTemperature": 0}
    other_chain = sign_event(key, "delivery", 1, deployment.address("DeliveryEscrow"), msg).to_payload().decode()
    assert "was signed for chain 1, this is chain 31337" in cli.fails(["escrow", "confirm", "-"], stdin=other_chain)
    other_contract = sign_event(key, "delivery", 31337, deployment.address("MeteredBilling"), msg).to_payload().decode()
    assert "was signed for contract" in cli.fails(["escrow", "confirm", "-"], stdin=other_contract)
    assert "not UTF-8 JSON" in cli.fails(["escrow", "confirm", "-"], stdin="{oops")


def test_revert_sentences_without_a_chain(deployment) -> None:
    """The decoder alone (no chain to ask): names and arguments still make a sentence."""
    from eth_abi import encode
    from eth_hash.auto import keccak
    from iotsettle.oracle.ops.sentences import RevertDecoder

    abis = {name: deployment.contract(name).abi for name in ("DeliveryEscrow", "MeteredBilling", "DeviceRegistry")}
    decoder = RevertDecoder.from_abis(abis)

    def data(signature: str, types: list[str], values: list[object]) -> str:
        return "0x" + (keccak(signature.encode())[:4] + encode(types, values)).hex()

    released = decoder.decode(data("NotFunded(uint256,uint8)", ["uint256", "uint8"], [7, 2]), "DeliveryEscrow")
    assert (released.name, released.sentence) == ("NotFunded", "escrow 7 was already released")
    replay = decoder.decode(
        data("EventRejected(uint256,uint64,uint8)", ["uint256", "uint64", "uint8"], [5, 3, 15]), "DeliveryEscrow"
    )
    assert replay.sentence == "the delivery (seq 3) was signed at another location than escrow 5's destination"
    assert (
        decoder.decode(data("Error(string)", ["string"], ["nope"]), "DeliveryEscrow").sentence
        == "the escrow contract reverted: nope"
    )
    assert "unknown custom error 0xdeadbeef" in decoder.decode("0xdeadbeef", "MeteredBilling").sentence
    assert decoder.decode("0x", "MeteredBilling").sentence.startswith("the billing contract reverted without")


def test_escrow_for_an_unregistered_tracker(cli, w3) -> None:
    buyer = cli.user(w3)
    cli.ok(["token", "mint", "--amount", "5"], buyer)
    stranger = "0x000000000000000000000000000000000000dEaD"
    error = cli.fails(
        [
            "escrow",
            "create",
            "--seller",
            buyer.address,
            "--device",
            stranger,
            "--amount",
            "5",
            "--destination",
            "u33dc0cr",
            "--deadline",
            "+1h",
        ],
        buyer,
    )
    assert error == f"device {stranger} is not registered or not active"
