"""The relayer's money: its balance, what settlement spends on gas, and how many hours that leaves.

The spending rate is what the receipts of the last hour cost (gas used × effective gas price, reverted transactions
included). After a restart the hour is seeded from the oracle database (gas used × the max fee of the newest attempt:
an upper bound, so the estimate errs towards "send money"). The balance is read from the node at most every
``[oracle] balance_refresh`` seconds, when ``/health`` or ``/metrics`` asks, never per batch.

``/health`` reports "degraded" when the balance lasts fewer than ``[oracle] min_gas_hours`` at that rate, with the
amount to send and where to send it. With several relayer keys (nonce lanes, ``[oracle] relayer_keys``) each account
is counted on its own (``LaneFunds``): its balance, its spending, its line in ``/health``, its metrics labelled by
address.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from iotsettle.oracle.daemon.health import State
from iotsettle.oracle.daemon.metrics import Metrics

log = logging.getLogger(__name__)

WEI_PER_ETH = 10**18
#: seconds of receipts the spending rate is taken over
SPEND_WINDOW = 3600.0

Balance = Callable[[str], int]


def eth(wei: float, *, up: bool = False) -> str:
    """An amount of the native coin for people: 4 significant digits (rounded up with ``up``: an amount to send must
    not fall short), never scientific notation."""
    value = wei / WEI_PER_ETH
    if value == 0:
        return "0 ETH"
    digits = max(0, 3 - math.floor(math.log10(abs(value))))
    if up and digits <= 18:
        step = 10 ** (18 - digits)  # in wei, so that 0.14 ETH stays 0.1400 (floats would make it 0.1401)
        value = -(-int(wei) // step) * step / WEI_PER_ETH
    return f"{value:.{digits}f} ETH"


class RelayerFunds:
    """Balance and spending of one relayer account; ``check`` is the ``funds`` check of ``/health``."""

    def __init__(
        self,
        address: str,
        balance_of: Balance,
        *,
        min_hours: float,
        refresh: float = 30.0,
        window: float = SPEND_WINDOW,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.address = address
        self.min_hours = min_hours
        self.refresh = refresh
        self.window = window
        self.metrics = metrics
        self._balance_of = balance_of
        self._clock = clock
        self._spent: deque[tuple[float, int]] = deque()  # (time, wei), oldest first
        self._balance: int | None = None
        self._balance_at = -math.inf
        self._balance_error: str | None = None
        self._lock = threading.Lock()
        if metrics is not None:
            metrics.min_gas_hours.set(min_hours)

    def seed(self, spent: Iterable[tuple[float, int]]) -> None:
        """Spending recorded before this process started, as (time, wei)."""
        with self._lock:
            merged = sorted([*self._spent, *spent])
            self._spent = deque(merged)

    def spent(self, wei: int, at: float | None = None) -> None:
        """A receipt: ``wei`` paid for gas (from the settlement thread)."""
        with self._lock:
            self._spent.append((self._clock() if at is None else at, wei))
        if self.metrics is not None:
            self.metrics.gas_spent.labels(address=self.address).inc(wei / WEI_PER_ETH)

    def rate(self) -> float:
        """Wei spent per hour over the last ``window`` seconds."""
        now = self._clock()
        with self._lock:
            while self._spent and self._spent[0][0] < now - self.window:
                self._spent.popleft()
            total = sum(wei for _, wei in self._spent)
        return total * 3600.0 / self.window

    def balance(self) -> int | None:
        """The balance, read again when older than ``refresh`` seconds; the last known one if the node errs."""
        now = time.monotonic()
        with self._lock:
            if now - self._balance_at < self.refresh:
                return self._balance
            self._balance_at = now
        try:
            value = int(self._balance_of(self.address))
        except Exception as exc:  # any node failure: keep the last figure and say why it may be stale
            # the type only: messages of HTTP errors quote the URL, and hosted endpoints carry an API key in it
            self._balance_error = f"node error {type(exc).__name__}"
            log.debug("relayer balance not read: %s", self._balance_error)
            return self._balance
        self._balance, self._balance_error = value, None
        if self.metrics is not None:
            self.metrics.relayer_balance.labels(address=self.address).set(value / WEI_PER_ETH)
        return value

    def hours_left(self) -> float:
        """Hours the balance lasts at the current rate (inf with nothing spent, NaN with no balance known)."""
        balance, rate = self.balance(), self.rate()
        if balance is None:
            return math.nan
        return math.inf if rate <= 0 else balance / rate

    def check(self) -> tuple[State, str]:
        """ok, or degraded with what to send where when the balance lasts fewer than ``min_hours``."""
        hours = self.hours_left()
        if self.metrics is not None and not math.isnan(hours):
            self.metrics.gas_hours_left.labels(address=self.address).set(hours)
        balance, rate = self._balance, self.rate()
        if balance is None:
            return State.DEGRADED, f"relayer {self.address}: balance unknown ({self._balance_error})"
        stale = f" (balance as last read; now {self._balance_error})" if self._balance_error else ""
        if rate <= 0:
            return State.OK, f"relayer {self.address} holds {eth(balance)}{stale}; no gas spent in the last hour"
        if self.min_hours <= 0 or hours >= self.min_hours:
            return (
                State.OK,
                f"relayer {self.address} holds {eth(balance)}{stale}: {hours:.1f} h of gas at {eth(rate)}/h",
            )
        need = math.ceil(self.min_hours * rate - balance)
        return State.DEGRADED, (
            f"relayer {self.address} has {hours:.1f} h of gas at the last hour's rate ({eth(rate)}/h){stale}: "
            f"send at least {eth(need, up=True)} to {self.address} to reach {self.min_hours:g} h"
        )


_RANK = {State.OK: 0, State.DEGRADED: 1, State.DOWN: 2}


class LaneFunds:
    """The funds of every relayer account (nonce lane), the first one the ``[chain]`` key; ``check`` is the ``funds``
    check of ``/health``: the worst lane's state, one sentence per lane."""

    def __init__(self, lanes: Sequence[RelayerFunds]) -> None:
        self.lanes = {funds.address: funds for funds in lanes}
        self.first = lanes[0]

    def spent(self, wei: int, sender: str | None = None) -> None:
        """A receipt of ``sender``'s transaction (the first lane when not named)."""
        self.lanes.get(sender or self.first.address, self.first).spent(wei)

    def check(self) -> tuple[State, str]:
        results = [funds.check() for funds in self.lanes.values()]
        return max((state for state, _ in results), key=_RANK.__getitem__), "; ".join(d for _, d in results)
