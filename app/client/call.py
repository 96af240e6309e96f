"""`exocall call`: place one call and follow it, printing each change as it happens."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from app.calls.state import TERMINAL
from app.client.api import CallView, ExocallClient
from app.client.outcome import ExitCode
from app.db.models import CallStatus

POLL_SECONDS = 0.5


def place_and_follow(
    client: ExocallClient,
    body: dict[str, Any],
    *,
    timeout: float,
    follow: bool = True,
    out: Console,
    err: Console,
) -> ExitCode:
    """Place the call `body` describes, then print its changes until its status is final
    (`unknown` is not: a callback or reconciliation still resolves it; nor is `scheduled`: it
    waits for its time or its next attempt). Without `follow`, only how it was stored."""
    call = client.place_call(body)
    out.print(f"call {call.id} to {call.from_number}")
    if not follow:
        out.print(f"{0:6.1f}s  {describe_change(None, call)}")
        return ExitCode.OK
    started = time.monotonic()
    previous: CallView | None = None
    try:
        while True:
            if line := describe_change(previous, call):
                out.print(f"{time.monotonic() - started:6.1f}s  {line}")
            if call.status in TERMINAL:
                return (
                    ExitCode.OK if call.status == CallStatus.COMPLETED else ExitCode.NOT_COMPLETED
                )
            if time.monotonic() - started >= timeout:
                waiting = f" ({_next(call)})" if call.status == CallStatus.SCHEDULED else ""
                err.print(
                    f"still {call.status}{waiting} after {timeout:g} s: stopped following. The "
                    f"call goes on; look it up with GET /calls/{call.id}, or stop it with "
                    f"exocall cancel {call.id}"
                )
                return ExitCode.TIMED_OUT
            time.sleep(POLL_SECONDS)
            previous, call = call, client.get_call(call.id)
    except KeyboardInterrupt:
        err.print(f"stopped following; the call goes on: GET /calls/{call.id}")
        return ExitCode.INTERRUPTED


def describe_change(previous: CallView | None, call: CallView) -> str:
    """What is new about `call` since `previous`, on one line; empty if nothing is."""
    news = []
    made = len(call.attempts)
    if made > 1 and (previous is None or len(previous.attempts) != made):
        news.append(f"attempt {made}")
    if call.status == CallStatus.SCHEDULED and call.next_attempt_at:
        newly = previous is None or previous.status != call.status
        last = call.attempts[-1] if call.attempts else None
        if newly and last is not None and last.status in TERMINAL:  # and it is retried
            news.append(f"attempt {last.n} ended {last.status}")
        if newly or (previous is not None and previous.next_attempt_at != call.next_attempt_at):
            news.append(_next(call))
    if call.sid and (previous is None or previous.sid != call.sid):
        news.append(f"sid {call.sid}")
    if call.digits is not None and (previous is None or previous.digits != call.digits):
        news.append(f"keyed {call.digits}" if call.digits else "keyed nothing")
    if call.duration is not None and (previous is None or previous.duration != call.duration):
        news.append(f"duration {call.duration} s")
    if call.recording_url and (previous is None or previous.recording_url != call.recording_url):
        news.append(f"recording {call.recording_url}")
    if call.error and (previous is None or previous.error != call.error):
        news.append(describe_error(call))
    if not news and previous is not None and previous.status == call.status:
        return ""
    return f"{call.status:<12} {', '.join(news)}".rstrip()


def _next(call: CallView) -> str:
    """`attempt 2 at 2026-12-05 21:05:00+05:30`, in this machine's time zone."""
    assert call.next_attempt_at is not None
    at = call.next_attempt_at.astimezone().isoformat(sep=" ", timespec="seconds")
    return f"attempt {call.next_attempt} at {at}"


def describe_error(call: CallView) -> str:
    assert call.error is not None
    error = call.error
    answered = f", Exotel answered {error.exotel_status}" if error.exotel_status else ""
    return f"{error.message.strip().rstrip(';')} ({error.code}{answered})"


def cancel_call(client: ExocallClient, ref: str, *, out: Console) -> ExitCode:
    """`exocall cancel`: no attempt of the call after now."""
    call = client.cancel_call(ref)
    if call.status == CallStatus.CANCELED:
        out.print(f"call {call.id} canceled")
    else:  # an attempt is under way: its outcome is the call's
        out.print(
            f"call {call.id}: attempt {len(call.attempts)} is {call.status}; it ends with that "
            "attempt's outcome, and no attempt follows it"
        )
    return ExitCode.OK
