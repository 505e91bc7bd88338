"""The baseline: a relay written the way tutorials write one.

An MQTT ``on_message`` callback decodes the payload and sends one web3.py transaction per event (nonce from the
node, ``build_transaction`` with its gas estimate, sign, ``send_raw_transaction``, wait for the receipt) before it
returns. No batching, no intake queue, no durable store: the figure it gives is the ceiling of that design on this
machine, measured in the same run and on the same chain as the daemon.

Like the daemon, it runs in a process of its own (``NaiveRelayProcess`` → ``python -m bench.naive``), so
the benchmark's publisher and chain watcher do not compete with it for one interpreter. The relayer key comes in
the environment (``NAIVE_RELAY_KEY``), never on the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from iotsettle.oracle.protocol import wire
from iotsettle.oracle.protocol.errors import IotSettleError, ProtocolError
from web3 import HTTPProvider, Web3
from web3.exceptions import Web3Exception

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
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"naive-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
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

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            event = wire.decode(message.payload)
            call = self.billing.functions.settleReading(event.contract_tuple())
            tx = call.build_transaction(
                {
                    "from": self.account.address,
                    "nonce": self.w3.eth.get_transaction_count(self.account.address),
                }
            )
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


REPO = Path(__file__).resolve().parents[1]
KEY_ENV = "NAIVE_RELAY_KEY"


class NaiveRelayProcess:
    """``NaiveRelay`` in a child process; ``stop()`` returns its counts ``{"settled": n, "failed": m}``."""

    def __init__(
        self, host: str, port: int, chain_id: int, rpc_url: str, key: str, billing_address: str, abi_file: Path
    ) -> None:
        self.command = [
            sys.executable,
            "-m",
            "bench.naive",
            "--host",
            host,
            "--port",
            str(port),
            "--chain-id",
            str(chain_id),
            "--rpc-url",
            rpc_url,
            "--billing",
            billing_address,
            "--abi",
            str(abi_file),
        ]
        self.env = {**os.environ, KEY_ENV: key}
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen(
            self.command, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not ready or "subscribed" not in ready[0]:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise IotSettleError(f"the naive relay did not start: {err[-1500:]}")

    def stop(self, timeout: float = 30.0) -> dict[str, int]:
        if self.proc is None:
            return {}
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=10)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if not lines:
            raise IotSettleError(f"the naive relay exited without its counts: {err[-1500:]}")
        counts: dict[str, int] = json.loads(lines[-1])
        return counts


def main() -> int:
    parser = argparse.ArgumentParser(description="A naive one-transaction-per-event relay (benchmark baseline).")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chain-id", type=int, required=True)
    parser.add_argument("--rpc-url", required=True)
    parser.add_argument("--billing", required=True)
    parser.add_argument("--abi", type=Path, required=True, help="the MeteredBilling artifact (JSON with an abi)")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    account = Account.from_key(os.environ[KEY_ENV])
    abi = json.loads(args.abi.read_text())["abi"]
    relay = NaiveRelay(args.host, args.port, args.chain_id, args.rpc_url, account, args.billing, abi)
    relay.start()
    sys.stdout.write("subscribed\n")
    sys.stdout.flush()
    stop.wait()
    relay.stop()
    sys.stdout.write(json.dumps({"settled": len(relay.settled), "failed": relay.failed}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
