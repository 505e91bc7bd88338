"""Fraud rules on their own: what an honest device may do is accepted, what a broken or hostile one does is named;
and no payload, however hostile, gets past the decode and signature checks unless it is validly signed."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from iotsettle.oracle.daemon.intake import check_payload
from iotsettle.oracle.daemon.rules import Outcome, RuleSettings, decode_location, evaluate
from iotsettle.oracle.daemon.store import DeviceState
from iotsettle.oracle.protocol import eip712, wire
from iotsettle.oracle.protocol.errors import ProtocolError
from iotsettle.oracle.protocol.location import geohash_encode, location_bytes32
from iotsettle.oracle.protocol.reasons import Reason

NOW = 1_800_000_000.0
DEVICE = "0x" + "d1" * 20
CONTRACT = "0x" + "c0" * 20
KEY = os.urandom(32)


def reading(seq: int, value: int, ts: int, agreement: int = 1) -> wire.SignedEvent:
    msg = {"agreementId": agreement, "seq": seq, "timestamp": ts, "value": value}
    return wire.decode(wire.encode("reading", 31337, CONTRACT, eip712.address_of(KEY), msg, b"\x1b" * 65))


def delivery(seq: int, location: bytes, ts: int) -> wire.SignedEvent:
    msg = {"escrowId": 1, "seq": seq, "timestamp": ts, "location": location, "maxTemperature": 4}
    return wire.decode(wire.encode("delivery", 31337, CONTRACT, eip712.address_of(KEY), msg, b"\x1b" * 65))


def run(
    events: list[wire.SignedEvent], kind: int = 1, settings: RuleSettings | None = None, now: float = NOW
) -> list[str]:
    """Evaluate events in order like intake does; returns each outcome's code."""
    state: DeviceState | None = None
    accepted: dict[int, bytes] = {}
    codes = []
    for event in events:
        verdict = evaluate(event, DEVICE, kind, state, now, settings or RuleSettings(), lambda d, s: accepted.get(s))
        state = verdict.state
        if verdict.outcome is Outcome.ACCEPT:
            accepted[event.seq] = event.digest
        codes.append(str(verdict.reason) if verdict.reason else str(verdict.outcome))
    return codes


T = int(NOW)


def test_honest_meter_with_two_agreements_is_accepted() -> None:
    events = [
        reading(1, 5_000, T - 60, agreement=1),
        reading(2, 100, T - 50, agreement=2),
        reading(3, 5_500, T - 40, agreement=1),
        reading(4, 150, T - 30, agreement=2),
    ]
    assert run(events) == ["accepted"] * 4


def test_duplicate_replay_rollback_and_rate() -> None:
    first = reading(1, 1_000, T - 100)
    assert run([first, first]) == ["accepted", "duplicate"]
    assert run([first, reading(1, 1_001, T - 100)]) == ["accepted", "replayed_seq"]
    assert run([first, reading(3, 1_100, T - 90), reading(2, 1_050, T - 95)]) == [
        "accepted",
        "accepted",
        "replayed_seq",
    ]
    assert run([first, reading(2, 999, T - 90)]) == ["accepted", "counter_rollback"]
    # meter limit 1,000 units/s: 10 s allow 10,000 units, not 10,001
    assert run([first, reading(2, 11_000, T - 90)]) == ["accepted", "accepted"]
    assert run([first, reading(2, 11_001, T - 90)]) == ["accepted", "impossible_rate"]
    assert run([first, reading(2, 11_001, T - 90)], settings=RuleSettings(max_rate_meter=0)) == ["accepted"] * 2


def test_clock_skew_edges() -> None:
    settings = RuleSettings(max_future_skew_s=300, max_age_s=3_600)
    assert run([reading(1, 1, T + 300)], settings=settings) == ["accepted"]
    assert run([reading(1, 1, T + 301)], settings=settings) == ["clock_skew"]
    assert run([reading(1, 1, T - 3_600)], settings=settings) == ["accepted"]
    assert run([reading(1, 1, T - 3_601)], settings=settings) == ["clock_skew"]
    assert run([reading(1, 1, T - 10), reading(2, 1, T - 11)]) == ["accepted", "clock_skew"]


def geo(lat: float, lon: float, precision: int = 7) -> bytes:
    return location_bytes32(geohash_encode(lat, lon, precision))


