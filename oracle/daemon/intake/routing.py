"""Which oracle instance of a route group handles which device: one owner per device, so a scaled-out fleet relays
each agreement's newest reading once instead of once per instance.

Every instance of the group subscribes to all events (a plain subscription: each gets a copy) and to the retained
online/offline status of every instance (``iotsettle/v1/{chainId}/oracle/+/status``; an instance that dies goes
"offline" by its last will). The owner of a device is the rendezvous (highest-random-weight) hash of the device
address over the instances of the group currently online: every instance computes the same owner from the same
view, and when an instance joins or leaves only the devices it gains or loses move. An instance verifies, stores,
answers and relays the events of the devices it owns; the others' it acknowledges to the broker unread.

Races, and what makes good for each (docs/SCALING.md):

- views differ for a moment while an instance joins: the old and the new owner may both store a device's events;
  both relay, the contract refuses the older seq (``Replayed``): some gas, no money twice;
- an instance dies: until its last will is published its devices have no owner. Its persistent session queues
  what it misses and redelivers it when it restarts; for cumulative readings the next reading after the will pays
  the same register anyway; deliveries and weather observations are republished by the device until answered, and
  the new owner answers them.

The status view is updated on paho's network thread (``observe``); ``owns`` is read by the intake thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
from typing import Any

from iotsettle.oracle.protocol import wire

log = logging.getLogger(__name__)


def peers_filter(chain_id: int) -> str:
    """The subscription that receives the retained status of every oracle instance on one chain."""
    return f"{wire.TOPIC_ROOT}/{chain_id}/oracle/+/status"


def weight(instance: str, device: str) -> int:
    """The rendezvous weight of ``instance`` for ``device`` (lower-case address); the heaviest instance owns it."""
    return int.from_bytes(hashlib.blake2b(f"{instance}\n{device}".encode(), digest_size=8).digest(), "big")


def owner(instances: frozenset[str] | set[str], device: str) -> str:
    """The instance of ``instances`` that owns ``device``."""
    key = device.lower()
    return max(instances, key=lambda instance: (weight(instance, key), instance))


class Router:
    """One instance's view of its route group. ``me`` is this instance's status topic (unique per instance)."""

    def __init__(self, me: str, group: str, chain_id: int) -> None:
        self.me = me
        self.group = group
        self.boot = secrets.token_hex(8)  # in our own status, so we know when the broker echoed our "online" back
        self._prefix = f"{wire.TOPIC_ROOT}/{chain_id}/oracle/"
        self._online: set[str] = set()
        # (instances online, owned-or-not cache) replaced together on each change, so a reader never mixes two views
        self._view: tuple[frozenset[str], dict[str, bool]] = (frozenset({me}), {})
        self._ready = threading.Event()

    @property
    def status_fields(self) -> dict[str, Any]:
        """What this instance adds to its status messages."""
        return {"routeGroup": self.group, "boot": self.boot}

    def is_status(self, topic: str) -> bool:
        return topic.startswith(self._prefix) and topic.endswith("/status")

    def observe(self, topic: str, payload: bytes) -> None:
        """A status message (paho's network thread): update who is online in our group."""
        try:
            body = json.loads(payload)
            online = body.get("status") == "online" and body.get("routeGroup") == self.group
            if topic == self.me and online and body.get("boot") == self.boot:
                self._ready.set()
        except (ValueError, AttributeError):
            log.warning("unreadable oracle status on %s ignored", topic)
            return
        if topic == self.me:
            return  # we count ourselves as online for as long as we run
        changed = (topic in self._online) != online
        if online:
            self._online.add(topic)
        else:
            self._online.discard(topic)
        if changed:
            self._view = (frozenset(self._online | {self.me}), {})
            log.info("route group %s: %d instance(s) online", self.group, len(self._view[0]))

    def wait_ready(self, timeout: float) -> bool:
        """True once the broker has echoed our own "online": every retained status came before it, so the view
        is complete."""
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def instances(self) -> frozenset[str]:
        return self._view[0]

    def owns(self, device: str) -> bool:
        """Whether this instance handles the events of ``device`` (its address as in the events topic)."""
        instances, cache = self._view
        mine = cache.get(device)
        if mine is None:
            mine = cache[device] = owner(instances, device) == self.me
        return mine
