"""The call status state machine: the one function through which every status change passes
(dispatch results, status callbacks, reconciliation, stale claims), and the call as it sees it.

    queued ──> in-progress ──> completed | failed | busy | no-answer | canceled
      │  └──────────────────────────^
      ├──> rejected   (Exotel refused the request; nothing was dialled)
      └──> unknown    (we cannot tell whether Exotel dialled) ──> any status above but queued

A call on a policy (`app.calls.policy`) may wait, and may be dialled more than once:

    scheduled ──> queued            (its time came: `begin_attempt`)
    queued ──> scheduled            (a window, or the number's limit: `wait_until`)
    busy | no-answer | failed ──> scheduled   (its retry policy allows another attempt)
    queued | scheduled ──> expired | canceled | rejected   (`stop`: never dialled)

Each attempt is one `Calls/connect`, recorded in the call's `attempts`; the call's own `sid`,
durations and error are its latest attempt's. What Exotel says of an attempt that has ended,
once another is due or under way, is kept with that attempt (`apply_to_attempt`) and never moves
the call. No attempt follows `unknown`, a cancellation, or an attempt not retried on. What
Exotel charged for an attempt, which it says minutes after the end, is kept with the attempt
(`apply_price`); the call's `price` is the total of those known.

Exotel delivers callbacks late, twice and out of order (docs/exotel.md), so:
- a terminal status is absorbing: nothing changes it, and a later `in-progress` is stale;
- repeating an update changes nothing;
- an empty value (a blank `RecordingUrl`) never blanks a known one;
- `DateUpdated` only moves forward, and `answered_at` keeps the earliest answer heard of;
Hence any order and repetition of a call's updates ends in the same state.

Exotel's own times (`DateUpdated`, a Passthru's `CurrentTime`) are believed only where they can
be true (`believed`): one dated 9999 would freeze `date_updated` and pin the flow's latest
`digits` for good, one dated 1970 would be the earliest answer for good.

`unknown` is ours and provisional: it stops us from ever sending the call again, and any word from
Exotel about the call (a callback, call details) replaces it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from app.calls.policy import Retry, Window, next_attempt_at
from app.db.models import CallStatus, EventOutcome, FailureKind, RecordingStatus

EXOTEL_TERMINAL = frozenset(
    {
        CallStatus.COMPLETED,
        CallStatus.FAILED,
        CallStatus.BUSY,
        CallStatus.NO_ANSWER,
        CallStatus.CANCELED,
    }
)
TERMINAL = EXOTEL_TERMINAL | {CallStatus.REJECTED, CallStatus.EXPIRED}

# The order a call moves in; every terminal status is last.
_RANK = {
    CallStatus.SCHEDULED: 0,
    CallStatus.QUEUED: 0,
    CallStatus.UNKNOWN: 1,
    CallStatus.IN_PROGRESS: 2,
}
_TERMINAL_RANK = 3


def rank(status: CallStatus) -> int:
    return _RANK.get(status, _TERMINAL_RANK)


@dataclass(frozen=True)
class Failure:
    """Why a call is not, or not known to be, placed."""

    kind: FailureKind
    message: str
    exotel_status: int | None = None
    exotel_code: int | None = None


OPTED_OUT = Failure(FailureKind.NUMBER_OPTED_OUT, "the number is on the opt-out list")


@dataclass
class CallState:
    """The columns of a `call` that change once it is queued, named as the columns are: what the
    one write path (`app.calls.store`) reads, changes and writes back. Its id and creation time
    never change."""

    id: uuid.UUID
    created_at: datetime  # nothing Exotel says of the call happened before it
    sid: str | None
    status: CallStatus
    date_updated: datetime | None
    date_updated_raw: str | None
    recording_url: str | None
    duration: int | None
    conversation_duration: int | None
    on_call_duration: int | None
    answered_at: datetime | None
    error_code: FailureKind | None
    error_message: str | None
    error_exotel_status: int | None
    error_exotel_code: int | None
    error_at: datetime | None
    dispatched_at: datetime | None
    claimed_by: str | None
    claimed_at: datetime | None
    next_attempt_at: datetime | None
    send_tries: int
    # The policy, as the call was created with it: never changed.
    expires_at: datetime | None
    retry: dict[str, Any] | None
    window: dict[str, Any] | None
    max_attempts: int  # lowered when an attempt's outcome cannot be known
    canceled_at: datetime | None
    attempts: list[dict[str, Any]]  # each attempt made (`attempt_record`), oldest first
    price: Decimal | None
    next_lookup_at: datetime | None
    price_wait_from: datetime | None  # reconciliation's schedule for prices (`owed_prices`)
    event_sequence: int  # the `sequence` of the call's latest event (app.calls.outbox)
    updated_at: datetime  # set by the store when anything but the look-up schedule changed
    digits: str | None  # the latest input keyed in the flow (`apply_input`)
    flow: list[dict[str, Any]] | None  # each Passthru the flow passed, in time order
    # The recording's archive (`apply_recording`).
    recording_status: RecordingStatus | None
    recording_size: int | None
    recording_content_type: str | None
    recording_sha256: str | None
    recording_attempts: int
    recording_error: str | None
    recording_archived_at: datetime | None
    recording_deleted_at: datetime | None

    def look_up_later(self, now: datetime, *, first: float, longest: float) -> None:
        """When reconciliation is to look the call up next in Exotel's call details, if no
        callback ends it first. Bulk call details never list a call in progress, so a call not
        listed is still going on: the wait grows with the call's age (half of it), from `first`
        seconds after it was sent to at most `longest`. A call whose callbacks are all lost is
        therefore known at most `longest` seconds (and one round) after it ends, at the cost of
        one request per 100 calls a look-up."""
        started = self.dispatched_at or now
        wait = min(max((now - started).total_seconds() / 2, first), longest)
        self.next_lookup_at = now + timedelta(seconds=wait)

    def fail(self, failure: Failure | None, *, at: datetime) -> None:
        """Record why the call is not placed (None: it is, after all)."""
        self.error_code = failure.kind if failure else None
        self.error_message = failure.message if failure else None
        self.error_exotel_status = failure.exotel_status if failure else None
        self.error_exotel_code = failure.exotel_code if failure else None
        self.error_at = at if failure else None


# How far Exotel's clock may be from ours (and a replica's from the database's): a few minutes
# covers clocks that are kept at all; hours would let through a time written in another zone
# than IST, which is 5 h 30 off (docs/exotel.md, "Exotel's times").
CLOCK_SKEW = timedelta(minutes=5)


def believed(
    instant: datetime | None, *, call: CallState, heard_at: datetime | None
) -> datetime | None:
    """`instant`, a time on Exotel's clock about `call`, if it can be true: not before the call
    was created, not after what said it reached us (`heard_at`), give or take CLOCK_SKEW. Else
    None, as for no time at all: what said it is stored with it raw, and it is applied to
    nothing. The one rule for every time Exotel gives."""
    if instant is None or heard_at is None:
        return None
    if call.created_at - CLOCK_SKEW <= instant <= heard_at + CLOCK_SKEW:
        return instant
    return None


@dataclass(frozen=True)
class StatusUpdate:
    """What one source says about a call. None means "says nothing about it". `heard_at`: when
    it reached us, without which none of Exotel's times in it is believed."""

    status: CallStatus
    date_updated: datetime | None = None
    date_updated_raw: str | None = None
    recording_url: str | None = None
    duration: int | None = None
    conversation_duration: int | None = None
    on_call_duration: int | None = None
    answered: bool = False  # the customer answered (an `answered` event), at `date_updated`
    heard_at: datetime | None = None


