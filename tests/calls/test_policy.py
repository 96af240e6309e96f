"""A call's policy on its own (`app.calls.policy`): the hours of a window, the next opening, a
number's rolling limit, and the retry's waits. Every time is passed in: no clock is read."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from app.calls.policy import (
    INDIA,
    NumberLimit,
    Retry,
    Window,
    next_attempt_at,
    retryable,
)
from app.config import ConfigurationError, Settings
from app.db.models import CallStatus

IST = ZoneInfo(INDIA)
NEW_YORK = ZoneInfo("America/New_York")
DUBAI = ZoneInfo("Asia/Dubai")


def ist(day: int, hour: int, minute: int = 0) -> datetime:
    """A time in December 2026, India's."""
    return datetime(2026, 12, day, hour, minute, tzinfo=IST)


# --- windows --------------------------------------------------------------------------------

DAYTIME = Window(time(9), time(21))


@pytest.mark.parametrize(
    ("at", "opens"),
    [
        (ist(7, 10), ist(7, 10)),  # inside: now
        (ist(7, 9), ist(7, 9)),  # the start is inside
        (ist(7, 20, 59), ist(7, 20, 59)),
        (ist(7, 7), ist(7, 9)),  # before it opens: today's opening
        (ist(7, 0), ist(7, 9)),
        (ist(7, 21), ist(8, 9)),  # the end is outside: tomorrow's opening
        (ist(7, 23, 30), ist(8, 9)),
    ],
)
def test_a_window_is_open_from_its_start_to_its_end(at: datetime, opens: datetime) -> None:
    assert DAYTIME.opens(at) == opens


def test_the_opening_is_the_same_instant_whatever_zone_the_time_is_given_in() -> None:
    at = ist(7, 22).astimezone(UTC)  # 16:30 UTC: closed in India
    opening = DAYTIME.opens(at)
    assert opening == ist(8, 9)
    assert opening.utcoffset() is not None  # aware


NIGHT = Window(time(21), time(6))  # past midnight


@pytest.mark.parametrize(
    ("at", "opens"),
    [
        (ist(7, 21), ist(7, 21)),
        (ist(7, 23, 59), ist(7, 23, 59)),
        (ist(8, 0), ist(8, 0)),
        (ist(8, 5, 59), ist(8, 5, 59)),
        (ist(8, 6), ist(8, 21)),  # its end: tonight's opening, not tomorrow's
        (ist(8, 12), ist(8, 21)),
        (ist(8, 20, 59), ist(8, 21)),
    ],
)
def test_a_window_that_ends_before_it_starts_runs_past_midnight(
    at: datetime, opens: datetime
) -> None:
    assert NIGHT.opens(at) == opens


def test_a_window_is_indias_unless_a_zone_is_named() -> None:
    assert Window(time(9), time(21)).timezone.key == "Asia/Kolkata"
    assert Window.parse("09:00-21:00").timezone.key == "Asia/Kolkata"
    assert Window.parse("09:00-21:00") == DAYTIME
    # 09:00 in India is 03:30 UTC.
    assert DAYTIME.opens(datetime(2026, 12, 7, 3, 0, tzinfo=UTC)) == datetime(
        2026, 12, 7, 3, 30, tzinfo=UTC
    )


def test_a_window_in_another_zone_opens_at_that_zones_hours() -> None:
    dubai = Window.parse("09:00-17:00 Asia/Dubai")
    assert dubai.timezone == DUBAI
    # 09:00 in India is 07:30 in Dubai: closed there, open at 09:00 Dubai (05:00 UTC).
    assert dubai.opens(ist(7, 9)) == datetime(2026, 12, 7, 5, 0, tzinfo=UTC)
    assert DAYTIME.opens(ist(7, 9)) == ist(7, 9)
    # 18:00 in Dubai: tomorrow's opening.
    assert dubai.opens(datetime(2026, 12, 7, 18, 0, tzinfo=DUBAI)) == datetime(
        2026, 12, 8, 9, 0, tzinfo=DUBAI
    )


# America/New_York springs forward on 8 March 2026: 02:00 EST becomes 03:00 EDT.
SPRING_FORWARD = datetime(2026, 3, 8, 7, 0, tzinfo=UTC)  # the instant of the change


