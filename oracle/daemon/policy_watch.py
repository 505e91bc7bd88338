"""The status of the motor policies vehicles report for, read from the chain off the intake thread.

The ``lapsed_driving`` alert (``alerts``) needs to know whether a telematics report's policy is lapsed. Intake must
not call the chain per event, so it asks this cache (``status``: one dict lookup), which notes every policy it is
asked about; a thread reads the status of all noted policies with one batched ``eth_call`` of
``MotorInsurance.policyOf`` per ``poll_interval``, and at once for a policy seen for the first time. A policy's
status is therefore at most ``poll_interval`` seconds old; the alert says "lapsed as last read".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from iotsettle.oracle.chain.calls import ContractReader, read
from iotsettle.oracle.chain.rpc import RpcClient
from iotsettle.oracle.protocol.errors import ChainError

log = logging.getLogger(__name__)

#: policies read per batch request
CHUNK = 500


class PolicyWatch:
    """Cached ``policyOf(id).status`` of every policy intake asked about. ``start()`` / ``stop()`` the thread."""

    def __init__(self, rpc: RpcClient, address: str, abi: Sequence[dict[str, Any]], poll_interval: float) -> None:
        self.reader = ContractReader(rpc, address, abi)
        self.poll_interval = poll_interval
        self._statuses: dict[int, int | None] = {}  # written by the thread, read by intake (single dict operations)
        self._new = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def status(self, policy: int) -> int | None:
        """The policy's status as last read (``IMotorInsurance.PolicyStatus``), None until it has been read."""
        try:
            return self._statuses[policy]
        except KeyError:
            self._statuses.setdefault(policy, None)
            self._new.set()
            return None

    def refresh(self) -> int:
        """Read every noted policy's status now; returns how many were read. Raises ChainError."""
        policies = list(self._statuses)  # one C-level copy under the GIL: safe beside intake's inserts
        for start in range(0, len(policies), CHUNK):
            chunk = policies[start : start + CHUNK]
            results = read(self.reader.rpc, [(self.reader, "policyOf", (policy,)) for policy in chunk])
            for policy, result in zip(chunk, results, strict=True):
                self._statuses[policy] = int(result[8])  # Policy.status (IMotorInsurance.Policy)
        self.last_error = None
        return len(policies)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="policy-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._new.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._new.wait(self.poll_interval)
            self._new.clear()
            if self._stop.is_set():
                return
            try:
                self.refresh()
            except ChainError as exc:
                if self.last_error != str(exc):
                    log.warning("policy watch: %s; retrying", exc)
                self.last_error = str(exc)
                self._stop.wait(min(30.0, self.poll_interval))