_FILLED = ("recording_url", "duration", "conversation_duration", "on_call_duration")


def apply_update(call: CallState, update: StatusUpdate) -> EventOutcome:
    """Apply `update`, about the call's latest attempt, to `call` in place and say what it did.
    An attempt that ends in a status its retry policy names is followed by another, if one is
    left to make: the call is `scheduled` for it."""
    if not _may_move(call.status, update.status):
        # The status is behind, but that the customer answered is news whenever it comes.
        return EventOutcome.APPLIED if _take_answer(call, update) else EventOutcome.STALE
    moved = call.status != update.status
    call.status = update.status
    if moved and (call.status == CallStatus.IN_PROGRESS or call.status in EXOTEL_TERMINAL):
        # Exotel's own word that it placed the call: what kept us from knowing is past (an
        # `unknown` call's time-out, say), and the call is not shown as failed for it.
        call.error_code = call.error_message = call.error_at = None
        call.error_exotel_status = call.error_exotel_code = None
    if moved and call.status == CallStatus.UNKNOWN:
        # Never dial again what may have been dialled: this attempt is the last.
        call.max_attempts = min(call.max_attempts, len(call.attempts))
    changed = _merge(call, update, overwrite=moved)
    if call.status in TERMINAL and call.recording_url and call.recording_status is None:
        # A call that ended with a recording: the archive keeps it (`apply_recording`).
        call.recording_status = RecordingStatus.PENDING
    if moved and call.status in EXOTEL_TERMINAL:
        # The attempt ended when we heard of it (a replayed callback: when it first came).
        ended_at = update.heard_at or datetime.now(UTC)
        _attempt_ended(call, at=ended_at)
        if (at := _next_attempt_at(call, ended_at=ended_at)) is not None:
            record_attempt(call, at=ended_at)
            wait_until(call, at)
    return EventOutcome.APPLIED if moved or changed else EventOutcome.DUPLICATE


