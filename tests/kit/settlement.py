"""Agreements and escrows opened on the deployed contracts, devices registered on chain, and signed events made
into store records for the settler."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from iotsettle.oracle.chain.connection import ANVIL_DEV_KEYS
from iotsettle.oracle.chain.send import send
from iotsettle.oracle.daemon.store import EventRecord
from iotsettle.oracle.device.keys import DeviceKey
from iotsettle.oracle.protocol import batch_tree, device_kinds, eip712
from iotsettle.oracle.protocol.device_kinds import DeviceKind
from iotsettle.oracle.testing.accounts import ETHER, fund
from iotsettle.oracle.testing.devices import register_device
from web3 import Web3

from tests.kit.devices import Device

PRICE = 10  # wei per unit
START = 1_000  # register value when the agreement starts
DEPOSIT = 10**18

PROVIDER = Account.from_key(ANVIL_DEV_KEYS[1])
CONSUMER = Account.from_key(ANVIL_DEV_KEYS[2])
FUNDER = Account.from_key(ANVIL_DEV_KEYS[0])


@dataclass
class Meter:
    device: Device
    agreement: int


@contextmanager
def automine_off(scenario: Scenario) -> Iterator[None]:
    """Blocks only when the test mines them (``anvil_mine``): transactions wait in the pool meanwhile."""
    scenario.rpc("evm_setAutomine", False)
    try:
        yield
    finally:
        scenario.rpc("evm_setAutomine", True)


class Scenario:
    """Devices registered on chain, agreements and escrows opened, signed events stored for settlement."""

    def __init__(self, deployment: Any) -> None:
        self.d = deployment
        self.chain = deployment.chain
        self.w3: Web3 = deployment.chain.w3
        self.chain_id = deployment.chain.chain_id
        self.registry = deployment.contract("DeviceRegistry")
        self.billing = deployment.contract("MeteredBilling")
        self.escrow = deployment.contract("DeliveryEscrow")
        self.tariff = self._tariff()

    def tx(self, account: LocalAccount, call: Any, value: int = 0) -> dict[str, Any]:
        return send(self.chain, account, call.build_transaction({"from": account.address, "value": value}))

    def _tariff(self) -> int:
        receipt = self.tx(PROVIDER, self.billing.functions.createTariff([(0, PRICE)]))
        return int(self.billing.events.TariffCreated().process_receipt(receipt)[0]["args"]["tariffId"])

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def register(self, kind: int) -> Device:
        contracts = {"reading": self.billing.address, "delivery": self.escrow.address}
        device = Device(kind=kind, chain_id=self.chain_id, contracts=contracts)
        register_device(self.d, PROVIDER, DeviceKind(kind), DeviceKey.from_private_key(device.key, kind))
        return device

    def meter(self) -> Meter:
        device = self.register(device_kinds.DeviceKind.METER)
        receipt = self.tx(
            PROVIDER,
            self.billing.functions.offer(CONSUMER.address, device.address, self.tariff, "0x" + "00" * 20, START, 0),
        )
        agreement = int(self.billing.events.AgreementOffered().process_receipt(receipt)[0]["args"]["agreementId"])
        self.tx(CONSUMER, self.billing.functions.accept(agreement, DEPOSIT, START), value=DEPOSIT)
        return Meter(device, agreement)

    def optimistic_meter(self) -> Meter:
        """A meter with an agreement on OptimisticBilling: the same tariff, start and deposit as ``meter``."""
        opt = self.d.contract("OptimisticBilling")
        device = self.register(device_kinds.DeviceKind.METER)
        receipt = self.tx(
            PROVIDER, opt.functions.offer(CONSUMER.address, device.address, self.tariff, "0x" + "00" * 20, START, 0)
        )
        agreement = int(opt.events.AgreementOffered().process_receipt(receipt)[0]["args"]["agreementId"])
        self.tx(CONSUMER, opt.functions.accept(agreement, DEPOSIT, START), value=DEPOSIT)
        return Meter(device, agreement)

    def tracker_escrow(self, destination: bytes, amount: int = 5 * 10**15) -> tuple[Device, int, str]:
        device = self.register(device_kinds.DeviceKind.TRACKER)
        seller = Account.create()
        receipt = self.tx(
            CONSUMER,
            self.escrow.functions.createEscrow(
                seller.address,
                device.address,
                "0x" + "00" * 20,
                amount,
                destination,
                self.now() + 3600,
                0,
                0,
            ),
            value=amount,
        )
        escrow_id = int(self.escrow.events.EscrowCreated().process_receipt(receipt)[0]["args"]["escrowId"])
        return device, escrow_id, seller.address

    def reading(
        self, meter: Meter, seq: int, value: int, *, key: bytes | None = None, agreement: int | None = None
    ) -> EventRecord:
        target = meter.agreement if agreement is None else agreement
        # signed for the contract that minted the agreement (OptimisticBilling's ids carry its flag)
        contract = self.d.address("OptimisticBilling") if batch_tree.is_optimistic(target) else self.billing.address
        ts = self.now()
        msg = {"agreementId": target, "seq": seq, "timestamp": ts, "value": value}
        digest = eip712.digest("Reading", msg, eip712.Domain(self.chain_id, contract))
        sig = eip712.sign_digest(key or meter.device.key, digest)
        return EventRecord(
            "reading",
            meter.device.address,
            meter.device.address,
            self.chain_id,
            contract,
            target,
            seq,
            ts,
            value,
            None,
            None,
            digest,
            sig,
            time.time(),
        )

    def delivery(self, device: Device, escrow_id: int, seq: int, location: bytes) -> EventRecord:
        ts = self.now()
        msg = {"escrowId": escrow_id, "seq": seq, "timestamp": ts, "location": location, "maxTemperature": 4}
        digest = eip712.digest("Delivery", msg, eip712.Domain(self.chain_id, self.escrow.address))
        sig = eip712.sign_digest(device.key, digest)
        return EventRecord(
            "delivery",
            device.address,
            device.address,
            self.chain_id,
            self.escrow.address,
            escrow_id,
            seq,
            ts,
            None,
            location,
            4,
            digest,
            sig,
            time.time(),
        )

    def earnings(self, meter: Meter) -> int:
        return int(self.billing.functions.earningsOf(meter.agreement).call())

    def fund(self, address: str) -> None:
        fund(self.chain, address, 10 * ETHER)

    def rpc(self, method: str, *params: Any) -> Any:
        response = self.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
        if "error" in response:
            raise RuntimeError(f"{method}: {response['error']}")
        return response.get("result")

    def mine(self, blocks: int = 1) -> None:
        self.rpc("anvil_mine", hex(blocks))
