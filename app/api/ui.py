"""`/ui`: a status page for the people who run exocall. Server-rendered HTML, read only, no
JavaScript; behind the internal API's keys.

Browsers cannot send a bearer token, so the pages also take HTTP Basic auth: any user name, and
one of `API_KEYS` as the password. Errors are the service's one JSON shape, as everywhere.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from app.api.deps import SessionDep, SettingsDep, require_page_access
from app.api.errors import ApiError
from app.calls import counts, queries, ratelimit
from app.calls.errors import CallNotFound
from app.calls.policy import Retry, Window
from app.calls.resource import AttemptOut
from app.calls.state import TERMINAL
from app.calls.waiting import Waiting, WaitReason, waiting
from app.db.clock import db_now
from app.db.models import Batch, Call, CallStatus, Receipt, RequestKind
from app.events import endpoints, feed
from app.exotel.passthru import parse_passthru
from app.exotel.wire import IST  # India has one zone, Asia/Kolkata: +05:30 all year
from app.logs import mask
from app.recordings.status import archive_status

RECENT_CALLS = 50
RECENT_BATCHES = 10
NEXT_SCHEDULED = 10
REFRESH_SECONDS = 10

STATUSES = list(CallStatus)  # declared in the order people read a call's life in
MEANINGS = {
    CallStatus.QUEUED: "stored, not yet sent to Exotel",
    CallStatus.SCHEDULED: "waiting for its time, window, number's limit or next attempt",
    CallStatus.IN_PROGRESS: "accepted by Exotel, not ended",
    CallStatus.COMPLETED: "answered and ended",
    CallStatus.BUSY: "the line was busy",
    CallStatus.NO_ANSWER: "rang, nobody answered",
    CallStatus.FAILED: "Exotel could not connect it",
    CallStatus.CANCELED: "canceled before it was answered, or by POST /calls/{id}/cancel",
    CallStatus.REJECTED: "refused, by Exotel or for an opted-out number: nothing was dialled",
    CallStatus.UNKNOWN: "Exotel may have dialled; never sent again",
    CallStatus.EXPIRED: "its expires_at passed before it could be dialled",
}
# Why a scheduled call waits (`app.calls.waiting`), as the pages say it.
WAIT_REASONS = {
    WaitReason.NOT_BEFORE: "its not_before",
    WaitReason.RETRY: "the retry interval",
    WaitReason.WINDOW: "its window to open",
    WaitReason.NUMBER_LIMIT: "the number's limit",
}
# Stacked bars: ended calls first, then those under way, then those waiting.
_BAR_ORDER = [
    *(status for status in STATUSES if status in TERMINAL),
    CallStatus.UNKNOWN,
    CallStatus.IN_PROGRESS,
    CallStatus.QUEUED,
    CallStatus.SCHEDULED,
]

# --- access ------------------------------------------------------------------------------


_NO_STORE = {"Cache-Control": "no-store"}


router = APIRouter(
    prefix="/ui", include_in_schema=False, dependencies=[Depends(require_page_access)]
)

# --- rendering ---------------------------------------------------------------------------

_TEMPLATES = Path(__file__).parent / "templates"
_CSS = (_TEMPLATES / "ui.css").read_text()
_CSS_HASH = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()

# The pages show personal data (numbers): no cache keeps them. The policy lets in the page's
# own inline stylesheet, by its hash, and the empty `data:` icon (which spares a request for
# /favicon.ico); no script at all, no fetch, no frame, no form.
PAGE_HEADERS = _NO_STORE | {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; img-src data:; "
        # The call page's player: the archive's recording (or the store's signed URL).
        "media-src 'self' https:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _ist(instant: datetime | None, *, precise: bool = False) -> Markup:
    """A timestamp in IST with its offset (`2026-11-27 02:06:33+05:30`), as a `<time>`;
    `precise` adds milliseconds, to tell apart what happened within a second."""
    if instant is None:
        return Markup('<span class="none">—</span>')
    local = instant.astimezone(IST)
    moment = local.strftime("%Y-%m-%d %H:%M:%S")
    if precise:
        moment += f".{local.microsecond // 1000:03d}"
    offset = local.isoformat()[-6:]  # +05:30
    return Markup('<time datetime="{}">{}<span class="offset">{}</span></time>').format(
        local.isoformat(), moment, offset
    )


def _duration(seconds: float) -> str:
    """`2 h 5 min`, `3 min 12 s`, `45 s`."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def _until(at: datetime, now: datetime) -> str:
    """`in 29 min 5 s`, or `due 12 s ago` once `at` has passed."""
    seconds = (at - now).total_seconds()
    return f"in {_duration(seconds)}" if seconds > 0 else f"due {_duration(-seconds)} ago"


