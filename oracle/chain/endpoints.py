"""Several RPC endpoints of one chain (``[chain] rpc_urls``) and which one to use now: the failover decision.

``RpcClient`` (and through ``connection.FailoverProvider`` every web3 call) sends to ``Endpoints.current``. It
moves to the next endpoint when the current one does not answer (refused, timed out, HTTP error, not JSON), and
``check_heads`` moves it away from an endpoint that answers but is **stale**: its head is more than ``max_lag``
blocks behind the best one, or it has not advanced for ``stall`` seconds while another endpoint's head has. A stale
node must not judge confirmations nor count nonces, so its answers are not used while a fresh one exists.

The daemon checks the heads every ``[chain] head_check`` seconds; the CLI once, when it connects. Every switch is
logged (the endpoint as ``#N scheme://host:port``: hosted endpoints carry API keys in their path, which are never
printed), counted in ``switches`` and reported to the ``on_switch`` listeners (the daemon's metrics).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from iotsettle.oracle.config import Config, endpoint
from iotsettle.oracle.protocol.errors import ChainError

log = logging.getLogger(__name__)

#: (from label, to label, reason) of a switch
SwitchListener = Callable[[str, str, str], None]


@dataclass
class _Head:
    number: int | None = None  # None: never read, or the last read failed
    advanced_at: float = 0.0  # monotonic time the head last rose (or was first read)
    error: str = ""


class Endpoints:
    """The endpoints of one chain in order of preference and the one in use; thread-safe."""

    def __init__(self, urls: Sequence[str], *, max_lag: int = 3, stall: float = 30.0) -> None:
        if not urls:
            raise ChainError("no RPC endpoint configured ([chain] rpc_url / rpc_urls)")
        self.urls = tuple(urls)
        self.max_lag = max_lag
        self.stall = stall
        self.switches = 0
        self.on_switch: list[SwitchListener] = []
        self._current = 0
        self._heads = [_Head() for _ in self.urls]
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config, rpc_url: str | None = None) -> Endpoints:
        """``[chain] rpc_urls`` (or ``rpc_url``) with the staleness limits of ``[chain]``; ``rpc_url`` (a command's
        ``--rpc-url``) alone when given."""
        urls = (rpc_url,) if rpc_url else config.chain.endpoints
        return cls(urls, max_lag=config.chain.max_lag, stall=config.chain.stall)

    def __len__(self) -> int:
        return len(self.urls)

    @property
    def current(self) -> str:
        return self.urls[self._current]

    @property
    def index(self) -> int:
        return self._current

    def label(self, index: int | None = None) -> str:
        """``#N scheme://host:port`` of an endpoint (the current one by default): safe to print."""
        i = self._current if index is None else index
        return f"#{i + 1} {endpoint(self.urls[i])}"

    # ----------------------------------------------------------------------------------------- switching

    def failed(self, url: str, reason: str) -> None:
        """``url`` did not answer: if it is still the current endpoint, move to the next one not known stale."""
        with self._lock:
            if len(self.urls) < 2 or self.urls[self._current] != url:
                return  # another thread has switched already
            self._heads[self._current].number = None
            self._heads[self._current].error = reason
            stale = self._stale(time.monotonic())
            order = [(self._current + k) % len(self.urls) for k in range(1, len(self.urls))]
            target = next((i for i in order if not stale[i]), order[0])
            self._switch(target, f"no answer ({reason})")

    def observe(self, heads: Sequence[int | None], errors: Sequence[str] = (), now: float | None = None) -> None:
        """Record each endpoint's head (None: no answer) and leave the current endpoint if it is stale while another
        one is not, for the freshest of those (the first in order among equals)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for i, number in enumerate(heads):
                head = self._heads[i]
                if number is not None and (head.number is None or number > head.number):
                    head.advanced_at = now
                head.number = number
                head.error = errors[i] if i < len(errors) else ""
            stale = self._stale(now)
            if not stale[self._current] or all(stale):
                return
            fresh = [i for i in range(len(self.urls)) if not stale[i]]
            target = max(fresh, key=lambda i: (self._heads[i].number or 0, -i))
            self._switch(target, self._why_stale(self._current, now))

    def _stale(self, now: float) -> list[bool]:
        return [bool(self._why_stale(i, now)) for i in range(len(self.urls))]

    def _why_stale(self, i: int, now: float) -> str:
        head = self._heads[i]
        if head.number is None:
            return f"no answer ({head.error})" if head.error else ""
        known = [h.number for h in self._heads if h.number is not None]
        best = max(known)
        if best - head.number > self.max_lag:
            return f"head {head.number} is {best - head.number} blocks behind {best}"
        others_advance = any(
            h.number is not None and now - h.advanced_at < self.stall for j, h in enumerate(self._heads) if j != i
        )
        if now - head.advanced_at >= self.stall and others_advance:
            return f"head {head.number} has not advanced for {now - head.advanced_at:.0f} s while another's has"
        return ""

    def _switch(self, target: int, reason: str) -> None:
        before = self.label()
        self._current = target
        self.switches += 1
        after = self.label()
        log.warning("RPC endpoint %s: %s; switching to %s", before, reason, after)
        for listener in self.on_switch:
            try:
                listener(before, after, reason)
            except Exception:
                log.exception("RPC switch listener failed")

    # ------------------------------------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """The current endpoint, the switch count and each endpoint's head and staleness (labels only)."""
        now = time.monotonic()
        with self._lock:
            return {
                "current": self.label(),
                "switches": self.switches,
                "endpoints": [
                    {"endpoint": self.label(i), "head": h.number, "stale": self._why_stale(i, now)}
                    for i, h in enumerate(self._heads)
                ],
            }

    def current_stale(self) -> str:
        """Why the current endpoint is stale ("" while it is not)."""
        with self._lock:
            return self._why_stale(self._current, time.monotonic())
