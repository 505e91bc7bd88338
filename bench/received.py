"""Gas per event *received* for a realistic fleet of cumulative devices, from the measured gas per event *settled*.

Readings and telematics reports carry cumulative registers, so the daemon settles only the newest event per target
(agreement, policy) and ``settlement_window`` (``[oracle] settlement_window``, seconds, counted from the first held
event of the target): a meter reading once a minute sends ``window ÷ 60`` readings per settlement. With a fleet of at
least ``batch_max_events`` targets the windows of different targets end close enough together to fill batches of
100, so the settled figure is the measured batch-100 one. This is arithmetic on measured figures, not a measurement
of a fleet running for an hour; the JSON says so (``source``).

Window 0 (the daemon's default today) settles whatever is pending at each batch cut: with one reading a minute per
meter and a 0.25 s cut, every reading settles on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: one reading per minute per device
INTERVAL_S = 60
#: settlement windows compared: the default today, 15 minutes, one hour
WINDOWS_S = (0, 900, 3_600)
CUMULATIVE = ("reading", "telematics")
SOURCE = "arithmetic: measured gas per settled event at batch 100 × settlements per received event"


def gas_per_received(
    gas: Sequence[Mapping[str, Any]],
    windows: Sequence[int] = WINDOWS_S,
    interval: int = INTERVAL_S,
    batch: int = 100,
) -> list[dict[str, Any]]:
    """One entry per cumulative kind measured and window: received events per settlement and gas per received."""
    settled = {g["kind"]: g["per_event"] for g in gas if g["batch"] == batch and not g.get("first")}
    out = []
    for kind in CUMULATIVE:
        if kind not in settled:
            continue
        for window in windows:
            received = max(1, window // interval)
            out.append(
                {
                    "kind": kind,
                    "window_s": window,
                    "interval_s": interval,
                    "received_per_settled": received,
                    "per_settled": settled[kind],
                    "per_event": round(settled[kind] / received),
                    # the on-chain balance lags the newest reading by up to the window + one batch
                    "staleness_s": window,
                    "source": SOURCE,
                }
            )
    return out