def _interval(seconds: int) -> str:
    """`30 min`, `1 h 30 min`, `90 s` is `1 min 30 s`: a retry policy's wait, without zeros."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = ((hours, "h"), (minutes, "min"), (secs, "s"))
    return " ".join(f"{value} {unit}" for value, unit in parts if value) or "0 s"


def _price(value: Decimal | None) -> Markup | str:
    """What Exotel charged, in rupees (its account's currency), at least to the paisa."""
    if value is None:
        return Markup('<span class="none">—</span>')
    digits = f"{value:.4f}".rstrip("0")
    whole, _, fraction = digits.partition(".")
    return f"₹{whole}.{fraction.ljust(2, '0')}"


def _fields(payload: dict[str, Any]) -> str:
    return json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=True)


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_TEMPLATES),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(
    ist=_ist,
    masked=mask,
    duration=_duration,
    until=_until,
    interval=_interval,
    price=_price,
    count=lambda value: f"{value:,.0f}",
    seconds=lambda value: f"{value:g} s",
    fields=_fields,
)
_env.globals.update(css=Markup(_CSS), meanings=MEANINGS, reasons=WAIT_REASONS)  # noqa: S704 - our own stylesheet


def _page(template: str, *, now: datetime, **context: Any) -> HTMLResponse:
    html = _env.get_template(template).render(now=now, **context)
    return HTMLResponse(html, headers=PAGE_HEADERS)


@dataclass(frozen=True)
class Segment:
    """A status's part of a stacked bar, in percent of its width (SVG: no inline styles)."""

    status: str
    count: int
    x: float
    width: float


def bar(counts: Mapping[str, int], total: int) -> list[Segment]:
    segments: list[Segment] = []
    x = 0.0
    for status in _BAR_ORDER:
        count = counts.get(status, 0)
        if count and total:
            width = 100.0 * count / total
            segments.append(Segment(status, count, x, width))
            x += width
    return segments


# --- the status page ---------------------------------------------------------------------


@dataclass(frozen=True)
class BatchRow:
    id: uuid.UUID
    created_at: datetime
    size: int
    calls: int  # distinct: a key repeated within the batch is one call
    ended: int
    percent: int
    counts: list[tuple[str, int]]
    segments: list[Segment]


def batch_row(batch: Batch, counts: Mapping[str, int]) -> BatchRow:
    calls = sum(counts.values())
    ended = sum(count for status, count in counts.items() if status in TERMINAL)
    # Progress over the batch's distinct calls rather than its size, so that a batch whose
    # calls have all ended shows full even when it repeated an idempotency key.
    return BatchRow(
        id=batch.id,
        created_at=batch.created_at,
        size=batch.size,
        calls=calls,
        ended=ended,
        percent=round(100 * ended / calls) if calls else 0,
        counts=[(status, counts[status]) for status in STATUSES if counts.get(status)],
        segments=bar(counts, calls),
    )


@router.get("")
async def status_page(
    session: SessionDep,
    settings: SettingsDep,
    refresh: Annotated[int, Query(ge=0, le=3600)] = REFRESH_SECONDS,
) -> HTMLResponse:
    overview = await queries.overview(session)
    now = overview.now
    last_day = await counts.last_day(session, now=now)
    granted = await queries.exotel_requests_granted(
        session, within_seconds=settings.exotel.rate_window_seconds
    )
    batches = await queries.recent_batches(session, limit=RECENT_BATCHES)
    owed = await endpoints.backlogs(session)
    calls, _ = await queries.list_calls(session, limit=RECENT_CALLS)
    scheduled = await queries.schedule(session, now=now, limit=NEXT_SCHEDULED)
    oldest = overview.oldest_queued_at
    connects = granted.get("connect", 0)
    return _page(
        "status.html",
        now=now,
        refresh=refresh,
        statuses=STATUSES,
        all_time=overview.calls_by_status,
        all_time_bar=bar(overview.calls_by_status, sum(overview.calls_by_status.values())),
        last_day=last_day,
        queue_depth=overview.queue_depth,
        oldest_queued_at=oldest,
        queue_age=overview.oldest_queued_age_seconds if oldest else None,
        scheduled_count=overview.calls_by_status.get(CallStatus.SCHEDULED, 0),
        scheduled_due=scheduled.due,
        next_scheduled=[(call, waits(call)) for call in scheduled.soonest],
        connects=connects,
        lookups=granted.get("lookup", 0),
        rate_limit=settings.exotel.rate_limit,
        rate_window=settings.exotel.rate_window_seconds,
        rate_percent=min(100.0, 100.0 * connects / settings.exotel.rate_limit),
        paused_for=await ratelimit.paused_for(session),
        recordings=await archive_status(session),
        batches=[batch_row(batch, counts) for batch, counts in batches],
        calls=calls,
        recent_calls=RECENT_CALLS,
        endpoints=[
            (endpoint, owed.get(endpoint.id, endpoints.Backlog()))
            for endpoint in await endpoints.list_endpoints(session)
        ],
    )