def _attempt_ended(call: CallState, *, at: datetime) -> None:
    """The latest attempt ended at `at`: its record says when, and what Exotel charged for it
    is owed, which it says minutes later (reconciliation asks: `wait_for_prices`)."""
    if not call.attempts:
        return
    _amend_attempt(call, len(call.attempts), ended_at=_iso(at))
    if call.sid:
        call.price_wait_from = min(call.price_wait_from or at, at)


def _next_attempt_at(call: CallState, *, ended_at: datetime) -> datetime | None:
    """When the call's next attempt is due after one that ended at `ended_at` in the call's
    status; None if none is left to make (or none could be made before the call expires)."""
    retry, made = Retry.of(call.retry), len(call.attempts)
    if call.status not in retry.on or made >= call.max_attempts or call.canceled_at:
        return None
    return next_attempt_at(
        ended_at + retry.wait_after(made),
        window=Window.of(call.window),
        expires_at=call.expires_at,
    )


def _may_move(current: CallStatus, new: CallStatus) -> bool:
    if current == new:
        return True
    if current in TERMINAL or current == CallStatus.SCHEDULED:
        # A scheduled call's latest attempt has ended (`apply_to_attempt` has what comes of it).
        return False
    if new == CallStatus.UNKNOWN:
        # Our own verdict on a dispatch: only a call still waiting for its answer takes it.
        return current == CallStatus.QUEUED
    if new == CallStatus.REJECTED:
        # Exotel's refusal, or its word that it has no such call, resolves `unknown` too.
        return current in (CallStatus.QUEUED, CallStatus.UNKNOWN)
    return rank(new) > rank(current)


# --- attempts -------------------------------------------------------------------------------


def begin_attempt(call: CallState, *, at: datetime) -> int:
    """The dispatch queue claimed the call at `at`: the number of the attempt to send now. A
    new attempt, unless the latest never reached Exotel (a 429, no connection made): the call's
    own columns are then the new attempt's."""
    call.status, call.next_attempt_at = CallStatus.QUEUED, None
    if call.attempts and call.attempts[-1]["status"] == CallStatus.QUEUED:
        return len(call.attempts)
    n = len(call.attempts) + 1
    call.attempts = [*call.attempts, {"n": n, "sid": None, "status": CallStatus.QUEUED.value}]
    if n > 1:
        call.sid = call.dispatched_at = call.answered_at = None
        call.date_updated = call.date_updated_raw = None
        call.duration = call.conversation_duration = call.on_call_duration = None
        call.send_tries, call.next_lookup_at = 0, None
        call.fail(None, at=at)
    return n