def test_a_window_follows_daylight_saving() -> None:
    office = Window(time(9), time(17), NEW_YORK)
    saturday_evening = datetime(2026, 3, 7, 18, 0, tzinfo=NEW_YORK)  # EST, UTC-5
    # Sunday 09:00 is EDT, UTC-4: 13:00 UTC, not 14:00.
    assert office.opens(saturday_evening) == datetime(2026, 3, 8, 13, 0, tzinfo=UTC)
    # The Saturday before opened at 14:00 UTC.
    assert office.opens(datetime(2026, 3, 7, 5, 0, tzinfo=UTC)) == datetime(
        2026, 3, 7, 14, 0, tzinfo=UTC
    )


def test_an_opening_inside_the_daylight_saving_gap_is_read_forwards() -> None:
    early = Window(time(2, 30), time(5), NEW_YORK)
    one_am = SPRING_FORWARD - timedelta(hours=1)  # 01:00 EST
    opening = early.opens(one_am)
    # 02:30 never happens that night: read as clocks are, half an hour after the change,
    # which is 03:30 EDT, inside the window.
    assert opening == SPRING_FORWARD + timedelta(minutes=30)
    assert opening.astimezone(NEW_YORK).time() == time(3, 30)
    assert early.opens(opening) == opening  # and it is open then
    # After the change it is open at once, until 05:00 EDT (09:00 UTC).
    assert early.opens(SPRING_FORWARD) == SPRING_FORWARD
    assert early.opens(datetime(2026, 3, 8, 9, 0, tzinfo=UTC)) == datetime(
        2026, 3, 9, 6, 30, tzinfo=UTC
    )


clock_times = st.builds(time, st.integers(0, 23), st.integers(0, 59))
instants = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)
)


@given(
    clock_times,
    clock_times,
    st.sampled_from(["Asia/Kolkata", "Asia/Dubai", "UTC", "Asia/Kathmandu"]),
    instants,
)
def test_the_opening_is_the_first_moment_the_window_is_open(
    start: time, end: time, zone: str, at: datetime
) -> None:
    assume(start != end)
    window = Window(start, end, ZoneInfo(zone))
    opening = window.opens(at)
    local = opening.astimezone(window.timezone)
    assert at <= opening < at + timedelta(days=1)
    assert window.opens(opening) == opening  # open then
    if opening != at:  # closed at `at`: it opened at its start, and not a minute before
        assert local.time() == start
        assert window.opens(opening - timedelta(minutes=1)) == opening


@pytest.mark.parametrize("text", ["09:00-09:00", "00:00-00:00 Asia/Dubai"])
def test_a_window_that_starts_where_it_ends_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="start and end must differ"):
        Window(time(9), time(9))
    with pytest.raises(ValueError, match="start and end must differ"):
        Window.parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "9-21",
        "09:00",
        "09:00-24:00",
        "9:00-21:00",
        "09:00 21:00",
        "09:00-21:00 Mars/Olympus_Mons",
        "09:00-09:00",
        "09:60-21:00",
    ],
)
def test_a_calling_window_that_is_no_window_is_refused_naming_the_variable(text: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.load(env_file=None, CALLING_WINDOW=text)
    assert [variable for variable, _ in raised.value.problems] == ["CALLING_WINDOW"]


def test_the_calling_window_is_read_with_its_zone() -> None:
    assert Settings.load(env_file=None).dispatch.calling_window is None
    assert Settings.load(env_file=None, CALLING_WINDOW="").dispatch.calling_window is None
    india = Settings.load(env_file=None, CALLING_WINDOW="09:00-21:00").dispatch.calling_window
    assert india == DAYTIME
    dubai = Settings.load(env_file=None, CALLING_WINDOW="21:00-06:00 Asia/Dubai")
    assert dubai.dispatch.calling_window == Window(time(21), time(6), DUBAI)


def test_a_window_is_stored_and_read_back_as_it_was() -> None:
    night = Window.parse("21:00-06:00 America/New_York")
    assert night.as_json() == {"start": "21:00", "end": "06:00", "timezone": "America/New_York"}
    assert Window.of(night.as_json()) == night
    assert Window.of(None) is None


# --- the per-number limit -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [
        ("3/24h", 3, timedelta(hours=24)),
        ("1/1h", 1, timedelta(hours=1)),
        ("5/30m", 5, timedelta(minutes=30)),
        ("10/45s", 10, timedelta(seconds=45)),
        ("2/7d", 2, timedelta(days=7)),
        (" 3/24h ", 3, timedelta(hours=24)),
    ],
)
def test_a_number_limit_is_a_count_in_a_period(text: str, count: int, period: timedelta) -> None:
    assert NumberLimit.parse(text) == NumberLimit(count, period)


@pytest.mark.parametrize(
    "text", ["3", "3/24", "3/24x", "0/1h", "3/0h", "-1/1h", "three/1h", "3/1.5h", "3 / 24h", ""]
)
def test_a_number_limit_that_is_no_limit_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="COUNT/PERIOD"):
        NumberLimit.parse(text)


