"""Devices registered on chain that sign with the device SDK, and a device-side MQTT client that hears the oracle's
replies."""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from eth_account.signers.local import LocalAccount
from iotsettle.oracle.chain.node import ANVIL_CHAIN_ID
from iotsettle.oracle.device.keys import DeviceKey, MemoryCounter
from iotsettle.oracle.device.signer import Contracts, EventSigner
from iotsettle.oracle.ops import registry
from iotsettle.oracle.protocol import wire
from iotsettle.oracle.protocol.device_kinds import DeviceKind, kind_from_name
from iotsettle.oracle.protocol.reasons import Reason
from iotsettle.oracle.protocol.wire import SignedEvent
from iotsettle.oracle.testing.stack import Deployment


def register_device(
    deployment: Deployment, owner: LocalAccount, kind: DeviceKind, key: DeviceKey | None = None
) -> DeviceKey:
    """Register a device key (a new one unless given) to ``owner`` in the DeviceRegistry, with the key's own
    consent signature; returns the key."""
    key = key or DeviceKey.from_private_key(secrets.token_bytes(32), kind)
    registry.register(deployment.ops(owner), key, kind)
    return key


def device_signer(deployment: Deployment, key: DeviceKey) -> EventSigner:
    """The device SDK's signer for ``key`` on this deployment: sequence numbers from 1, timestamps from the clock."""
    contracts = Contracts.from_names({name: deployment.address(name) for name in deployment.manifest["contracts"]})
    return EventSigner(key, deployment.chain.chain_id, contracts, MemoryCounter())


class DeviceFactory:
    """``make(kind)``: a new device registered on chain to ``owner`` (or the factory's owner), as a signer."""

    def __init__(self, deployment: Deployment, owner: LocalAccount) -> None:
        self.deployment = deployment
        self.owner = owner

    def __call__(self, kind: DeviceKind | str = DeviceKind.METER, *, owner: LocalAccount | None = None) -> EventSigner:
        parsed = kind_from_name(kind) if isinstance(kind, str) else DeviceKind(kind)
        return device_signer(self.deployment, register_device(self.deployment, owner or self.owner, parsed))


class Publisher:
    """A device-side MQTT client: publishes at QoS 1 and collects every reply on the devices' replies topics as
    ``(topic, reply as a dict)``."""

    def __init__(self, host: str, port: int, chain_id: int = ANVIL_CHAIN_ID) -> None:
        self.chain_id = chain_id
        self.replies: queue.SimpleQueue[tuple[str, dict[str, Any]]] = queue.SimpleQueue()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            # MQTT 3.1.1, as most devices speak it (and every broker: aedes has no MQTT 5)
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"dev-{uuid.uuid4().hex[:10]}",
            protocol=mqtt.MQTTv311,
        )
        self.client.max_inflight_messages_set(1000)
        # subscribing in on_connect keeps the subscription across reconnects; callbacks only hand off
        self.client.on_connect = lambda c, *_: c.subscribe(f"{wire.TOPIC_ROOT}/{chain_id}/+/replies", qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = lambda c, u, m: self.replies.put((m.topic, json.loads(m.payload)))
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise TimeoutError(f"could not subscribe to the replies at {host}:{port}")

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def publish_many(self, items: list[tuple[str, bytes]]) -> None:
        infos = [self.client.publish(topic, payload, qos=1) for topic, payload in items]
        for info in infos:
            info.wait_for_publish(30)

    def send(self, event: SignedEvent, timeout: float = 10.0) -> dict[str, Any]:
        """Publish a signed event on its device's topic and return the oracle's reply to it (other replies that
        arrive meanwhile are dropped).

        A device registered a moment ago is known to the oracle from its next registry poll; until then it answers
        ``unknown_device``, and, as a device does, this publishes the event again until another answer comes.
        """
        mine = wire.replies_topic(event.chain_id, event.device)
        deadline = time.monotonic() + timeout
        while True:
            self.publish(wire.events_topic(event.chain_id, event.device), event.to_payload())
            reply = self._reply(mine, event, deadline)
            if reply.get("reason") != Reason.UNKNOWN_DEVICE.value or time.monotonic() > deadline:
                return reply
            time.sleep(0.1)

    def _reply(self, topic: str, event: SignedEvent, deadline: float) -> dict[str, Any]:
        while True:
            try:
                got, reply = self.replies.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no reply to {event.type} seq {event.seq} before the deadline") from None
            if got == topic and reply.get("seq") == event.seq:
                return reply

    def collect(self, count: int, timeout: float = 10.0) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            try:
                out.append(self.replies.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                raise TimeoutError(f"got {len(out)} of {count} replies: {out}") from None
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
