"""What MeteredBilling writes in its ReadingsSettled batch log is what the one Python decoder reads."""

from __future__ import annotations

from iotsettle.oracle.protocol import settled
from iotsettle.oracle.protocol.device_kinds import DeviceKind

from tests.kit.cli import register_device
from tests.kit.products import chain_now, reading

TOKEN = 10**18


def test_the_contracts_batch_log_decodes_to_the_readings_it_billed(cli, deployment, w3) -> None:
    provider, consumer = cli.user(w3), cli.user(w3)
    meters = [register_device(deployment.config, provider, DeviceKind.METER) for _ in range(2)]
    ids = []
    for meter in meters:
        opened = cli.ok(
            ["agreement", "open", "--consumer", consumer.address, "--device", meter.address, "--price", "0.1"], provider
        )
        ids.append(int(opened["agreementId"]))
    cli.ok(["token", "mint", "--amount", "40"], consumer)
    for agreement_id in ids:
        cli.ok(["agreement", "accept", str(agreement_id), "--deposit", "20"], consumer)
    contract, now, chain_id = deployment.address("MeteredBilling"), chain_now(w3), w3.eth.chain_id
    first, second = (meters[0], ids[0]), (meters[1], ids[1])
    items = [(*first, 1, 30), (*second, 1, 70), (*first, 2, 20), (*first, 3, 50)]
    batch = "\n".join(
        reading(meter, chain_id, contract, agreement_id, seq, now, value).to_payload().decode()
        for meter, agreement_id, seq, value in items
    )  # the third item rolls the first meter's counter back: refused, not in the records
    tx = cli.ok(["agreement", "settle", "-"], provider, stdin=batch)["tx"]

    receipt = w3.eth.get_transaction_receipt(tx)
    logs = [e for e in receipt["logs"] if e["address"] == contract and e["topics"][0] == settled.TOPIC]
    assert len(logs) == 1, "one batch log per transaction"
    records = settled.decode_log_data(bytes(logs[0]["data"]))
    assert [(r.agreement_id, r.seq, r.amount, r.index) for r in records] == [
        (ids[0], 1, 3 * TOKEN, 0),
        (ids[1], 1, 7 * TOKEN, 1),
        (ids[0], 3, 2 * TOKEN, 2),
    ]
    billing = deployment.contract("MeteredBilling")
    for agreement_id in ids:
        billed = sum(r.amount for r in records if r.agreement_id == agreement_id)
        assert billing.functions.earningsOf(agreement_id).call() == billed