@pytest.mark.parametrize("text", ["3", "3/24x", "0/1h"])
def test_a_bad_number_attempt_limit_is_refused_naming_the_variable(text: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.load(env_file=None, NUMBER_ATTEMPT_LIMIT=text)
    assert [variable for variable, _ in raised.value.problems] == ["NUMBER_ATTEMPT_LIMIT"]
    limit = Settings.load(env_file=None, NUMBER_ATTEMPT_LIMIT="3/24h").dispatch.number_attempt_limit
    assert limit == NumberLimit(3, timedelta(hours=24))


NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def test_a_number_under_its_limit_is_free_now() -> None:
    limit = NumberLimit(3, 24 * HOUR)
    assert limit.free_at([], NOW) == NOW
    assert limit.free_at([NOW - 2 * HOUR, NOW - HOUR], NOW) == NOW


def test_one_more_request_waits_until_the_oldest_in_the_period_leaves_it() -> None:
    limit = NumberLimit(3, 24 * HOUR)
    sent = [NOW - 23 * HOUR, NOW - 2 * HOUR, NOW - HOUR]
    # The fourth request: when the first leaves the 24 hours, an hour from now.
    assert limit.free_at(sent, NOW) == NOW + HOUR
    # And from then on, the number is under its limit again.
    assert limit.free_at(sent, NOW + HOUR) == NOW + HOUR
    # Five sent (two over, another replica's): the one to leave is the third-newest.
    over = [NOW - 23 * HOUR, NOW - 20 * HOUR, NOW - 3 * HOUR, NOW - 2 * HOUR, NOW - HOUR]
    assert limit.free_at(over, NOW) == NOW + 21 * HOUR


def test_requests_older_than_the_period_do_not_count() -> None:
    limit = NumberLimit(3, 24 * HOUR)
    old = [NOW - 30 * HOUR, NOW - 24 * HOUR]  # a day ago exactly has left the period
    assert limit.free_at([*old, NOW - 2 * HOUR, NOW - HOUR], NOW) == NOW
    once = NumberLimit(1, HOUR)
    assert once.free_at([NOW - 10 * HOUR], NOW) == NOW
    assert once.free_at([NOW - timedelta(minutes=10)], NOW) == NOW + timedelta(minutes=50)


# --- retries --------------------------------------------------------------------------------


def test_the_last_interval_repeats() -> None:
    retry = Retry(max_attempts=6, on=frozenset({CallStatus.BUSY}), intervals=(60, 300))
    waits = [retry.wait_after(made).total_seconds() for made in range(1, 6)]
    assert waits == [60, 300, 300, 300, 300]
    assert Retry().wait_after(1) == timedelta(minutes=30)  # no intervals named


@pytest.mark.parametrize("status", ["busy", "no-answer", "failed"])
def test_busy_no_answer_and_failed_may_be_retried(status: str) -> None:
    assert retryable([status]) == {CallStatus(status)}


@pytest.mark.parametrize("status", ["completed", "canceled", "rejected", "unknown", "expired"])
def test_no_other_status_is_retried(status: str) -> None:
    with pytest.raises(ValueError, match="only busy, failed, no-answer are retried"):
        retryable(["busy", status])


def test_a_retry_is_stored_and_read_back_as_it_was() -> None:
    retry = Retry(3, frozenset({CallStatus.BUSY, CallStatus.NO_ANSWER}), (600, 3600))
    assert retry.as_json() == {
        "max_attempts": 3,
        "on": ["busy", "no-answer"],
        "intervals": [600, 3600],
    }
    assert Retry.of(retry.as_json()) == retry
    assert Retry.of(None) == Retry(max_attempts=1)


def test_the_next_attempt_is_inside_the_window_and_before_the_call_expires() -> None:
    evening = ist(7, 20, 55)
    assert next_attempt_at(evening, window=None, expires_at=None) == evening
    assert next_attempt_at(evening, window=DAYTIME, expires_at=None) == evening
    late = ist(7, 21, 5)
    assert next_attempt_at(late, window=DAYTIME, expires_at=None) == ist(8, 9)
    assert next_attempt_at(late, window=DAYTIME, expires_at=ist(8, 9, 1)) == ist(8, 9)
    # None when that is not before the call expires: no attempt can be made.
    assert next_attempt_at(late, window=DAYTIME, expires_at=ist(8, 9)) is None
    assert next_attempt_at(late, window=None, expires_at=late) is None