def waits(call: Call) -> Waiting | None:
    """Why a scheduled call waits, and for which attempt; None for a call that does not."""
    if call.status != CallStatus.SCHEDULED or call.next_attempt_at is None:
        return None
    return waiting(
        next_attempt_at=call.next_attempt_at,
        not_before=call.not_before,
        retry=call.retry,
        window=call.window,
        attempts=call.attempts,
    )


# --- a call's page -----------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A line of a call's timeline: one of the call's milestones, or what was received about it
    (a status callback, a Passthru, Exotel's answer to its `Calls/connect` or to a look-up)."""

    at: datetime
    what: str
    detail: str = ""
    event: Receipt | None = None
    keyed: str | None = None  # a Passthru's digits, quotes stripped


# How each kind of received record is named in the timeline.
RECEIVED = {
    RequestKind.STATUS_CALLBACK: "status callback",
    RequestKind.PASSTHRU: "passthru",
    RequestKind.DISPATCH: "dispatch",
    RequestKind.LOOKUP: "look-up",
}


def timeline(call: Call, events: Sequence[Receipt]) -> list[Entry]:
    """The call's milestones merged by time among what was received about it, which keeps the
    order it was received in."""
    milestones = [Entry(call.created_at, "created", "stored as queued")]
    attempts = [AttemptOut.model_validate(record) for record in call.attempts]
    for attempt in attempts[:-1]:  # the latest's is the call's own
        if attempt.dispatched_at:
            detail = f"attempt {attempt.n} sent to Exotel"
            milestones.append(Entry(attempt.dispatched_at, "dispatched", detail))
    if call.dispatched_at:
        detail = f"attempt {len(attempts)} sent to Exotel" if len(attempts) > 1 else ""
        milestones.append(Entry(call.dispatched_at, "dispatched", detail or "sent to Exotel"))
    if call.canceled_at:
        detail = "POST /calls/{id}/cancel: no attempt is made after it"
        milestones.append(Entry(call.canceled_at, "cancel", detail))
    if call.answered_at:
        milestones.append(Entry(call.answered_at, "answered", "the customer picked up"))
    if call.error_code:
        detail = f"{call.error_code}: {call.error_message}" if call.error_message else ""
        milestones.append(
            Entry(call.error_at or call.updated_at, "error", detail or call.error_code)
        )
    milestones.sort(key=lambda entry: entry.at)
    received: Iterable[Entry] = (
        Entry(
            event.received_at,
            RECEIVED[event.kind],
            event=event,
            keyed=parse_passthru(event.payload).digits
            if event.kind == RequestKind.PASSTHRU
            else None,
        )
        for event in events
    )
    return list(heapq.merge(milestones, received, key=lambda entry: entry.at))


@router.get("/calls/{ref}")
async def call_page(ref: str, session: SessionDep) -> HTMLResponse:
    """One call, by our id or Exotel's SID: its details, whole number included (the key
    holder reads it through the API anyway), and its timeline."""
    try:
        call = await queries.find_call(session, ref)
    except CallNotFound as exc:
        raise ApiError(404, "call_not_found", str(exc), headers=PAGE_HEADERS) from None
    events = await queries.list_events(session, call_id=call.id)
    pushed = await feed.deliveries_of_call(session, call.id)
    recording = call.recording_url or ""
    return _page(
        "call.html",
        now=await db_now(session),
        call=call,
        attempts=[AttemptOut.model_validate(record) for record in call.attempts],
        retry=Retry.of(call.retry) if call.retry else None,
        window=Window.of(call.window),
        waits=waits(call),
        entries=timeline(call, events),
        pushed=pushed,
        # Only while the call can still change.
        refresh=0 if call.status in TERMINAL else REFRESH_SECONDS,
        # Exotel's word; linked only if it is a web address (never `javascript:`).
        recording_link=recording.startswith(("https://", "http://")),
        # An ambiguous answer that Exotel's word on the call has since settled.
        error_resolved=call.status
        not in (CallStatus.REJECTED, CallStatus.UNKNOWN, CallStatus.QUEUED, CallStatus.SCHEDULED),
    )
