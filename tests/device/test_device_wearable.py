"""Simulated wearables: one summary per finished period of the policy, only the tier on the wire, tiers that follow
the wearer's activity profile and week, and fleet files that say what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from iotsettle.oracle.device.activity import DAILY_THRESHOLDS, WEEKLY_THRESHOLDS, ActivityProfile, Cover, tier_of
from iotsettle.oracle.device.fleet import generate_fleet, load_fleet, set_health_policies
from iotsettle.oracle.device.signer import Contracts
from iotsettle.oracle.device.sim import plan_events
from iotsettle.oracle.device.sim.models import WearableModel
from iotsettle.oracle.protocol.errors import ConfigError
from iotsettle.oracle.protocol.wire import decode

CHAIN_ID = 31337
HEALTH = "0x" + "55" * 20
CONTRACTS = Contracts("0x" + "11" * 20, "0x" + "22" * 20, None, "0x" + "33" * 20, "0x" + "44" * 20, HEALTH)
START = 1_764_340_000
DAY = 86_400


def _fleet(tmp_path: Path, cover: Cover) -> Path:
    path = generate_fleet(
        tmp_path / "fleet", chain_id=CHAIN_ID, contracts=CONTRACTS, meters=1, trackers=0, vehicles=0,
        weather_stations=0, wearables=3, seed=3,
    )  # fmt: skip
    names = [e["name"] for e in json.loads(path.read_text())["devices"] if e["kind"] == "wearable"]
    set_health_policies(
        path,
        {name: ((index + 1) << 96 | 1, cover) for index, name in enumerate(names)},
        profiles=dict(zip(names, ActivityProfile, strict=True)),
    )
    return path


def test_each_finished_period_is_summarised_once_with_only_its_tier(tmp_path: Path) -> None:
    # daily periods that started 10 days before the run; the run lasts 30 s: ten periods are over
    cover = Cover(START - 10 * DAY, DAY, 52, DAILY_THRESHOLDS)
    fleet = load_fleet(_fleet(tmp_path, cover))
    plan = plan_events(fleet, CONTRACTS, rate=20, duration=30, seed=1, start_time=START, counters="memory")
    summaries = [decode(e.payload) for e in plan if e.event_type == "activity"]
    by_device: dict[str, list[dict[str, int]]] = {}
    for event in summaries:
        assert event.contract == HEALTH
        assert set(event.msg) == {"policyId", "seq", "timestamp", "period", "tier"}, "nothing but the tier is signed"
        assert event.msg["timestamp"] >= cover.period_end(event.msg["period"])
        assert event.signer() == event.device
        by_device.setdefault(event.device, []).append(event.msg)
    assert len(by_device) == 3
    for msgs in by_device.values():
        assert [m["period"] for m in msgs] == list(range(10))
        assert [m["seq"] for m in msgs] == sorted(m["seq"] for m in msgs)
    mean = {
        device.activity_profile: sum(m["tier"] for m in by_device[device.address]) / 10
        for device in fleet.devices
        if device.activity_profile is not None
    }
    assert mean[ActivityProfile.SEDENTARY] < mean[ActivityProfile.ACTIVE] < mean[ActivityProfile.ATHLETE]
    assert mean[ActivityProfile.SEDENTARY] <= 0.5 and mean[ActivityProfile.ATHLETE] >= 2.5


def test_no_summary_while_the_first_period_runs(tmp_path: Path) -> None:
    cover = Cover(START, 7 * DAY, 52, WEEKLY_THRESHOLDS)
    plan = plan_events(
        load_fleet(_fleet(tmp_path, cover)), CONTRACTS, rate=20, duration=20, seed=1, start_time=START,
        counters="memory",
    )  # fmt: skip
    assert [e for e in plan if e.event_type == "activity"] == []


def test_the_week_has_a_rhythm_and_the_tier_rule_needs_both_thresholds() -> None:
    model = WearableModel("seed", ActivityProfile.ATHLETE)
    saturdays = [model.activity(d * DAY, (d + 1) * DAY)[0] for d in range(2, 700, 7)]
    sundays = [model.activity(d * DAY, (d + 1) * DAY)[0] for d in range(3, 700, 7)]
    assert sum(saturdays) > 2 * sum(sundays), "a long Saturday session, a rest day on Sunday"
    assert tier_of(20_000, 10, DAILY_THRESHOLDS) == 0, "steps alone are not enough"
    assert tier_of(8_000, 30, DAILY_THRESHOLDS) == 2
    assert tier_of(12_000, 43, DAILY_THRESHOLDS) == 3


def test_a_wearable_without_its_policy_is_refused_with_a_sentence(tmp_path: Path) -> None:
    path = _fleet(tmp_path, Cover(START, DAY, 3, DAILY_THRESHOLDS))
    document = json.loads(path.read_text())
    wearable = next(e for e in document["devices"] if e["kind"] == "wearable")
    del wearable["cover"]
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match="a wearable needs policyId and cover"):
        load_fleet(path)
    wearable["cover"] = Cover(START, DAY, 3, DAILY_THRESHOLDS).as_dict()
    wearable["activityProfile"] = "couch"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match="unknown activityProfile 'couch'"):
        load_fleet(path)
