"""A call's policy: when it may be dialled, how often, and at what hours. Pure: the state
machine (`app.calls.state`) and the dispatch queue's claim (`app.calls.dispatch`) apply it.

- `Retry`: attempts in all, the statuses that lead to another, and the waits between them.
- `Window`: the hours of the day attempts are made in, in a time zone (`Asia/Kolkata` unless
  named); one that ends before it starts runs past midnight (`21:00-06:00`).
- `NumberLimit`: at most `count` `Calls/connect` requests to one number in any `period`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.db.models import CallStatus

INDIA = "Asia/Kolkata"
MAX_ATTEMPTS = 10
RETRYABLE = frozenset({CallStatus.BUSY, CallStatus.NO_ANSWER, CallStatus.FAILED})
# The wait before attempt 2 when `retry` names no intervals.
DEFAULT_INTERVAL_SECONDS = 1800
MAX_INTERVAL_SECONDS = 7 * 86400


@dataclass(frozen=True)
class Retry:
    max_attempts: int = 1
    on: frozenset[CallStatus] = frozenset()
    intervals: tuple[int, ...] = (DEFAULT_INTERVAL_SECONDS,)

    @classmethod
    def of(cls, value: Mapping[str, Any] | None) -> Retry:
        """From a call's `retry` as stored (None: one attempt)."""
        if not value:
            return cls()
        return cls(
            max_attempts=value["max_attempts"],
            on=frozenset(CallStatus(status) for status in value["on"]),
            intervals=tuple(value["intervals"]),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "max_attempts": self.max_attempts,
            "on": sorted(self.on),
            "intervals": list(self.intervals),
        }

    def wait_after(self, made: int) -> timedelta:
        """The wait before the next attempt once `made` attempts were made (the last repeats)."""
        return timedelta(seconds=self.intervals[min(made, len(self.intervals)) - 1])


_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


def clock_time(text: str) -> time:
    """`HH:MM`, 24-hour."""
    match = _CLOCK.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not a time of day as HH:MM (24-hour)")
    return time(int(match[1]), int(match[2]))


def time_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone") from None


@dataclass(frozen=True)
class Window:
    start: time
    end: time
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo(INDIA))

    def __post_init__(self) -> None:
        if self.start == self.end:
            raise ValueError("the window's start and end must differ")

    @classmethod
    def parse(cls, text: str) -> Window:
        """`09:00-21:00`, optionally followed by a time zone: `09:00-21:00 Asia/Dubai`."""
        hours, _, zone = text.strip().partition(" ")
        start, dash, end = hours.partition("-")
        if not dash:
            raise ValueError(f"{text!r} is not a window as HH:MM-HH:MM [time zone]")
        return cls(clock_time(start), clock_time(end), time_zone(zone.strip() or INDIA))

    @classmethod
    def of(cls, value: Mapping[str, Any] | None) -> Window | None:
        """From a call's `window` as stored."""
        if not value:
            return None
        return cls(
            clock_time(value["start"]), clock_time(value["end"]), time_zone(value["timezone"])
        )

    def as_json(self) -> dict[str, str]:
        return {
            "start": self.start.strftime("%H:%M"),
            "end": self.end.strftime("%H:%M"),
            "timezone": self.timezone.key,
        }

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M} {self.timezone.key}"

    def opens(self, at: datetime) -> datetime:
        """`at` if it is inside the window, else the window's next opening (both aware)."""
        local = at.astimezone(self.timezone)
        if self._inside(local.time()):
            return at
        day = local.date()
        if local.time() >= self.start:  # past today's opening: tomorrow's
            day += timedelta(days=1)
        opening = datetime.combine(day, self.start, tzinfo=self.timezone)
        # An opening inside a daylight-saving gap is read forwards (fold=0), as clocks are.
        return opening.astimezone(UTC)

    def _inside(self, clock: time) -> bool:
        if self.start < self.end:
            return self.start <= clock < self.end
        return clock >= self.start or clock < self.end  # past midnight


_PERIOD = re.compile(r"([1-9][0-9]{0,5})/([1-9][0-9]{0,4})([smhd])")
# Seconds in each unit a period or an interval is written in (`24h`, `30m`).
SECONDS_IN = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class NumberLimit:
    count: int
    period: timedelta

    @classmethod
    def parse(cls, text: str) -> NumberLimit:
        """`3/24h`: 3 in any 24 hours (units s, m, h, d)."""
        match = _PERIOD.fullmatch(text.strip())
        if not match:
            raise ValueError(f"{text!r} is not a limit as COUNT/PERIOD, such as 3/24h")
        return cls(int(match[1]), timedelta(seconds=int(match[2]) * SECONDS_IN[match[3]]))

    def __str__(self) -> str:
        return f"{self.count}/{int(self.period.total_seconds())}s"

    def free_at(self, sent: Sequence[datetime], now: datetime) -> datetime:
        """When one more request to the number may be made, given when the requests to it
        were sent (oldest first): `now` while fewer than `count` fall in the period before it,
        else when enough of them have left it."""
        recent = [at for at in sent if at > now - self.period]
        if len(recent) < self.count:
            return now
        return recent[len(recent) - self.count] + self.period


def next_attempt_at(
    earliest: datetime, *, window: Window | None, expires_at: datetime | None
) -> datetime | None:
    """When an attempt may be made, `earliest` or later: inside the window, if any. None when
    that is not before `expires_at`: no attempt can be made."""
    at = window.opens(earliest) if window else earliest
    if expires_at is not None and at >= expires_at:
        return None
    return at


def retryable(statuses: Iterable[str]) -> frozenset[CallStatus]:
    """The statuses of `retry.on`, refusing any but `busy`, `no-answer` and `failed`."""
    for status in statuses:
        if status not in RETRYABLE:
            raise ValueError(f"{status!r}: only {', '.join(sorted(RETRYABLE))} are retried")
    return frozenset(CallStatus(status) for status in statuses)
