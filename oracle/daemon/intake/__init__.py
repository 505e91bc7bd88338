"""MQTT intake: receive signed device events, verify them, apply the fraud rules, store them durably, then ack.

``transport`` is the MQTT side (connection, subscription, status, acknowledgements; paho's hot path made cheaper),
``pipeline`` the work on each batch (verify → rules → store → ack).
"""

from iotsettle.oracle.daemon.intake.pipeline import (
    Intake,
    IntakeSettings,
    accepted_reply,
    check_payload,
    check_payloads,
    prefer_fast_keccak,
    replies_topic_for,
)
from iotsettle.oracle.daemon.intake.transport import MQTT_PROTOCOLS

__all__ = [
    "MQTT_PROTOCOLS",
    "Intake",
    "IntakeSettings",
    "accepted_reply",
    "check_payload",
    "check_payloads",
    "prefer_fast_keccak",
    "replies_topic_for",
]
