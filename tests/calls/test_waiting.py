"""Why a scheduled call waits, told from its row: each way a call comes to wait leaves
`next_attempt_at` at a time only that way gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from app.calls.policy import Window
from app.calls.waiting import WaitReason, waiting

ENDED = datetime(2026, 12, 5, 10, 0, 7, 123456, tzinfo=UTC)  # 15:30:07 in Kolkata
RETRY = {"max_attempts": 3, "on": ["busy", "no-answer"], "intervals": [1800, 7200]}
# 09:00-16:00 in Kolkata: attempt 2's wait ends inside it, attempt 3's after it.
WINDOW = {"start": "09:00", "end": "16:00", "timezone": "Asia/Kolkata"}


def ended(n: int, status: str, at: datetime = ENDED) -> dict[str, Any]:
    return {"n": n, "sid": f"sid-{n}", "status": status, "ended_at": at.isoformat()}


def test_a_retry_is_due_its_interval_after_the_attempt_ended() -> None:
    told = waiting(
        next_attempt_at=ENDED + timedelta(seconds=1800),
        not_before=None,
        retry=RETRY,
        window=WINDOW,
        attempts=[ended(1, "busy")],
    )
    assert (told.attempt, told.reason, told.after) == (2, WaitReason.RETRY, "busy")


def test_a_retry_whose_wait_ends_outside_the_window_waits_for_it_to_open() -> None:
    due = ENDED + timedelta(seconds=1800) + timedelta(seconds=7200)
    window = Window.of(WINDOW)
    assert window is not None
    opens = window.opens(due)
    assert opens > due
    told = waiting(
        next_attempt_at=opens,
        not_before=None,
        retry=RETRY,
        window=WINDOW,
        attempts=[
            ended(1, "busy", ENDED - timedelta(hours=1)),
            ended(2, "no-answer", due - timedelta(seconds=7200)),
        ],
    )
    assert (told.attempt, told.reason, told.after) == (3, WaitReason.WINDOW, "no-answer")


def test_a_retry_put_off_otherwise_was_held_back_by_the_numbers_limit() -> None:
    told = waiting(
        next_attempt_at=ENDED + timedelta(seconds=1800, milliseconds=1),
        not_before=None,
        retry=RETRY,
        window=None,
        attempts=[ended(1, "busy")],
    )
    assert (told.attempt, told.reason, told.after) == (2, WaitReason.NUMBER_LIMIT, "busy")


def test_a_first_attempt_waits_for_its_not_before_its_window_or_its_numbers_limit() -> None:
    at = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)  # 09:30 in Kolkata
    assert (
        waiting(next_attempt_at=at, not_before=at, retry=None, window=WINDOW, attempts=[]).reason
        == WaitReason.NOT_BEFORE
    )
    opening = datetime(2026, 12, 6, 3, 30, tzinfo=UTC)  # 09:00 in Kolkata
    assert (
        waiting(
            next_attempt_at=opening, not_before=None, retry=None, window=WINDOW, attempts=[]
        ).reason
        == WaitReason.WINDOW
    )
    told = waiting(next_attempt_at=at, not_before=None, retry=None, window=WINDOW, attempts=[])
    assert (told.attempt, told.reason, told.after) == (1, WaitReason.NUMBER_LIMIT, None)


def test_an_attempt_that_never_reached_exotel_is_still_the_one_to_make() -> None:
    unsent = {"n": 2, "sid": None, "status": "queued"}
    told = waiting(
        next_attempt_at=datetime(2026, 12, 6, 3, 30, tzinfo=UTC),
        not_before=None,
        retry=RETRY,
        window=WINDOW,
        attempts=[ended(1, "busy"), unsent],
    )
    assert (told.attempt, told.reason) == (2, WaitReason.WINDOW)


def test_an_attempt_not_retried_on_its_status_is_no_retry() -> None:
    told = waiting(
        next_attempt_at=ENDED + timedelta(seconds=1800),
        not_before=None,
        retry=RETRY,
        window=None,
        attempts=[ended(1, "failed")],
    )
    assert told.reason != WaitReason.RETRY