def wait_until(call: CallState, at: datetime) -> None:
    """The call waits, `scheduled`, for `at`: its time, a window, its number's limit, or its
    next attempt."""
    call.status, call.next_attempt_at = CallStatus.SCHEDULED, at


def hold(call: CallState, *, now: datetime, earliest: datetime) -> bool:
    """Whether a call about to be dialled may not be now, and so waits for the first moment
    from `earliest` its window allows, or expires when none comes before its `expires_at`."""
    at = next_attempt_at(earliest, window=Window.of(call.window), expires_at=call.expires_at)
    if at is None:
        stop(call, CallStatus.EXPIRED, at=now)
        return True
    if at > now:
        wait_until(call, at)
        return True
    return False


def stop(
    call: CallState, status: CallStatus, *, at: datetime, failure: Failure | None = None
) -> EventOutcome:
    """End a call that waits (scheduled, or queued and not being sent) with nothing more
    dialled: `expired`, `canceled`, or `rejected` for `failure`."""
    if call.status not in (CallStatus.QUEUED, CallStatus.SCHEDULED):
        return EventOutcome.STALE
    if call.status == CallStatus.QUEUED and call.claimed_by:
        # Being sent: it may reach Exotel. A scheduled call still claimed is not: its
        # attempt's end came before Exotel's answer to the connect, which changes nothing.
        return EventOutcome.STALE
    call.status, call.next_attempt_at = status, None
    call.fail(failure, at=at)
    return EventOutcome.APPLIED


def cancel(call: CallState, *, at: datetime) -> bool:
    """Cancel the call: no attempt is made after now. One waiting ends `canceled` at once; one
    with an attempt under way ends with that attempt's outcome. False if it had ended."""
    if call.status in TERMINAL:
        return False
    call.canceled_at = call.canceled_at or at
    stop(call, CallStatus.CANCELED, at=at)
    return True


def attempt_of(call: CallState, sid: str | None) -> int:
    """The number of the call's attempt `sid` is of: the latest's when it is the call's own,
    or unknown yet."""
    for attempt in call.attempts:
        if sid and attempt["sid"] == sid:
            return int(attempt["n"])
    return len(call.attempts)


def is_latest_live(call: CallState, n: int) -> bool:
    """Whether the call's own columns are attempt `n`'s: it is the latest, and the call does
    not wait for another."""
    return n == len(call.attempts) and call.status != CallStatus.SCHEDULED


def accepted_attempt(call: CallState, n: int, *, at: datetime) -> None:
    """Exotel accepted attempt `n` (answered its `Calls/connect`) at `at`. Its callback may have
    ended the attempt before the answer came, and the call moved on: the attempt keeps when it
    was dispatched all the same."""
    if call.attempts[n - 1].get("dispatched_at") is None:
        _amend_attempt(call, n, dispatched_at=_iso(at))


def apply_to_attempt(call: CallState, n: int, update: StatusUpdate) -> EventOutcome:
    """What Exotel says of attempt `n`, which has ended while the call went on: kept with the
    attempt when it is the attempt's own status and fills what the attempt lacks. The call
    itself never moves for it."""
    if not 1 <= n <= len(call.attempts):
        return EventOutcome.STALE  # about no attempt made: a call scheduled before its first
    record = call.attempts[n - 1]
    if update.status != record["status"]:
        return EventOutcome.STALE
    if update.duration is None or record.get("duration") is not None:
        return EventOutcome.DUPLICATE
    _amend_attempt(call, n, duration=update.duration)
    return EventOutcome.APPLIED


def _amend_attempt(call: CallState, n: int, /, **facts: Any) -> None:
    """Add `facts` to attempt `n`'s record. A new list, never the old one changed: the store
    tells a change by comparing the two."""
    call.attempts = [
        *call.attempts[: n - 1],
        call.attempts[n - 1] | facts,
        *call.attempts[n:],
    ]