def test_teleport_needs_an_implausible_speed_and_allows_for_the_cell_size() -> None:
    berlin, potsdam, paris = geo(52.52, 13.405), geo(52.39, 13.065), geo(48.8566, 2.3522)
    # Berlin → Potsdam (~27 km) in 10 min is 45 m/s: fine; Berlin → Paris (~880 km) in 10 min is not
    assert run([delivery(1, berlin, T - 700), delivery(2, potsdam, T - 100)], kind=2) == ["accepted"] * 2
    assert run([delivery(1, berlin, T - 700), delivery(2, paris, T - 100)], kind=2) == ["accepted", "teleport"]
    # two fixes in neighbouring coarse cells at the same second are not a teleport (the cells touch)
    coarse_a, coarse_b = geo(52.52, 13.405, 5), geo(52.52, 13.405 + 0.05, 5)
    assert run([delivery(1, coarse_a, T - 5), delivery(2, coarse_b, T - 5)], kind=2) == ["accepted"] * 2
    # no fix (all zeros) is never a teleport, and the last known fix is kept
    assert run([delivery(1, berlin, T - 20), delivery(2, bytes(32), T - 10), delivery(3, paris, T - 5)], kind=2) == [
        "accepted",
        "accepted",
        "teleport",
    ]
    assert run([delivery(1, b"hello".ljust(32, b"\0"), T)], kind=2) == ["invalid_location"]


def test_quarantine_after_repeated_failures_within_the_window() -> None:
    settings = RuleSettings(quarantine_threshold=3, quarantine_window_s=60)
    bad = [reading(1, 1_000, T - 100)] + [reading(seq, 1, T - 100 + seq) for seq in (2, 3, 4)]
    assert run([*bad, reading(9, 1001, T)], settings=settings) == [
        "accepted",
        "counter_rollback",
        "counter_rollback",
        "counter_rollback",
        "quarantined",
    ]

    # failures spread over more than the window do not add up
    state = None
    codes = []
    for i, seq in enumerate((1, 2, 3, 4, 5)):
        event = reading(seq, 1_000 if seq == 1 else 1, T - 500 + seq)
        verdict = evaluate(event, DEVICE, 1, state, NOW + 61 * i, settings, lambda d, s: None)
        state, codes = verdict.state, [*codes, str(verdict.reason or verdict.outcome)]
    assert "quarantined" not in codes and state is not None and state.quarantined_at is None


def test_decode_location_refuses_what_is_not_a_geohash() -> None:
    assert decode_location(bytes(32)) is None
    position = decode_location(geo(52.52, 13.405, 9))
    assert position is not None and abs(position.lat - 52.52) < 1e-4 and position.slack_m < 5
    for bad in (b"u33d c0".ljust(32, b"\0"), b"\0u33dc0".ljust(32, b"\0"), b"a" * 32):
        with pytest.raises(ProtocolError):
            decode_location(bad)


# ------------------------------------------------------------------------------------ hostile payloads (intake)

TOPIC = wire.events_topic(31337, eip712.address_of(KEY))
GOOD = wire.encode(
    "reading",
    31337,
    CONTRACT,
    eip712.address_of(KEY),
    {"agreementId": 1, "seq": 1, "timestamp": T, "value": 5},
    eip712.sign_digest(
        KEY,
        eip712.digest(
            "Reading", {"agreementId": 1, "seq": 1, "timestamp": T, "value": 5}, eip712.Domain(31337, CONTRACT)
        ),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=1_500),
        st.builds(
            lambda i, b: GOOD[:i] + bytes([b]) + GOOD[i + 1 :], st.integers(0, len(GOOD) - 1), st.integers(0, 255)
        ),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
            max_leaves=12,
        ).map(lambda value: json.dumps(value).encode()),
    )
)
def test_no_payload_crashes_the_checks_and_only_a_valid_one_passes(payload: bytes) -> None:
    refusal, event, signer = check_payload(TOPIC, payload)
    if refusal is None:
        assert event is not None and signer == event.device  # a valid signature by the claimed device
    else:
        assert Reason(refusal.reason) in {
            Reason.MALFORMED,
            Reason.OVERSIZE,
            Reason.BAD_SIGNATURE,
            Reason.TOPIC_MISMATCH,
        }


def test_the_untouched_payload_passes() -> None:
    assert check_payload(TOPIC, GOOD)[0] is None
