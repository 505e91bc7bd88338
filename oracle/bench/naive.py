"""The baseline: a relay written the way tutorials write one.

An MQTT ``on_message`` callback decodes the payload and sends one web3.py transaction per event (nonce from the
node, ``build_transaction`` with its gas estimate, sign, ``send_raw_transaction``, wait for the receipt) before it
returns. No batching, no intake queue, no durable store: the figure it gives is the ceiling of that design on this
machine, measured in the same run and on the same chain as the daemon.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import requests
from eth_account.signers.local import LocalAccount
from web3 import HTTPProvider, Web3
from web3.exceptions import Web3Exception

from oracle import wire
from oracle.errors import ProtocolError
from oracle.ops.billing import reading_tuple

log = logging.getLogger(__name__)


@dataclass
class NaiveRelay:
    """Subscribes to every device's events on one chain and settles each reading in its own transaction."""

    host: str
    port: int
    chain_id: int
    rpc_url: str
    account: LocalAccount
    billing_address: str
    billing_abi: list[dict[str, Any]]
    settled: dict[tuple[int, int], float] = field(default_factory=dict)  # (agreement, seq) → receipt seen
    failed: int = 0

    def __post_init__(self) -> None:
        self.w3 = Web3(HTTPProvider(self.rpc_url))
        self.billing = self.w3.eth.contract(address=self.billing_address, abi=self.billing_abi)
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"naive-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)  # fmt: skip
        self.client.on_connect = lambda c, *_: c.subscribe(wire.events_filter(self.chain_id), qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message

    def start(self) -> None:
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("the naive relay could not subscribe")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:  # noqa: ANN401
        try:
            event = wire.decode(message.payload)
            call = self.billing.functions.settleReading(reading_tuple(event))
            tx = call.build_transaction({
                "from": self.account.address,
                "nonce": self.w3.eth.get_transaction_count(self.account.address),
            })  # fmt: skip
            signed = self.account.sign_transaction(tx)
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
        except (ProtocolError, Web3Exception, requests.RequestException, ValueError) as exc:
            self.failed += 1
            log.warning("naive relay: event not settled: %s", exc)
            return
        if receipt["status"] == 1 and self.billing.events.ReadingSettled().process_receipt(receipt):
            self.settled[(event.target_id, event.seq)] = time.time()
        else:
            self.failed += 1
