"""How fast the node behind a demo is, measured, and the demo's timings that follow from it.

The demo's waits were written for anvil, which mines a transaction in a few milliseconds. Ganache (7.9) mines each
transaction while ``eth_sendRawTransaction`` waits, several times slower, and under the oracle's settlement load
far slower still; a crop season's sale window, the finalize delay, the keeper's grace and the drain timeout measured
in anvil's seconds pass before ganache is done. So the demo times plain transactions on the node (``measure``),
scales its waits by how much slower than anvil they are (``Pace.seconds``), and sizes the sale window from the
transactions it just timed (``sale_window``).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount
from iotsettle.oracle.chain.connection import Chain
from iotsettle.oracle.chain.send import send

#: seconds from signing a plain transfer to its receipt on anvil (automine) on the reference machine; the demo's
#: waits were tuned at this pace
ANVIL_TX_SECONDS = 0.02
#: a wait is never scaled by more than this: a node that slow is better told than waited for
MAX_FACTOR = 6.0
#: how many times the slowest transaction just timed a sale window must hold each of its transactions
SALE_SAFETY = 3.0


@dataclass(frozen=True)
class Pace:
    """A node's measured speed: the median seconds of a plain transfer, and its client name."""

    tx_seconds: float
    client: str

    @property
    def is_ganache(self) -> bool:
        return self.client.lower().startswith("ganache")

    @property
    def factor(self) -> float:
        """How many times slower than anvil the node is (1 at anvil's pace or faster, at most ``MAX_FACTOR``)."""
        slower = self.tx_seconds / ANVIL_TX_SECONDS
        # ganache slows down by far more under load than an idle transfer shows: its demo waits start at ×2
        return min(MAX_FACTOR, max(2.0 if self.is_ganache else 1.0, slower))

    def seconds(self, anvil_seconds: float) -> float:
        """A wait tuned on anvil, at this node's pace."""
        return anvil_seconds * self.factor

    def daemon_env(self) -> dict[str, str]:
        """Oracle settings this node needs. Ganache mines each transaction inside ``eth_sendRawTransaction``, so
        pipelining gains nothing, a call waits as long as the mining takes, and re-sending a transaction it is
        mining jams its pool ("transaction can't be replaced, mining has already started")."""
        if not self.is_ganache:
            return {}
        return {
            "IOTSETTLE_ORACLE_MAX_IN_FLIGHT": "1",
            "IOTSETTLE_ORACLE_REBROADCAST_AFTER": "120",
            "IOTSETTLE_CHAIN_TIMEOUT": "60",
        }


def measure(chain: Chain, account: LocalAccount, samples: int = 3) -> Pace:
    """Time ``samples`` zero-value transfers of ``account`` to itself, signed to receipt."""
    durations = []
    for _ in range(samples):
        started = time.monotonic()
        send(chain, account, {"to": account.address, "value": 0})
        durations.append(time.monotonic() - started)
    return Pace(statistics.median(durations), str(chain.w3.client_version))


def sale_window(timed: list[float], transactions: int, floor: int) -> int:
    """Seconds that hold ``transactions`` more sends, each at ``SALE_SAFETY`` times the slowest of the ``timed``
    ones (sent just before, under the same load), and at least ``floor``."""
    slowest = max(timed, default=0.0)
    return max(floor, math.ceil(SALE_SAFETY * transactions * slowest))
