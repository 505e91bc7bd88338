"""Follow the DeviceRegistry's events into the store, so intake checks devices without one RPC call per message.

Every ``poll_interval`` seconds one ``eth_getLogs`` (in block ranges of at most ``chunk`` blocks) reads the
registry's logs from the stored cursor up to ``latest - confirmations``; ``DeviceRegistered``, ``KeyRotated`` and
``DeviceRevoked`` become rows of ``registry_keys`` (signing key → device id, kind, active) and the cursor moves,
in one transaction, so a restart resumes where it stopped. The intake reloads its in-memory copy when told.

A device that registers is accepted from the first poll after its registration is mined (``poll_interval``); an
event it sends before that is answered ``unknown_device`` and the device retries.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from eth_utils import to_checksum_address
from iotsettle.oracle.chain.logs import log_key, scan_chunks, topic0
from iotsettle.oracle.chain.rpc import RpcClient
from iotsettle.oracle.daemon.metrics import Metrics
from iotsettle.oracle.daemon.store import RegistryEntry, Store
from iotsettle.oracle.protocol.errors import ChainError, StoreError
from web3 import Web3
from web3.contract import Contract

log = logging.getLogger(__name__)

FOLLOWED_EVENTS = ("DeviceRegistered", "KeyRotated", "DeviceRevoked")


class RegistryFollower:
    """Mirrors one DeviceRegistry into the store. ``sync()`` catches up once; ``start()`` keeps following."""

    def __init__(
        self,
        w3: Web3,
        registry: Contract,
        store: Store,
        *,
        chain_id: int,
        start_block: int = 0,
        poll_interval: float = 1.0,
        confirmations: int = 0,
        chunk: int = 10_000,
        on_change: Callable[[], None] = lambda: None,
        metrics: Metrics | None = None,
    ) -> None:
        self.w3 = w3
        self.rpc = RpcClient(w3)
        self.registry = registry
        self.store = store
        self.start_block = start_block
        self.poll_interval = poll_interval
        self.confirmations = confirmations
        self.chunk = chunk
        self.on_change = on_change
        self.metrics = metrics
        self.cursor_name = f"registry:{chain_id}:{to_checksum_address(registry.address)}"
        entries: Sequence[Mapping[str, Any]] = registry.abi  # web3's ABI TypedDicts, read as plain JSON objects
        self._events = {
            topic0(abi): getattr(registry.events, abi["name"])()
            for abi in entries
            if abi.get("type") == "event" and abi.get("name") in FOLLOWED_EVENTS
        }
        if len(self._events) != len(FOLLOWED_EVENTS):
            raise ChainError(f"the DeviceRegistry ABI lacks some of the events {FOLLOWED_EVENTS}")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_success: float | None = None
        self.last_error: str | None = None

    @property
    def next_block(self) -> int:
        cursor = self.store.follower_cursor(self.cursor_name)
        return self.start_block if cursor is None else cursor

    def sync(self) -> int:
        """Read every new registry log up to the followed head; returns how many were applied.

        Raises ChainError when the node cannot be reached (the thread retries; at start-up the daemon refuses).
        """
        try:
            head = self.rpc.block_number() - self.confirmations
        except ChainError as exc:
            raise ChainError(f"registry follower: cannot read the block number: {exc}") from None
        applied = 0
        start = self.next_block
        try:
            for _first, last, logs in scan_chunks(self.rpc, self.registry.address, start, head, chunk=self.chunk):
                applied += self._apply(logs, last + 1)
                start = last + 1
        except ChainError as exc:
            raise ChainError(f"registry follower: eth_getLogs from block {start}: {exc}") from None
        self.last_success = time.time()
        self.last_error = None
        if self.metrics is not None:
            self.metrics.registry_block.set(start)
        return applied

    def _apply(self, logs: Sequence[Mapping[str, Any]], next_block: int) -> int:
        known = self.store.registry()
        entries: dict[str, RegistryEntry] = {}
        revoked: list[tuple[str, int]] = []
        count = 0
        for raw in logs:  # in chain order
            topics = raw.get("topics") or []
            event = self._events.get(str(topics[0]).lower()) if topics else None
            if event is None:
                continue
            decoded = event.process_log(raw)
            args, block, name = decoded["args"], log_key(raw)[0], decoded["event"]
            count += 1
            if name == "DeviceRegistered":
                device = args["device"]
                entries[device] = RegistryEntry(device, device, args["owner"], int(args["kind"]), True, block)
            elif name == "KeyRotated":
                old = entries.get(args["oldKey"]) or known.get(args["oldKey"])
                if old is None:
                    log.warning("KeyRotated for %s from an unknown key %s; ignored", args["device"], args["oldKey"])
                    continue
                entries[old.key] = RegistryEntry(old.key, old.device, old.owner, old.kind, False, block)
                entries[args["newKey"]] = RegistryEntry(args["newKey"], old.device, old.owner, old.kind, True, block)
            else:  # DeviceRevoked: every key of the device stops, for good
                device = args["device"]
                revoked.append((device, block))
                for key, entry in list(entries.items()):
                    if entry.device == device:
                        entries[key] = RegistryEntry(key, device, entry.owner, entry.kind, False, block)
            log.info("registry: %s %s in block %d", name, dict(args), block)
        self.store.apply_registry(list(entries.values()), revoked, cursor=self.cursor_name, next_block=next_block)
        if count:
            self.on_change()
            if self.metrics is not None:
                self.metrics.registry_devices.set(sum(e.active for e in self.store.registry().values()))
        return count

    # ----------------------------------------------------------------------------------------------- thread

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="registry-follower", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        backoff = self.poll_interval
        while not self._stop.wait(backoff):
            try:
                self.sync()
                backoff = self.poll_interval
            except (ChainError, StoreError) as exc:
                if self.last_error != str(exc):
                    log.warning("%s; retrying", exc)
                self.last_error = str(exc)
                backoff = min(30.0, max(self.poll_interval, backoff * 2))

    def healthy(self, now: float | None = None) -> bool:
        """True while the last successful poll is recent (a few intervals)."""
        if self.last_success is None:
            return False
        return (now or time.time()) - self.last_success < max(10.0, 5 * self.poll_interval)
