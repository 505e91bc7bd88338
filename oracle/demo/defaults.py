"""The demo's defaults that `iotsettle demo --help` shows, kept apart from the demo's processes (which import web3)."""

from __future__ import annotations

#: fault classes the demo's simulator injects unless told otherwise (one of each that the oracle must catch, and two
#: that it accepts and raises an early alert on; the hostile weather station raises station_outlier by itself)
DEFAULT_FAULTS = (
    "bad_signature,replayed_seq,counter_rollback,clock_skew,teleport,behaviour_rollback,meter_spike,tracker_stalled"
)
