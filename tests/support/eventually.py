"""Waiting for a condition: the one way a test waits.

A test never sleeps for a fixed time and then looks: on a busy machine the thing it waits for
comes later than on an idle one. It asks `eventually()` instead, which polls (often at first,
then less) until the condition holds, and gives up only after a deadline generous enough that
only a real fault exceeds it. On timeout it fails saying what was awaited and the last value it
saw, so that the failure reads as what went wrong rather than as a time.

    call = await eventually(lambda: get_call(api, call_id), until=lambda c: c["sid"],
                            what="Exotel's SID for the call")
    eventually_sync(lambda: process.poll() is not None, what="the process exited")

`check` is called each time; its value is what `until` (by default, its truth) judges, and what
is returned once it holds. An exception from `check` is not swallowed: a broken check fails at
once, rather than at the deadline.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

# Generous: a condition that takes a second on an idle machine can take ten on a loaded one.
# A test that knows it waits for something slower (a lease, a backlog) says so with `within`.
DEADLINE_SECONDS = 30.0
_FIRST_PAUSE_SECONDS = 0.01
# Polls grow to this: often enough not to slow a test, rarely enough not to load the machine.
LONGEST_PAUSE_SECONDS = 0.2


class NotInTime(AssertionError):
    """The condition did not hold before the deadline."""


def _message(what: str, within: float, last: object) -> str:
    shown = repr(last)
    if len(shown) > 2000:
        shown = shown[:2000] + "..."
    return f"not within {within:g} s: {what} (last seen: {shown})"


async def eventually(
    check: Callable[[], Awaitable[T] | T],
    *,
    what: str,
    until: Callable[[T], object] = bool,
    within: float = DEADLINE_SECONDS,
    pause: float = LONGEST_PAUSE_SECONDS,
) -> T:
    """`check()` (awaited if it is a coroutine) once `until` holds of it; `NotInTime` after
    `within` seconds, naming `what` and the last value seen. `pause` bounds the time between
    two checks."""
    __tracebackhide__ = True
    deadline = time.monotonic() + within
    wait = min(_FIRST_PAUSE_SECONDS, pause)
    while True:
        value: Any = check()
        if inspect.isawaitable(value):
            value = await value
        if until(value):
            return value  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise NotInTime(_message(what, within, value))
        await asyncio.sleep(wait)
        wait = min(wait * 2, pause)


def eventually_sync(
    check: Callable[[], T],
    *,
    what: str,
    until: Callable[[T], object] = bool,
    within: float = DEADLINE_SECONDS,
    pause: float = LONGEST_PAUSE_SECONDS,
) -> T:
    """`eventually()` for code with no event loop (threads, fixtures, process start-up)."""
    __tracebackhide__ = True
    deadline = time.monotonic() + within
    wait = min(_FIRST_PAUSE_SECONDS, pause)
    while True:
        value = check()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise NotInTime(_message(what, within, value))
        time.sleep(wait)
        wait = min(wait * 2, pause)
