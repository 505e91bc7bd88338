"""The oracle's early alerts on the wire: their kinds and their topic (docs/PROTOCOL.md, "Alerts"; docs/ALERTS.md).

An alert says that an accepted event is unusual for the device that signed it; it never refuses anything. The
oracle publishes each one on ``wire.alerts_topic`` (``iotsettle/v1/{chainId}/alerts``, QoS 1, not retained) as a
JSON object built by ``iotsettle.oracle.daemon.alerts.Alert.as_dict``. Kinds are added only at the end, never
renamed within v1. This module imports nothing, so the CLI can offer the kinds without loading the wire codecs.
"""

from __future__ import annotations

from enum import StrEnum

ALERT_VERSION = 1


class AlertKind(StrEnum):
    METER_SPIKE = "meter_spike"  # consumption far above the meter's own recent pattern
    TRACKER_STALLED = "tracker_stalled"  # a tracker that stayed in one place too long
    LAPSED_DRIVING = "lapsed_driving"  # a vehicle driving while its policy is lapsed
    STATION_OUTLIER = "station_outlier"  # a weather station's rainfall far from the other stations'
