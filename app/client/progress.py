"""What a running campaign shows: a live display on a terminal, plain lines otherwise (a log, a
pipe, CI), and a summary table at the end."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Protocol

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from app.calls.state import TERMINAL
from app.db.models import CallStatus

# The order statuses are shown in: waiting, under way, then how they ended.
STATUS_ORDER = [
    CallStatus.QUEUED,
    CallStatus.SCHEDULED,
    CallStatus.IN_PROGRESS,
    CallStatus.UNKNOWN,
    CallStatus.COMPLETED,
    CallStatus.BUSY,
    CallStatus.NO_ANSWER,
    CallStatus.FAILED,
    CallStatus.CANCELED,
    CallStatus.REJECTED,
    CallStatus.EXPIRED,
]
# Plain lines are for logs: one when something changed, at most this often.
PLAIN_LINE_SECONDS = 5.0


@dataclass(frozen=True)
class DispatchRate:
    last_minute: int  # calls sent in the last minute (since the start, in the first minute)
    full_minute: bool  # a whole minute was watched: `last_minute` is a rate, not a burst


class DispatchMeter:
    """Calls sent in the last minute, from the counts moving out of `queued`: the measure of the
    account's limit (so many calls a minute). Not extrapolated from a shorter time: the limit
    allows a burst, which would read as a rate far above it."""

    WINDOW_SECONDS = 60.0

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()  # (when, calls sent by then)

    def record(self, sent: int) -> DispatchRate:
        now = time.monotonic()
        self._samples.append((now, sent))
        # Keep one sample a minute old or older: the start of the last minute.
        while len(self._samples) > 1 and now - self._samples[1][0] >= self.WINDOW_SECONDS:
            self._samples.popleft()
        since, sent_then = self._samples[0]
        # Fewer than before when a call sent went back to wait for its next attempt.
        return DispatchRate(max(sent - sent_then, 0), now - since >= self.WINDOW_SECONDS)


@dataclass(frozen=True)
class Snapshot:
    """The campaign at one moment."""

    total: int  # rows in the file
    not_submitted: int
    counts: Mapping[str, int]  # the submitted calls by status
    rate: DispatchRate
    rate_limit: int  # the account's, per minute
    next_due: datetime | None = None  # when the soonest scheduled call is due

    @property
    def done(self) -> int:
        return sum(count for status, count in self.counts.items() if status in TERMINAL)

    @property
    def to_send(self) -> int:
        return self.not_submitted + self.counts.get(CallStatus.QUEUED, 0)

    @property
    def finished(self) -> bool:
        """Every row submitted, and every call in a final status (`scheduled` is not: the
        call waits for its time or its next attempt)."""
        final = all(status in TERMINAL for status, count in self.counts.items() if count)
        return final and not self.not_submitted

    def eta(self) -> timedelta | None:
        """When the last call will have been sent: at the rate of the last minute once there is
        one, at the account's limit until then. None when nothing moves."""
        per_minute = self.rate.last_minute if self.rate.full_minute else self.rate_limit
        if not self.to_send or not per_minute:
            return None
        return timedelta(seconds=round(self.to_send / per_minute * 60))


class CampaignDisplay(Protocol):
    def __enter__(self) -> CampaignDisplay: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    def show(self, snapshot: Snapshot) -> None: ...


def campaign_display(console: Console, title: str) -> CampaignDisplay:
    if console.is_terminal:
        return LiveDisplay(console, title)
    return PlainDisplay(console)


class LiveDisplay:
    """A bar, the counts and the rate, redrawn in place."""

    def __init__(self, console: Console, title: str) -> None:
        self._title = title
        self._live = Live(console=console, refresh_per_second=4)

    def __enter__(self) -> LiveDisplay:
        self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._live.__exit__(exc_type, exc, traceback)

    def show(self, snapshot: Snapshot) -> None:
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            self._title,
            ProgressBar(total=snapshot.total, completed=snapshot.done, width=40),
            f"{snapshot.done}/{snapshot.total} done",
        )
        self._live.update(Group(bar, describe_counts(snapshot), describe_rate(snapshot)))


class PlainDisplay:
    """A line when the counts changed, at most every PLAIN_LINE_SECONDS, and the last one."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._started = time.monotonic()
        self._printed_at = 0.0
        self._last_counts: Mapping[str, int] | None = None
        self._pending: Snapshot | None = None

    def __enter__(self) -> PlainDisplay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._pending is not None:
            self._print(self._pending)

    def show(self, snapshot: Snapshot) -> None:
        if snapshot.counts != self._last_counts:
            self._last_counts = snapshot.counts
            self._pending = snapshot
        due = time.monotonic() - self._printed_at >= PLAIN_LINE_SECONDS or snapshot.finished
        if self._pending is not None and due:
            self._print(self._pending)

    def _print(self, snapshot: Snapshot) -> None:
        elapsed = timedelta(seconds=round(time.monotonic() - self._started))
        self._console.print(
            f"[{elapsed}] {snapshot.done}/{snapshot.total} done; {describe_counts(snapshot)}; "
            f"{describe_rate(snapshot)}"
        )
        self._printed_at = time.monotonic()
        self._pending = None


def describe_counts(snapshot: Snapshot) -> str:
    parts = [f"not submitted {snapshot.not_submitted}"] if snapshot.not_submitted else []
    parts += [f"{status} {snapshot.counts[status]}" for status in _present(snapshot.counts)]
    if snapshot.next_due is not None:
        at = snapshot.next_due.astimezone().isoformat(sep=" ", timespec="seconds")
        parts = [
            f"{part} (the next due {at})" if part.startswith("scheduled ") else part
            for part in parts
        ]
    return ", ".join(parts) or "nothing submitted yet"


def describe_rate(snapshot: Snapshot) -> str:
    sent = f"sent {snapshot.rate.last_minute} in the last minute (limit {snapshot.rate_limit}/min)"
    eta = snapshot.eta()
    if not snapshot.to_send:
        later = " but the scheduled" if snapshot.counts.get(CallStatus.SCHEDULED) else ""
        return f"{sent}, all sent{later}"
    if eta is None:
        return f"{sent}, none lately: no estimate"
    return f"{sent}, all sent in ~{eta}"


def summary_table(snapshot: Snapshot, title: str) -> Table:
    """The campaign's calls by status."""
    table = Table(title=title, box=box.SIMPLE, title_justify="left")
    table.add_column("status")
    table.add_column("calls", justify="right")
    for status in _present(snapshot.counts):
        table.add_row(status, str(snapshot.counts[status]))
    if snapshot.not_submitted:
        table.add_row("not submitted", str(snapshot.not_submitted))
    table.add_section()
    table.add_row("total", str(snapshot.total))
    return table


def _present(counts: Mapping[str, int]) -> list[str]:
    """The statuses that have calls, in STATUS_ORDER (any status this CLI does not know last)."""
    known = [str(status) for status in STATUS_ORDER if counts.get(status)]
    return known + sorted(status for status in counts if status not in known and counts[status])
