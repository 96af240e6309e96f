"""Why a `scheduled` call waits, as far as its row tells: the reason is not stored, but each
way a call comes to wait leaves `next_attempt_at` at a time only that way gives.

- `not_before`: the call's own `not_before` (which its window allowed);
- `retry`: an attempt ended in a status its retry policy names, and the next is due at the
  attempt's end plus the policy's interval;
- `window`: the time the call's window opens (after `not_before`, a retry's interval, or the
  number's limit, whichever put it outside);
- `number's limit`: none of the above, which leaves NUMBER_ATTEMPT_LIMIT, the one other thing
  that holds a call back at the dispatch claim.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.calls.policy import Retry, Window
from app.db.models import CallStatus


class WaitReason(enum.StrEnum):
    NOT_BEFORE = "not_before"
    RETRY = "retry"
    WINDOW = "window"
    NUMBER_LIMIT = "number's limit"


@dataclass(frozen=True)
class Waiting:
    attempt: int  # the attempt the call waits to make (`attempts[].n`)
    reason: WaitReason
    after: str | None  # the status the last attempt ended in, when it is retried


def waiting(
    *,
    next_attempt_at: datetime,
    not_before: datetime | None,
    retry: Mapping[str, Any] | None,
    window: Mapping[str, Any] | None,
    attempts: Sequence[Mapping[str, Any]],
) -> Waiting:
    """Why a scheduled call, as stored, waits until `next_attempt_at`, and for which attempt."""
    last = attempts[-1] if attempts else None
    opens = Window.of(window)
    if last is not None and last["status"] in Retry.of(retry).on and last.get("ended_at"):
        # The attempt ended and is retried: the wait is its interval, unless something else
        # put the next attempt later.
        ended = datetime.fromisoformat(last["ended_at"])
        due = ended + Retry.of(retry).wait_after(len(attempts))
        reason = _reason(next_attempt_at, due, WaitReason.RETRY, opens)
        return Waiting(len(attempts) + 1, reason, last["status"])
    # None made yet, or the latest never reached Exotel (a 429): that one is still to make.
    unsent = last is not None and last["status"] == CallStatus.QUEUED
    attempt = len(attempts) if unsent else len(attempts) + 1
    return Waiting(
        attempt, _reason(next_attempt_at, not_before, WaitReason.NOT_BEFORE, opens), None
    )


def _reason(
    at: datetime, due: datetime | None, because: WaitReason, window: Window | None
) -> WaitReason:
    if due is not None and at == due:
        return because
    if window is not None and window.opens(at) == at and _is_opening(at, window):
        return WaitReason.WINDOW
    return WaitReason.NUMBER_LIMIT


def _is_opening(at: datetime, window: Window) -> bool:
    local = at.astimezone(window.timezone)
    return local.time() == window.start
