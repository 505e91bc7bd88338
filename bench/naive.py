"""The baselines: a relay written the way tutorials write one, and the strongest simple alternative to it.

- **naive**: an MQTT ``on_message`` callback decodes the payload and sends one web3.py transaction per event (nonce
  from the node, ``build_transaction`` with its gas estimate, sign, ``send_raw_transaction``, wait for the receipt)
  before it returns.
- **pipelined** (``--pipelined``): still one web3.py transaction per event, but with a local nonce counter, a fixed
  gas limit and fees read once, sent without waiting; a second thread collects the receipts. Events are sent as
  fast as the callback can sign and hand them to the node, many transactions in flight.

No batching, no intake queue, no durable store in either: the figures they give are the ceilings of those designs
on this machine, measured in the same run and on the same chain as the daemon. Both check every receipt the same
way: a reading counts as settled when its receipt succeeded and carries its record in the ``ReadingsSettled`` log,
and a second settlement of the same (agreement, seq) counts as a failure (every event must be paid exactly once).

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
from iotsettle.oracle.protocol import settled, wire
from iotsettle.oracle.protocol.errors import IotSettleError, ProtocolError
from web3 import HTTPProvider, Web3
from web3.exceptions import TransactionNotFound, Web3Exception

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
    pipelined: bool = False
    settled: dict[tuple[int, int], float] = field(default_factory=dict)  # (agreement, seq) → receipt seen
    failed: int = 0

    def __post_init__(self) -> None:
        self.w3 = Web3(HTTPProvider(self.rpc_url))
        self.billing = self.w3.eth.contract(address=self.billing_address, abi=self.billing_abi)
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        self._in_flight: dict[bytes, tuple[int, int]] = {}  # pipelined: tx hash → (agreement, seq)
        self._stopping = threading.Event()
        self._collector = threading.Thread(target=self._collect, name="receipts", daemon=True)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"naive-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self.client.on_connect = lambda c, *_: c.subscribe(wire.events_filter(self.chain_id), qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message

    def start(self) -> None:
        if self.pipelined:
            self._nonce = self.w3.eth.get_transaction_count(self.account.address, "pending")
            base = int(self.w3.eth.get_block("latest").get("baseFeePerGas", 0))
            self._fees = {"maxFeePerGas": 3 * base + 1, "maxPriorityFeePerGas": 1}
            self._collector.start()
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("the naive relay could not subscribe")

    def stop(self, drain: float = 60.0) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        if self.pipelined:
            deadline = time.monotonic() + drain
            while self._in_flight and time.monotonic() < deadline:
                time.sleep(0.05)
            self._stopping.set()
            self._collector.join(5)
            self.failed += len(self._in_flight)  # sent and never mined

    def _record(self, receipt: Any, key: tuple[int, int]) -> None:
        logs = self.billing.events.ReadingsSettled().process_receipt(receipt) if receipt["status"] == 1 else ()
        records = [r for e in logs for r in settled.decode_records(bytes(e.args["records"]))]
        paid = any((r.agreement_id, r.seq) == key for r in records)
        if paid and key not in self.settled:
            self.settled[key] = time.time()
        else:
            self.failed += 1  # reverted, rejected by the contract, or paid twice

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self.pipelined:
            self._send_pipelined(message.payload)
            return
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
        self._record(receipt, (event.target_id, event.seq))

    def _send_pipelined(self, payload: bytes) -> None:
        """Sign at the next local nonce and send; the collector thread reads the receipt."""
        try:
            event = wire.decode(payload)
            tx = self.billing.functions.settleReading(event.contract_tuple()).build_transaction(
                {
                    "from": self.account.address,
                    "nonce": self._nonce,
                    "gas": 200_000,
                    "chainId": self.chain_id,
                    **self._fees,
                }
            )
            signed = self.account.sign_transaction(tx)
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        except (ProtocolError, Web3Exception, requests.RequestException, ValueError) as exc:
            self.failed += 1
            log.warning("pipelined relay: event not sent: %s", exc)
            return
        self._nonce += 1
        with self._lock:
            self._in_flight[bytes(tx_hash)] = (event.target_id, event.seq)

    def _collect(self) -> None:
        """Receipts of the transactions in flight, oldest first, until ``stop``."""
        while not self._stopping.is_set():
            with self._lock:
                pending = list(self._in_flight.items())
            if not pending:
                time.sleep(0.02)
                continue
            for tx_hash, key in pending:
                try:
                    receipt = self.w3.eth.get_transaction_receipt(tx_hash)
                except TransactionNotFound:
                    break  # mined in nonce order: the later ones are not mined either
                except (Web3Exception, requests.RequestException) as exc:
                    log.warning("pipelined relay: receipt not read: %s", exc)
                    break
                with self._lock:
                    del self._in_flight[tx_hash]
                self._record(receipt, key)
            else:
                continue
            time.sleep(0.02)


REPO = Path(__file__).resolve().parents[1]
KEY_ENV = "NAIVE_RELAY_KEY"


class NaiveRelayProcess:
    """``NaiveRelay`` in a child process; ``stop()`` returns its counts ``{"settled": n, "failed": m}``."""

    def __init__(
        self,
        host: str,
        port: int,
        chain_id: int,
        rpc_url: str,
        key: str,
        billing_address: str,
        abi_file: Path,
        pipelined: bool = False,
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
            *(["--pipelined"] if pipelined else []),
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
    parser.add_argument("--pipelined", action="store_true", help="local nonce counter, no waiting for receipts")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    account = Account.from_key(os.environ[KEY_ENV])
    abi = json.loads(args.abi.read_text())["abi"]
    relay = NaiveRelay(args.host, args.port, args.chain_id, args.rpc_url, account, args.billing, abi, args.pipelined)
    relay.start()
    sys.stdout.write("subscribed\n")
    sys.stdout.flush()
    stop.wait()
    relay.stop()
    sys.stdout.write(json.dumps({"settled": len(relay.settled), "failed": relay.failed}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
