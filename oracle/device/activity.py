"""What a wearable computes on the device before it signs: the activity tier of a period, never the data itself.

A health policy fixes, per tier 1–3, the steps and the active minutes a period needs (non-decreasing with the tier);
the wearable counts both over the period and signs only the highest tier both reach (0 when tier 1's are not met).
Its own module, free of the SDK's keys and signing, because the CLI lists the profiles in --help, which imports no
web3 or eth_account (``sim.models`` gives each profile its week).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

#: the highest tier a summary can carry (the contract refuses more as ValueOutOfRange)
MAX_TIER = 3


class ActivityProfile(StrEnum):
    """How active a simulated wearable's wearer is."""

    SEDENTARY = "sedentary"
    ACTIVE = "active"
    ATHLETE = "athlete"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Per tier 1, 2, 3: the steps and active minutes a period needs (as the policy stores them)."""

    min_steps: tuple[int, int, int]
    min_active_minutes: tuple[int, int, int]


def tier_of(steps: int, active_minutes: int, thresholds: Thresholds) -> int:
    """The highest tier whose step and active-minute thresholds the period reached; 0 when none."""
    tier = 0
    for index, (need_steps, need_minutes) in enumerate(
        zip(thresholds.min_steps, thresholds.min_active_minutes, strict=True)
    ):
        if steps >= need_steps and active_minutes >= need_minutes:
            tier = index + 1
    return tier


def thresholds_of(min_steps: Sequence[int], min_active_minutes: Sequence[int]) -> Thresholds:
    """Thresholds from the policy's two arrays of three."""
    steps, minutes = tuple(int(s) for s in min_steps), tuple(int(m) for m in min_active_minutes)
    if len(steps) != MAX_TIER or len(minutes) != MAX_TIER:
        raise ValueError("a policy has step and active-minute thresholds for tiers 1, 2 and 3")
    return Thresholds((steps[0], steps[1], steps[2]), (minutes[0], minutes[1], minutes[2]))


@dataclass(frozen=True, slots=True)
class Cover:
    """What a wearable knows of its health policy: the calendar of its periods and the tier thresholds (read from the
    policy on chain when the device is paired with it)."""

    start: int  # the policy's acceptance time: period k is [start + k·length, start + (k+1)·length)
    period_length: int
    periods: int
    thresholds: Thresholds

    def period_end(self, period: int) -> int:
        return self.start + (period + 1) * self.period_length

    def finished(self, now: int) -> int:
        """How many periods are over at ``now``."""
        if now < self.start:
            return 0
        return min(self.periods, (now - self.start) // self.period_length)

    def as_dict(self) -> dict[str, object]:
        return {
            "start": self.start,
            "periodLength": self.period_length,
            "periods": self.periods,
            "minSteps": list(self.thresholds.min_steps),
            "minActiveMinutes": list(self.thresholds.min_active_minutes),
        }


#: a week's default thresholds per tier (steps, active minutes), and a day's (a demo's periods of seconds stand for
#: days of the wearer's week)
WEEK_S = 7 * 86_400
WEEKLY_THRESHOLDS = Thresholds((35_000, 56_000, 84_000), (150, 210, 300))
DAILY_THRESHOLDS = Thresholds((5_000, 8_000, 12_000), (21, 30, 43))
