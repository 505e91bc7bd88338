"""Polling for a condition that another thread or process makes true, and for a signed event to be paid on chain."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from eth_abi import decode as abi_decode
from iotsettle.oracle.chain.logs import id_topic, scan, topic0
from iotsettle.oracle.chain.revert import reason_label
from iotsettle.oracle.protocol import settled as settled_log
from iotsettle.oracle.protocol.errors import IotSettleError
from iotsettle.oracle.protocol.kinds import KINDS
from iotsettle.oracle.protocol.wire import SignedEvent
from iotsettle.oracle.testing.stack import Deployment

T = TypeVar("T")


class WaitTimedOut(IotSettleError, TimeoutError):
    """A condition did not come true in time."""


class EventRejected(IotSettleError):
    """The contract answered a relayed event with its rejected event instead of paying it."""


def wait_for(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """``condition()``'s first truthy value, polled every 20 ms; WaitTimedOut after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimedOut(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


@dataclass(frozen=True)
class Payment:
    """The contract's settled event for a relayed device event: its name, arguments and transaction."""

    event: str
    args: dict[str, Any]
    tx_hash: str
    block: int


def _outcome(deployment: Deployment, event: SignedEvent, start: int) -> Payment | None:
    kind = KINDS[event.type]
    contract = deployment.contract(kind.contract)
    entries = cast(list[dict[str, Any]], contract.abi)
    abis = {str(item["name"]): item for item in entries if item.get("type") == "event"}
    settled, rejected = abis[kind.settled_event], abis[kind.rejected_event]
    batch = kind.settled_event == settled_log.EVENT
    # a batch log has no indexed target: it is read whole and its records filtered (protocol.settled)
    topics = [[topic0(settled), topic0(rejected)], None if batch else id_topic(event.target_id)]
    for entry in scan(deployment.rpc, contract.address, start, deployment.rpc.block_number(), topics):
        is_settled = entry["topics"][0].lower() == topic0(settled).lower()
        tx, block = str(entry["transactionHash"]), int(entry["blockNumber"], 16)
        if is_settled and batch:
            for record in settled_log.decode_log_data(bytes.fromhex(entry["data"][2:])):
                if record.agreement_id == event.target_id and _pays(kind.cumulative, record.seq, event.seq):
                    return Payment(kind.settled_event, record.args(), tx, block)
            continue
        if int(entry["topics"][1], 16) != event.target_id:
            continue
        abi = settled if is_settled else rejected
        data_inputs = [item for item in abi["inputs"] if not item["indexed"]]
        values = abi_decode([item["type"] for item in data_inputs], bytes.fromhex(entry["data"][2:]))
        args = dict(zip((item["name"] for item in data_inputs), values, strict=True))
        seq = int(args["seq"])
        if is_settled and _pays(kind.cumulative, seq, event.seq):
            return Payment(kind.settled_event, args, tx, block)
        if not is_settled and seq == event.seq:
            raise EventRejected(
                f"{kind.contract} rejected {event.type} seq {event.seq} of {event.device}: "
                f"{reason_label(int(args['reason']))}"
            )
    return None


def _pays(cumulative: bool, settled_seq: int, seq: int) -> bool:
    """A cumulative kind's newer event settles everything the older ones carried (the oracle may skip them)."""
    return settled_seq == seq or (cumulative and settled_seq > seq)


def wait_until_paid(deployment: Deployment, event: SignedEvent, timeout: float = 30.0) -> Payment:
    """Wait until the contract settles ``event`` (a reading, delivery, telematics report or weather observation
    signed by a device): returns the settled log; EventRejected if the contract refused it, WaitTimedOut if
    nothing settled it within ``timeout`` seconds."""
    start = deployment.deployed_block(KINDS[event.type].contract)
    what = f"{event.type} seq {event.seq} of {event.device} paid"
    return cast(Payment, wait_for(lambda: _outcome(deployment, event, start), timeout, what))