def record_attempt(call: CallState, *, at: datetime) -> None:
    """Bring the latest attempt's record up to date with the call's own columns (`at`: now,
    when it ended, if it has). Not once the call has moved on from it: waiting for another
    attempt, or ended by the policy after it."""
    if not call.attempts or call.status == CallStatus.SCHEDULED:
        return
    record = call.attempts[-1]
    if record["status"] in TERMINAL and record["status"] != call.status:
        return
    ended = call.status in TERMINAL
    error = None
    if call.error_code:
        error = {
            "code": call.error_code.value,
            "message": call.error_message or "",
            "exotel_status": call.error_exotel_status,
            "exotel_code": call.error_exotel_code,
        }
    updated = record | {
        "sid": call.sid,
        "status": call.status.value,
        "dispatched_at": _iso(call.dispatched_at),
        "ended_at": (record.get("ended_at") or _iso(at)) if ended else None,
        "duration": call.duration,
        "error": error,
    }
    if updated != record:
        _amend_attempt(call, len(call.attempts), **updated)


@dataclass(frozen=True)
class OwedPrice:
    """An attempt that ended without Exotel's price yet."""

    n: int
    sid: str
    ended_at: datetime


def owed_prices(
    attempts: list[dict[str, Any]], *, now: datetime, give_up: timedelta
) -> list[OwedPrice]:
    """The call's `attempts` that ended without a price, not so long ago (`give_up` after their
    end) that their price is given up on."""
    owed = []
    for attempt in attempts:
        if attempt.get("price") is not None or not attempt.get("sid"):
            continue
        ended_at = datetime.fromisoformat(attempt["ended_at"]) if attempt.get("ended_at") else None
        if ended_at is not None and now < ended_at + give_up:
            owed.append(OwedPrice(int(attempt["n"]), attempt["sid"], ended_at))
    return owed


def wait_for_prices(
    call: CallState, *, now: datetime, asked: set[str], delay: timedelta, give_up: timedelta
) -> None:
    """Reconciliation's next look-up of the call's prices, after it `asked` Exotel for these
    SIDs' now: each owed price is asked for `delay` after its attempt ended, then after
    half the attempt's age (never sooner than `delay`), until `give_up` after the end. The
    look-up is due `delay` after `price_wait_from` (None: nothing is owed)."""
    due = []
    for owed in owed_prices(call.attempts, now=now, give_up=give_up):
        if owed.sid in asked:
            at = now + max(delay, (now - owed.ended_at) / 2)
        else:  # ended since the round chose its calls
            at = owed.ended_at + delay
        if at < owed.ended_at + give_up:
            due.append(at)
    call.price_wait_from = min(due) - delay if due else None


def apply_price(call: CallState, n: int, price: Decimal) -> EventOutcome:
    """What Exotel charged for attempt `n`, which has ended: kept with the attempt, and the
    call's `price` is the total of its attempts' known prices. A price once known stays."""
    record = call.attempts[n - 1]
    if record["status"] not in TERMINAL:
        return EventOutcome.STALE
    if record.get("price") is not None:
        return EventOutcome.DUPLICATE
    # A string in JSON: a float would not keep Exotel's "0.600" exact.
    _amend_attempt(call, n, price=str(price))
    known = [Decimal(a["price"]) for a in call.attempts if a.get("price") is not None]
    call.price = sum(known, Decimal(0))
    return EventOutcome.APPLIED


def _iso(at: datetime | None) -> str | None:
    return at.astimezone(UTC).isoformat() if at else None


def _merge(call: CallState, update: StatusUpdate, *, overwrite: bool) -> bool:
    """Take the update's values: all it has when the status moved on (an `answered` event's zero
    durations give way to the terminal ones), only what the call lacks otherwise. Empty values
    never count. Says whether anything changed."""
    changed = _take_answer(call, update)
    date_updated = believed(update.date_updated, call=call, heard_at=update.heard_at)
    if date_updated and (call.date_updated is None or date_updated > call.date_updated):
        call.date_updated = date_updated
        call.date_updated_raw = update.date_updated_raw
        changed = True
    for name in _FILLED:
        value = getattr(update, name)
        if value is None or value == "" or value == getattr(call, name):
            continue
        if overwrite or getattr(call, name) is None:
            setattr(call, name, value)
            changed = True
    return changed


def _take_answer(call: CallState, update: StatusUpdate) -> bool:
    if not update.answered:
        return False
    # When the customer picked up: the event's own time, else when it reached us.
    answered_at = believed(update.date_updated, call=call, heard_at=update.heard_at)
    answered_at = answered_at or update.heard_at
    if answered_at is None or (call.answered_at is not None and call.answered_at <= answered_at):
        return False
    call.answered_at = answered_at
    return True


@dataclass(frozen=True)
class InputUpdate:
    """A flow's Passthru request: the flow passed a Passthru applet at `at` (Exotel's
    `CurrentTime`; when it reached us, `heard_at`, if it has none to believe), with what the
    customer keyed in the Gather before it (None: the request said nothing of digits).
    `request` tells the same request, repeated, from another."""

    at: datetime | None
    heard_at: datetime
    digits: str | None
    request: str


def apply_input(call: CallState, update: InputUpdate) -> EventOutcome:
    """Add the Passthru step to the call's flow, in time order, and take the digits of its
    latest step that carried some (an empty string: the customer keyed nothing). The same
    request twice (Exotel repeating it) is a duplicate. A call's status does not matter: what
    happened in its flow is news whenever it arrives."""
    flow = call.flow or []
    if any(step.get("request") == update.request for step in flow):
        return EventOutcome.DUPLICATE
    at = believed(update.at, call=call, heard_at=update.heard_at) or update.heard_at
    step = {
        "applet": "passthru",
        "at": at.astimezone(UTC).isoformat(),
        "digits": update.digits,
        "request": update.request,  # kept with the call, not shown in its resource
    }
    # A new list, never the old one changed: the store tells a change by comparing the two.
    call.flow = sorted([*flow, step], key=lambda s: s["at"])
    keyed = [s["digits"] for s in call.flow if s["digits"] is not None]
    call.digits = keyed[-1] if keyed else None
    return EventOutcome.APPLIED


@dataclass(frozen=True)
class RecordingUpdate:
    """What the archive did with a call's recording (`app.recordings.archive`): the bytes'
    facts come with the fetch that got them, `attempted` counts an attempt to archive, and
    `url` is the recording's URL as call details gave it afresh (its old one refused)."""

    status: RecordingStatus
    at: datetime
    attempted: bool = False
    error: str | None = None
    size: int | None = None
    content_type: str | None = None
    sha256: str | None = None
    url: str | None = None


# Where a recording may go from each status: `failed` may be tried again (a backfill);
# `expired` and `deleted` are final.
_RECORDING_MOVES: dict[RecordingStatus | None, frozenset[RecordingStatus]] = {
    None: frozenset({RecordingStatus.PENDING}),
    RecordingStatus.PENDING: frozenset(
        {
            RecordingStatus.PENDING,
            RecordingStatus.ARCHIVED,
            RecordingStatus.FAILED,
            RecordingStatus.EXPIRED,
        }
    ),
    RecordingStatus.FAILED: frozenset({RecordingStatus.PENDING}),
    RecordingStatus.ARCHIVED: frozenset({RecordingStatus.DELETED}),
    RecordingStatus.EXPIRED: frozenset(),
    RecordingStatus.DELETED: frozenset(),
}


def apply_recording(call: CallState, update: RecordingUpdate) -> EventOutcome:
    """Move the call's recording to `update.status`, if it may go there from where it is."""
    if call.recording_url is None or update.status not in _RECORDING_MOVES[call.recording_status]:
        return EventOutcome.STALE
    call.recording_status = update.status
    call.recording_attempts += update.attempted
    call.recording_error = update.error
    if update.url:
        call.recording_url = update.url
    if update.sha256 is not None:
        call.recording_size = update.size
        call.recording_content_type = update.content_type
        call.recording_sha256 = update.sha256
    if update.status == RecordingStatus.ARCHIVED:
        call.recording_archived_at = update.at
    elif update.status == RecordingStatus.DELETED:
        call.recording_deleted_at = update.at
    return EventOutcome.APPLIED
