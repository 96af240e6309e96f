"""Calls on a policy, attempt by attempt: the state machine's retries and cancellations, what
the one write path does with what Exotel says of each attempt, the dispatch claim's rules
(expiry, windows, the per-number limit, opt-outs), and `POST /calls`'s policy fields.

Time is the tests': callbacks say when they were heard, and time passes by moving every stored
time the claim compares with the database's clock back by as much (`Line.time_passes`). The
claim, the send and the recording of Exotel's answer are separate steps (`Line`), so that a
callback can come between them; Exotel is an `httpx.MockTransport` double that records every
request, so that what was never dialled is seen not to have been.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.calls import opt_outs, ratelimit
from app.calls.dispatch import Claimed, Dispatch, Stale, Verdict, connect_request
from app.calls.ingest import store_callbacks
from app.calls.placing import CallRequest, cancel, queue_calls
from app.calls.policy import NumberLimit, Retry, Window
from app.calls.received import ReceivedCallback
from app.calls.reconcile import reconcile_once
from app.calls.state import (
    CallState,
    StatusUpdate,
    apply_update,
    begin_attempt,
    record_attempt,
)
from app.calls.state import cancel as cancel_state
from app.calls.store import STATE_COLUMNS
from app.config import DispatchSettings, Settings
from app.db.models import (
    Call,
    CallStatus,
    Dial,
    Event,
    EventOutcome,
    ExotelRequest,
    Receipt,
    RequestKind,
    Throttle,
)
from app.exotel.client import ExotelClient
from app.exotel.wire import ExotelCall, format_exotel_time
from app.main import create_app
from tests.conftest import (
    FAKE_CALLER_ID,
    callback_path,
    make_settings,
    no_dns,
    place_body,
    serving,
)
from tests.support.eventually import eventually
from tests.support.exotel_double import (
    ExotelDouble,
    accepted,
    call_json,
    exotel_client_of,
    form_of,
    new_sid,
    rest_exception,
)

pytestmark = pytest.mark.anyio

IST = ZoneInfo("Asia/Kolkata")
NUMBER = "+919052161110"
BUSY_THRICE = Retry(3, frozenset({CallStatus.BUSY}), (600,))


# --- the state machine, on its own ----------------------------------------------------------

T0 = datetime(2026, 12, 7, 11, 0, tzinfo=IST)


def call_state(
    retry: Retry | None = None,
    *,
    window: Window | None = None,
    expires_at: datetime | None = None,
) -> CallState:
    """A new call, queued, as the store would read it."""
    values: dict[str, Any] = dict.fromkeys(STATE_COLUMNS)
    return CallState(
        **values
        | {
            "id": uuid.uuid4(),
            "created_at": T0 - timedelta(minutes=1),
            "status": CallStatus.QUEUED,
            "send_tries": 0,
            "expires_at": expires_at,
            "retry": retry.as_json() if retry else None,
            "window": window.as_json() if window else None,
            "max_attempts": retry.max_attempts if retry else 1,
            "attempts": [],
            "event_sequence": 0,
            "updated_at": T0,
            "recording_attempts": 0,
        }
    )


def claimed(call: CallState, at: datetime) -> int:
    """The dispatch claim took the call at `at`: the attempt it sends."""
    n = begin_attempt(call, at=at)
    call.claimed_by, call.claimed_at = "worker", at
    record_attempt(call, at=at)
    return n


def accepted_at(call: CallState, at: datetime) -> str:
    """Exotel accepted the claimed attempt at `at`: its SID."""
    call.claimed_by = call.claimed_at = None
    call.sid, call.dispatched_at = new_sid(), at
    apply_update(call, StatusUpdate(CallStatus.IN_PROGRESS, heard_at=at))
    record_attempt(call, at=at)
    return call.sid


def heard(call: CallState, status: CallStatus, at: datetime) -> EventOutcome:
    """A callback of the live attempt, heard at `at` (then the store's flush)."""
    outcome = apply_update(call, StatusUpdate(status, heard_at=at))
    record_attempt(call, at=at)
    return outcome


def dialled(call: CallState, at: datetime) -> str:
    claimed(call, at)
    return accepted_at(call, at)


def test_a_busy_attempt_is_followed_by_another_after_the_interval() -> None:
    call = call_state(BUSY_THRICE)
    sid = dialled(call, T0)
    ended = T0 + timedelta(seconds=20)

    assert heard(call, CallStatus.BUSY, ended) == EventOutcome.APPLIED

    assert call.status == CallStatus.SCHEDULED
    assert call.next_attempt_at == ended + timedelta(seconds=600)
    (attempt,) = call.attempts
    assert attempt["n"] == 1
    assert (attempt["sid"], attempt["status"]) == (sid, "busy")
    assert attempt["ended_at"] == ended.astimezone(UTC).isoformat()


def test_the_next_attempt_is_moved_into_the_window() -> None:
    daytime = Window(time(9), time(21))
    call = call_state(BUSY_THRICE, window=daytime)
    dialled(call, T0)
    heard(call, CallStatus.BUSY, datetime(2026, 12, 7, 20, 55, tzinfo=IST))
    # 21:05 is past the window's end: tomorrow's opening.
    assert (call.status, call.next_attempt_at) == (
        CallStatus.SCHEDULED,
        datetime(2026, 12, 8, 9, 0, tzinfo=IST),
    )


@pytest.mark.parametrize(
    ("window", "expires_at"),
    [
        (None, T0 + timedelta(seconds=600)),  # the interval would end as it expires
        (Window(time(9), time(11, 5)), T0 + timedelta(hours=12)),  # tomorrow's opening: too late
    ],
)
def test_a_busy_after_which_no_attempt_could_be_made_before_the_call_expires_is_final(
    window: Window | None, expires_at: datetime
) -> None:
    call = call_state(BUSY_THRICE, window=window, expires_at=expires_at)
    dialled(call, T0)
    heard(call, CallStatus.BUSY, T0)
    assert (call.status, call.next_attempt_at) == (CallStatus.BUSY, None)
    assert [a["status"] for a in call.attempts] == ["busy"]


@pytest.mark.parametrize("status", [CallStatus.NO_ANSWER, CallStatus.FAILED, CallStatus.COMPLETED])
def test_a_status_not_retried_on_is_final(status: CallStatus) -> None:
    call = call_state(BUSY_THRICE)
    dialled(call, T0)
    heard(call, status, T0 + timedelta(seconds=30))
    assert (call.status, call.next_attempt_at) == (status, None)
    assert [a["status"] for a in call.attempts] == [status.value]


def test_the_last_attempts_busy_is_final() -> None:
    call = call_state(Retry(2, frozenset({CallStatus.BUSY, CallStatus.NO_ANSWER}), (60,)))
    dialled(call, T0)
    heard(call, CallStatus.NO_ANSWER, T0)
    assert call.status == CallStatus.SCHEDULED
    later = T0 + timedelta(minutes=2)
    assert claimed(call, later) == 2
    accepted_at(call, later)
    heard(call, CallStatus.BUSY, later)
    assert (call.status, call.next_attempt_at) == (CallStatus.BUSY, None)
    assert [(a["n"], a["status"]) for a in call.attempts] == [(1, "no-answer"), (2, "busy")]


def test_no_attempt_follows_an_unknown_one_even_once_exotel_says_busy() -> None:
    call = call_state(BUSY_THRICE)
    claimed(call, T0)
    call.claimed_by = None
    apply_update(call, StatusUpdate(CallStatus.UNKNOWN))  # a time-out: it may have dialled
    assert call.max_attempts == 1
    heard(call, CallStatus.BUSY, T0 + timedelta(minutes=5))  # reconciliation, say
    assert (call.status, call.next_attempt_at) == (CallStatus.BUSY, None)


@pytest.mark.parametrize("attempt", [1, 2])
def test_a_rejected_attempt_is_never_retried(attempt: int) -> None:
    every = Retry(5, frozenset({CallStatus.BUSY, CallStatus.NO_ANSWER, CallStatus.FAILED}), (60,))
    call = call_state(every)
    if attempt == 2:
        dialled(call, T0)
        heard(call, CallStatus.FAILED, T0)
    assert claimed(call, T0 + timedelta(minutes=2)) == attempt
    call.claimed_by = None
    heard(call, CallStatus.REJECTED, T0 + timedelta(minutes=2))  # Exotel's 403 for DND, say
    assert (call.status, call.next_attempt_at) == (CallStatus.REJECTED, None)
    assert call.attempts[-1]["status"] == "rejected"


def test_cancelling_a_queued_call_not_claimed_ends_it() -> None:
    call = call_state(BUSY_THRICE)
    assert cancel_state(call, at=T0)
    assert (call.status, call.canceled_at) == (CallStatus.CANCELED, T0)
    assert call.attempts == []


def test_cancelling_a_scheduled_call_ends_it_and_keeps_the_ended_attempt_busy() -> None:
    call = call_state(BUSY_THRICE)
    dialled(call, T0)
    heard(call, CallStatus.BUSY, T0)
    assert cancel_state(call, at=T0 + timedelta(minutes=1))
    record_attempt(call, at=T0 + timedelta(minutes=1))
    assert (call.status, call.next_attempt_at) == (CallStatus.CANCELED, None)
    assert [a["status"] for a in call.attempts] == ["busy"]


@pytest.mark.parametrize("when", ["claimed", "in-progress"])
def test_cancelling_a_call_with_an_attempt_under_way_lets_its_outcome_be_final(
    when: str,
) -> None:
    call = call_state(BUSY_THRICE)
    claimed(call, T0)
    if when == "in-progress":
        accepted_at(call, T0)
    assert cancel_state(call, at=T0 + timedelta(seconds=5))
    assert call.status == (CallStatus.QUEUED if when == "claimed" else CallStatus.IN_PROGRESS)
    if when == "claimed":
        accepted_at(call, T0 + timedelta(seconds=6))
    heard(call, CallStatus.BUSY, T0 + timedelta(seconds=30))
    # Busy, with attempts left, and no further attempt.
    assert (call.status, call.next_attempt_at) == (CallStatus.BUSY, None)
    assert [a["status"] for a in call.attempts] == ["busy"]


@pytest.mark.parametrize("status", [CallStatus.COMPLETED, CallStatus.EXPIRED, CallStatus.REJECTED])
def test_a_final_call_cannot_be_cancelled(status: CallStatus) -> None:
    call = call_state(BUSY_THRICE)
    call.status = status
    assert not cancel_state(call, at=T0)
    assert (call.status, call.canceled_at) == (status, None)


# --- the queue, driven step by step -------------------------------------------------------------


@dataclass
class Line:
    """One dispatcher, driven by the test: it claims, sends, and records Exotel's answer when
    told to, and callbacks arrive in between, heard when the test says."""

    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    settings: Settings
    exotel: ExotelDouble
    dispatch_exotel: ExotelClient
    dispatch: Dispatch

    async def place(self, number: str = NUMBER, **policy: Any) -> uuid.UUID:
        request = CallRequest(number, app_id="926", caller_id=FAKE_CALLER_ID, **policy)
        async with self.sessionmaker() as session, session.begin():
            ((call, _),) = await queue_calls(
                session, requests=[request], settings=self.settings.exotel
            )
        return call.id

    def limit_numbers(self, limit: NumberLimit) -> None:
        """NUMBER_ATTEMPT_LIMIT from now on."""
        self.dispatch = dispatcher(
            self.settings.dispatch.model_copy(update={"number_attempt_limit": limit}),
            self.settings,
            self.dispatch_exotel,
            self.sessionmaker,
        )

    async def claim(self) -> Claimed | None:
        async with self.sessionmaker() as session, session.begin():
            claimed = await self.dispatch.claim(session, worker="worker", limit=1)
        assert isinstance(claimed, list), "the budget is never the limit here"
        return claimed[0] if claimed else None

    async def send(self, job: Claimed) -> ExotelCall | Verdict | Stale:
        return await self.dispatch.run(job)

    async def record(self, job: Claimed, result: ExotelCall | Verdict | Stale) -> None:
        async with self.sessionmaker() as session, session.begin():
            await self.dispatch.record(session, [(job, result)])

    async def dial(self, *answers: httpx.Response | Exception) -> Claimed:
        """Claim the due call, send it (Exotel answering `answers`, else accepting), record."""
        if answers:
            self.exotel.answer_connect(*answers)
        else:
            self.exotel.accept_connects()
        job = await self.claim()
        assert job is not None, "a call is due"
        await self.record(job, await self.send(job))
        return job

    async def callback(
        self,
        call_id: uuid.UUID | None,
        sid: str,
        status: str,
        *,
        heard_at: datetime | None = None,
        **fields: Any,
    ) -> EventOutcome:
        payload = {"CallSid": sid, "Status": status, "EventType": "terminal"} | fields
        received = ReceivedCallback(
            call_id, "POST", "application/json", payload, received_at=heard_at or now()
        )
        async with self.engine.connect() as connection:
            (stored,) = await store_callbacks(connection, [received])
        return stored.outcome

    async def call(self, call_id: uuid.UUID) -> Call:
        async with self.sessionmaker() as session:
            return await session.get_one(Call, call_id)

    async def cancel(self, call_id: uuid.UUID) -> Call:
        async with self.sessionmaker() as session, session.begin():
            return await cancel(session, await session.get_one(Call, call_id))

    async def time_passes(self, seconds: float) -> None:
        """As if `seconds` had passed: every stored time the claim compares with the database's
        clock moved back by as much (the clock of day, which windows read, does not move)."""
        back = func.make_interval(0, 0, 0, 0, 0, 0, seconds)
        async with self.sessionmaker() as session, session.begin():
            await session.execute(
                update(Call).values(
                    next_attempt_at=Call.next_attempt_at - back,
                    expires_at=Call.expires_at - back,
                    not_before=Call.not_before - back,
                )
            )
            await session.execute(update(Dial).values(sent_at=Dial.sent_at - back))
            await session.execute(update(ExotelRequest).values(at=ExotelRequest.at - back))
            await session.execute(
                update(Throttle).values(
                    paused_until=Throttle.paused_until - back,
                    lookup_wanted_until=Throttle.lookup_wanted_until - back,
                )
            )

    async def dials(self, call_id: uuid.UUID) -> list[Dial]:
        async with self.sessionmaker() as session:
            found = select(Dial).where(Dial.call_id == call_id).order_by(Dial.n)
            return list(await session.scalars(found))

    async def receipts(self, call_id: uuid.UUID) -> list[Receipt]:
        async with self.sessionmaker() as session:
            found = select(Receipt).where(Receipt.call_id == call_id).order_by(Receipt.id)
            return list(await session.scalars(found))

    async def events(self, call_id: uuid.UUID) -> list[tuple[str, dict[str, Any]]]:
        """The call's events: each one's type and the call as it carried it."""
        async with self.sessionmaker() as session:
            found = select(Event).where(Event.call_id == call_id).order_by(Event.sequence)
            return [
                (e.type, json.loads(e.body)["data"]["call"]) for e in await session.scalars(found)
            ]


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
async def exotel_client(exotel: ExotelDouble) -> AsyncIterator[ExotelClient]:
    async with exotel_client_of(exotel.handle) as client:
        yield client


@pytest.fixture
def line(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    exotel: ExotelDouble,
    exotel_client: ExotelClient,
) -> Line:
    return Line(
        engine,
        sessionmaker,
        settings,
        exotel,
        exotel_client,
        dispatcher(settings.dispatch, settings, exotel_client, sessionmaker),
    )


def dispatcher(
    dispatch: DispatchSettings,
    settings: Settings,
    exotel: ExotelClient,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> Dispatch:
    """The app's dispatcher, with a budget that is never the limit."""
    return Dispatch(
        sessionmaker=sessionmaker,
        exotel=exotel,
        settings=dispatch,
        budget=ratelimit.Budget(limit=1000, window=1, margin=10),
        connect=functools.partial(
            connect_request, exotel=settings.exotel, callbacks=settings.callbacks
        ),
        lookups=settings.reconcile,
    )


def sids(call: Call) -> list[str | None]:
    return [attempt["sid"] for attempt in call.attempts]


async def busy_once(line: Line, **policy: Any) -> tuple[uuid.UUID, str, datetime]:
    """A call whose first attempt was busy: its id, that attempt's SID, when it ended."""
    call_id = await line.place(retry=policy.pop("retry", BUSY_THRICE), **policy)
    await line.dial()
    sid = (await line.call(call_id)).sid
    assert sid is not None
    ended = now()
    assert await line.callback(call_id, sid, "busy", heard_at=ended) == EventOutcome.APPLIED
    return call_id, sid, ended


async def second_attempt_answered(line: Line) -> tuple[str, Claimed, ExotelCall | Verdict]:
    """After `busy_once`, its next attempt's time come: claimed and sent, Exotel's answer (its
    SID) in hand but not recorded yet."""
    await line.time_passes(601)
    second = new_sid()
    line.exotel.answer_connect(accepted(second))
    job = await line.claim()
    assert job is not None
    return second, job, await line.send(job)


# --- the state machine through the store ------------------------------------------------------


async def test_a_busy_attempt_is_scheduled_again_and_said_so(line: Line) -> None:
    call_id, sid, ended = await busy_once(line)

    call = await line.call(call_id)
    assert (call.status, call.sid) == (CallStatus.SCHEDULED, sid)
    assert call.next_attempt_at == ended + timedelta(seconds=600)
    (attempt,) = call.attempts
    assert (attempt["n"], attempt["sid"], attempt["status"]) == (1, sid, "busy")
    assert await line.claim() is None  # not due yet
    types = [kind for kind, _ in await line.events(call_id)]
    assert types == ["call.in_progress", "call.scheduled"]
    _, scheduled = (await line.events(call_id))[-1]
    assert scheduled["next_attempt_at"] == call.next_attempt_at.isoformat().replace("+00:00", "Z")
    assert [a["status"] for a in scheduled["attempts"]] == ["busy"]
    assert len(line.exotel.connects) == 1


async def test_each_attempt_is_a_connect_of_its_own_and_the_call_keeps_every_one(
    line: Line,
) -> None:
    call_id, first, _ = await busy_once(line)
    await line.time_passes(601)

    job = await line.dial()

    assert job.attempt == 2
    call = await line.call(call_id)
    assert call.status == CallStatus.IN_PROGRESS
    assert call.sid not in (None, first)
    assert sids(call) == [first, call.sid]
    assert [a["status"] for a in call.attempts] == ["busy", "in-progress"]
    assert [(d.n, d.sid, d.number) for d in await line.dials(call_id)] == [
        (1, first, NUMBER),
        (2, call.sid, NUMBER),
    ]
    assert len(line.exotel.connects) == 2
    assert {form_of(r)["From"] for r in line.exotel.connects} == {"09052161110"}


@pytest.mark.parametrize("found_by", ["url", "sid"])
@pytest.mark.parametrize("began", ["claimed", "answered"])
async def test_a_late_callback_for_an_earlier_attempt_changes_that_attempt_at_most(
    line: Line, found_by: str, began: str
) -> None:
    call_id, first, _ = await busy_once(line)
    await line.time_passes(601)
    if began == "answered":
        await line.dial()
        job = None
    else:  # claimed, Exotel's answer to its connect not yet recorded
        job = await line.claim()
        assert job is not None
        answer = await line.send(job)
    before = await line.call(call_id)
    named = call_id if found_by == "url" else None  # else found through the dial table

    # Exotel's busy again, with the duration it lacked: the attempt's, not the call's.
    late = await line.callback(named, first, "busy", Duration="7")
    # And a status attempt 1 never ended in: nothing at all.
    wrong = await line.callback(named, first, "completed", Duration="9")

    assert (late, wrong) == (EventOutcome.APPLIED, EventOutcome.STALE)
    call = await line.call(call_id)
    assert (call.status, call.sid, call.duration) == (before.status, before.sid, None)
    assert call.next_attempt_at is None
    assert [(a["status"], a["duration"]) for a in call.attempts] == [
        ("busy", 7),
        (before.status.value, None),
    ]
    # A late fact of an ended attempt is no status of the call: no event said the call moved.
    moved = ["call.in_progress", "call.scheduled"]
    assert [kind for kind, _ in await line.events(call_id)] == moved + (
        ["call.in_progress"] if began == "answered" else []
    )
    callbacks = [r for r in await line.receipts(call_id) if r.kind == RequestKind.STATUS_CALLBACK]
    assert [(r.sid, r.attempt, r.outcome) for r in callbacks[-2:]] == [
        (first, 1, EventOutcome.APPLIED),
        (first, 1, EventOutcome.STALE),
    ]
    if job is not None:  # and attempt 2 goes on as if nothing had come
        await line.record(job, answer)
        call = await line.call(call_id)
        assert call.status == CallStatus.IN_PROGRESS
        assert [(a["sid"], a["status"]) for a in call.attempts] == [
            (first, "busy"),
            (call.sid, "in-progress"),
        ]


@pytest.mark.parametrize(("status", "then"), [("completed", "completed"), ("busy", "scheduled")])
async def test_a_callback_before_exotels_answer_is_the_attempts_and_the_answer_is_stale(
    line: Line, status: str, then: str
) -> None:
    call_id, first, _ = await busy_once(line)
    second, job, answer = await second_attempt_answered(line)

    assert await line.callback(call_id, second, status) == EventOutcome.APPLIED
    await line.record(job, answer)

    call = await line.call(call_id)
    assert (call.status, call.claimed_by) == (CallStatus(then), None)
    assert [(a["n"], a["sid"], a["status"]) for a in call.attempts] == [
        (1, first, "busy"),
        (2, second, status),
    ]
    *_, early, late = await line.receipts(call_id)
    assert (early.kind, early.sid, early.attempt) == (RequestKind.STATUS_CALLBACK, second, 2)
    assert (late.kind, late.sid, late.attempt, late.outcome) == (
        RequestKind.DISPATCH,
        second,
        2,
        EventOutcome.STALE,
    )
    assert (await line.dials(call_id))[1].sid == second


async def test_a_claim_lost_after_an_early_in_progress_callback_is_looked_up_later(
    line: Line,
) -> None:
    """Exotel's answer never recorded (the replica died), but its callback said the attempt is
    under way: the call is neither sent again nor forgotten. Reconciliation looks it up."""
    call_id = await line.place()
    sid = new_sid()
    line.exotel.answer_connect(accepted(sid))
    job = await line.claim()
    assert job is not None
    assert await line.callback(call_id, sid, "in-progress") == EventOutcome.APPLIED

    async with line.sessionmaker() as session, session.begin():
        await line.dispatch.lost(session, [call_id])

    call = await line.call(call_id)
    assert (call.status, call.claimed_by, call.sid) == (CallStatus.IN_PROGRESS, None, sid)
    assert call.dispatched_at is not None
    assert call.next_lookup_at is not None


async def test_a_callback_naming_no_call_before_exotels_answer_is_the_attempts_once_known(
    line: Line,
) -> None:
    """Sent to the account's callback URL, it names the call by a SID nobody has yet: kept,
    and applied to attempt 2 once Exotel's answer tells whose SID it is."""
    call_id, first, _ = await busy_once(line)
    second, job, answer = await second_attempt_answered(line)

    assert await line.callback(None, second, "busy") == EventOutcome.UNKNOWN_SID
    await line.record(job, answer)

    call = await line.call(call_id)
    assert (call.status, call.sid) == (CallStatus.SCHEDULED, second)
    assert [(a["sid"], a["status"]) for a in call.attempts] == [(first, "busy"), (second, "busy")]
    orphan = next(r for r in await line.receipts(call_id) if r.sid == second and r.status)
    assert (orphan.attempt, orphan.outcome) == (2, EventOutcome.APPLIED)


async def test_every_record_of_a_call_says_its_attempt_and_an_earlier_sid_finds_the_call(
    line: Line, settings: Settings
) -> None:
    call_id, first, _ = await busy_once(line)
    await line.time_passes(601)
    await line.dial()
    second = (await line.call(call_id)).sid
    assert second is not None
    await line.callback(call_id, second, "completed", Duration="40")

    by_sid = {first: 1, second: 2}
    receipts = await line.receipts(call_id)
    assert [(r.kind, r.attempt) for r in receipts] == [
        (RequestKind.DISPATCH, 1),
        (RequestKind.STATUS_CALLBACK, 1),
        (RequestKind.DISPATCH, 2),
        (RequestKind.STATUS_CALLBACK, 2),
    ]
    assert all(by_sid[r.sid] == r.attempt for r in receipts if r.sid)

    app = create_app(
        settings, exotel_transport=httpx.MockTransport(line.exotel.handle), resolver=no_dns
    )
    async with serving(app) as api:
        for sid in (first, second, str(call_id)):
            found = await api.get(f"/calls/{sid}")
            assert found.status_code == 200, sid
            assert (found.json()["id"], found.json()["sid"]) == (str(call_id), second)
        assert [a["sid"] for a in found.json()["attempts"]] == [first, second]
        events = (await api.get(f"/calls/{first}/events")).json()
        assert [(e["sid"], e["attempt"]) for e in events] == [
            (first, 1),
            (first, 1),
            (second, 2),
            (second, 2),
        ]


async def test_no_attempt_follows_an_unknown_one_even_when_reconciliation_finds_it_busy(
    line: Line, settings: Settings, exotel_client: ExotelClient
) -> None:
    call_id = await line.place(retry=BUSY_THRICE)
    await line.dial(httpx.ReadTimeout("no answer"))
    call = await line.call(call_id)
    assert (call.status, call.max_attempts) == (CallStatus.UNKNOWN, 1)
    assert call.dispatched_at is not None
    sid = new_sid()
    dialled_at = format_exotel_time(call.dispatched_at + timedelta(seconds=2))
    line.exotel.listed = [
        dict(call_json(sid, "busy", DateCreated=dialled_at, DateUpdated=dialled_at)["Call"])
    ]

    repairs = await reconcile_once(
        sessionmaker=line.sessionmaker,
        exotel=exotel_client,
        settings=settings.reconcile,
        budget=ratelimit.Budget(limit=10, window=60, margin=10),
    )

    assert repairs.repaired == 1
    call = await line.call(call_id)
    assert (call.status, call.sid, call.next_attempt_at) == (CallStatus.BUSY, sid, None)
    assert [(a["sid"], a["status"]) for a in call.attempts] == [(sid, "busy")]
    await line.time_passes(3600)
    assert await line.claim() is None
    assert len(line.exotel.connects) == 1


async def test_an_unknown_attempt_found_by_its_number_is_never_taken_for_an_earlier_one(
    line: Line, settings: Settings, exotel_client: ExotelClient
) -> None:
    """Looked for by its number, an `unknown` attempt 2 finds attempt 1's call as well: that
    one is the call's already, and is not attempt 2's."""
    call_id, first, _ = await busy_once(line)
    await line.time_passes(601)
    await line.dial(httpx.ReadTimeout("no answer"))
    call = await line.call(call_id)
    assert (call.status, call.sid) == (CallStatus.UNKNOWN, None)
    assert call.dispatched_at is not None
    second = new_sid()
    near = format_exotel_time(call.dispatched_at)
    line.exotel.listed = [
        dict(call_json(sid, status, DateCreated=near, DateUpdated=near)["Call"])
        for sid, status in ((first, "busy"), (second, "completed"))
    ]

    await reconcile_once(
        sessionmaker=line.sessionmaker,
        exotel=exotel_client,
        settings=settings.reconcile,
        budget=ratelimit.Budget(limit=10, window=60, margin=10),
    )

    call = await line.call(call_id)
    assert (call.status, call.sid) == (CallStatus.COMPLETED, second)
    assert [(a["sid"], a["status"]) for a in call.attempts] == [
        (first, "busy"),
        (second, "completed"),
    ]
    assert [(d.n, d.sid) for d in await line.dials(call_id)] == [(1, first), (2, second)]


async def test_a_refusal_for_dnd_is_never_retried(line: Line) -> None:
    every = Retry(3, frozenset({CallStatus.BUSY, CallStatus.NO_ANSWER, CallStatus.FAILED}), (60,))
    call_id = await line.place(retry=every)
    await line.dial(rest_exception(403, "Call cannot be made because of TRAI NDNC regulations"))

    call = await line.call(call_id)
    assert (call.status, call.next_attempt_at) == (CallStatus.REJECTED, None)
    assert call.error_exotel_status == 403
    assert [a["status"] for a in call.attempts] == ["rejected"]
    await line.time_passes(3600)
    assert await line.claim() is None
    assert len(line.exotel.connects) == 1


# --- cancelling -----------------------------------------------------------------------------


async def test_cancelling_a_queued_call_ends_it_undialled(line: Line) -> None:
    call_id = await line.place(retry=BUSY_THRICE)
    call = await line.cancel(call_id)
    assert (call.status, call.attempts) == (CallStatus.CANCELED, [])
    assert call.canceled_at is not None
    assert await line.claim() is None
    assert line.exotel.connects == []


async def test_cancelling_a_scheduled_call_ends_it_and_its_attempt_stays_busy(
    line: Line,
) -> None:
    call_id, first, _ = await busy_once(line)
    call = await line.cancel(call_id)
    assert (call.status, call.next_attempt_at) == (CallStatus.CANCELED, None)
    assert [(a["sid"], a["status"]) for a in call.attempts] == [(first, "busy")]
    await line.time_passes(601)
    assert await line.claim() is None
    assert len(line.exotel.connects) == 1
    assert [kind for kind, _ in await line.events(call_id)][-1] == "call.canceled"


async def test_cancelling_a_call_being_sent_lets_its_attempt_end_with_no_further_one(
    line: Line,
) -> None:
    call_id = await line.place(retry=BUSY_THRICE)
    job = await line.claim()
    assert job is not None

    call = await line.cancel(call_id)  # while Calls/connect is on its way
    assert (call.status, call.claimed_by) == (CallStatus.QUEUED, "worker")
    assert call.canceled_at is not None
    await line.record(job, await line.send(job))
    sid = (await line.call(call_id)).sid
    assert sid is not None
    await line.callback(call_id, sid, "busy")

    call = await line.call(call_id)
    assert (call.status, call.next_attempt_at) == (CallStatus.BUSY, None)
    assert [a["status"] for a in call.attempts] == ["busy"]


async def test_cancelling_a_call_whose_send_certainly_failed_ends_it_canceled(
    line: Line,
) -> None:
    call_id = await line.place(retry=BUSY_THRICE)
    line.exotel.answer_connect(rest_exception(429, "Too Many Requests"))
    job = await line.claim()
    assert job is not None
    await line.cancel(call_id)
    await line.record(job, await line.send(job))  # a 429: nobody was dialled

    call = await line.call(call_id)
    assert (call.status, call.next_attempt_at, call.claimed_by) == (CallStatus.CANCELED, None, None)
    await line.time_passes(3600)
    assert await line.claim() is None
    assert len(line.exotel.connects) == 1


async def test_cancelling_a_call_whose_attempt_ended_before_exotels_answer_ends_it(
    line: Line,
) -> None:
    """The attempt's busy came before Exotel's answer to its connect: the call waits for its
    next attempt while the claim is held. Cancelled then, no attempt follows."""
    call_id, _, _ = await busy_once(line)
    second, job, answer = await second_attempt_answered(line)
    await line.callback(call_id, second, "busy")

    call = await line.cancel(call_id)
    await line.record(job, answer)

    call = await line.call(call_id)
    assert (call.status, call.next_attempt_at, call.claimed_by) == (CallStatus.CANCELED, None, None)
    assert [a["status"] for a in call.attempts] == ["busy", "busy"]
    late = (await line.receipts(call_id))[-1]
    assert (late.kind, late.attempt, late.outcome) == (RequestKind.DISPATCH, 2, EventOutcome.STALE)
    await line.time_passes(3600)
    assert await line.claim() is None
    assert len(line.exotel.connects) == 2


async def test_cancelling_a_call_in_progress_makes_its_outcome_final(line: Line) -> None:
    call_id = await line.place(retry=BUSY_THRICE)
    await line.dial()
    call = await line.cancel(call_id)
    assert call.status == CallStatus.IN_PROGRESS
    assert call.sid is not None

    await line.callback(call_id, call.sid, "busy")

    call = await line.call(call_id)
    assert (call.status, call.next_attempt_at) == (CallStatus.BUSY, None)
    assert await line.claim() is None
    assert len(line.exotel.connects) == 1


# --- the claim --------------------------------------------------------------------------------


async def test_a_call_whose_time_ran_out_while_scheduled_expires_at_the_claim(
    line: Line,
) -> None:
    call_id, first, _ = await busy_once(line, expires_at=now() + timedelta(hours=1))
    assert (await line.call(call_id)).status == CallStatus.SCHEDULED
    await line.time_passes(2 * 3600)  # due, and past expires_at

    assert await line.claim() is None

    call = await line.call(call_id)
    assert (call.status, call.next_attempt_at, call.sid) == (CallStatus.EXPIRED, None, first)
    assert [a["status"] for a in call.attempts] == ["busy"]
    assert [kind for kind, _ in await line.events(call_id)][-1] == "call.expired"
    assert len(line.exotel.connects) == 1


def closed_now() -> Window:
    """A window that opens two hours from now and stays open one hour (UTC's hours)."""
    opening = now() + timedelta(hours=2)
    return Window(
        time(opening.hour, opening.minute),
        time((opening.hour + 1) % 24, opening.minute),
        ZoneInfo("UTC"),
    )


async def test_a_call_due_outside_its_window_waits_for_its_opening(line: Line) -> None:
    call_id = await line.place(retry=BUSY_THRICE)
    window = closed_now()
    # Queued while its window was open, claimed after it closed: the database's clock cannot
    # be moved, so the window is.
    async with line.sessionmaker() as session, session.begin():
        await session.execute(
            update(Call).where(Call.id == call_id).values(window=window.as_json())
        )

    assert await line.claim() is None

    call = await line.call(call_id)
    assert call.status == CallStatus.SCHEDULED
    assert call.next_attempt_at == window.opens(now())
    assert call.attempts == []
    ((kind, said),) = await line.events(call_id)
    assert kind == "call.scheduled"
    assert said["next_attempt_at"] == call.next_attempt_at.isoformat().replace("+00:00", "Z")
    assert line.exotel.connects == []


async def test_a_numbers_limit_holds_back_another_call_to_it_until_the_first_dial_leaves(
    line: Line,
) -> None:
    line.limit_numbers(NumberLimit(1, timedelta(hours=1)))
    first = await line.place()
    second = await line.place()
    other = await line.place("+919052161111")
    await line.dial()  # the first
    (dial,) = await line.dials(first)

    job = await line.claim()  # the second waits; the other number's call goes

    assert job is not None
    assert job.call_id == other
    call = await line.call(second)
    assert call.status == CallStatus.SCHEDULED
    assert call.next_attempt_at == dial.sent_at + timedelta(hours=1)
    assert await line.claim() is None
    # A minute short of the hour: the test's own time (the clock runs on) stays inside it.
    await line.time_passes(3600 - 60)
    assert await line.claim() is None  # the first dial is still within the hour
    await line.time_passes(60)

    job = await line.claim()

    assert job is not None
    assert (job.call_id, job.attempt) == (second, 1)


async def test_the_limit_counts_every_attempt_and_ignores_dials_older_than_its_period(
    line: Line,
) -> None:
    line.limit_numbers(NumberLimit(2, timedelta(hours=1)))
    call_id, _, _ = await busy_once(line, retry=Retry(3, frozenset({CallStatus.BUSY}), (60,)))
    other = await line.place()
    await line.dial()  # the other call: two dials to the number within the hour
    await line.time_passes(61)  # the first call's next attempt is due

    assert await line.claim() is None
    assert (await line.call(call_id)).status == CallStatus.SCHEDULED
    await line.time_passes(3600)  # both dials are more than an hour old
    job = await line.claim()
    assert job is not None
    assert (job.call_id, job.attempt) == (call_id, 2)
    assert (await line.call(other)).status == CallStatus.IN_PROGRESS


async def test_a_send_that_never_dialled_does_not_count_against_its_own_number(
    line: Line,
) -> None:
    line.limit_numbers(NumberLimit(1, timedelta(hours=1)))
    call_id = await line.place()
    await line.dial(rest_exception(429, "Too Many Requests", headers={"Retry-After": "5"}))
    await line.time_passes(6)

    job = await line.claim()  # the same attempt, sent again: the one request to the number

    assert job is not None, (await line.call(call_id)).next_attempt_at
    assert (job.call_id, job.attempt) == (call_id, 1)
    assert len(await line.dials(call_id)) == 1


async def test_an_opt_out_while_a_retry_waits_rejects_the_call_undialled(line: Line) -> None:
    call_id, first, _ = await busy_once(line)
    async with line.sessionmaker() as session, session.begin():
        await opt_outs.add(session, number=NUMBER, reason="asked on the phone")
    await line.time_passes(601)

    assert await line.claim() is None

    call = await line.call(call_id)
    assert (call.status, call.error_code) == (CallStatus.REJECTED, "number_opted_out")
    assert [(a["sid"], a["status"]) for a in call.attempts] == [(first, "busy")]
    assert len(line.exotel.connects) == 1  # attempt 1's alone
    assert [kind for kind, _ in await line.events(call_id)][-1] == "call.rejected"


@pytest.mark.parametrize(
    ("refusal", "error"),
    [
        (
            rest_exception(429, "Too Many Requests", headers={"Retry-After": "5"}),
            "exotel_rate_limited",
        ),
        (httpx.ConnectError("connection refused"), "exotel_unreachable"),
    ],
)
async def test_a_send_that_never_dialled_is_sent_again_as_the_same_attempt(
    line: Line, refusal: httpx.Response | Exception, error: str
) -> None:
    call_id = await line.place(retry=BUSY_THRICE)
    limited = await line.dial(refusal)
    call = await line.call(call_id)
    assert (call.status, call.error_code) == (CallStatus.QUEUED, error)
    assert [(a["n"], a["status"]) for a in call.attempts] == [(1, "queued")]
    assert await line.claim() is None  # Exotel's pause, or the send's own back-off
    await line.time_passes(6)

    again = await line.dial()

    assert (limited.attempt, again.attempt) == (1, 1)
    call = await line.call(call_id)
    assert (call.status, call.error_code) == (CallStatus.IN_PROGRESS, None)
    assert [(a["n"], a["sid"], a["status"]) for a in call.attempts] == [
        (1, call.sid, "in-progress")
    ]
    assert [(d.n, d.sid) for d in await line.dials(call_id)] == [(1, call.sid)]
    assert [r.attempt for r in await line.receipts(call_id)] == [1, 1]
    assert len(line.exotel.connects) == 2


async def test_a_claim_whose_grant_went_stale_is_not_sent_and_is_due_again_as_it_was(
    line: Line,
) -> None:
    """A replica that stalls between its claim and the send (fresh for half the budget's
    10 s margin here) does not send on that grant: it could land in a window later grants
    filled. Nothing reaches Exotel, nothing of the call is spent, and the next claim sends it."""
    call_id = await line.place()
    line.exotel.accept_connects()
    job = await line.claim()
    assert job is not None
    stalled = replace(job, granted=job.granted - 6)

    assert await line.send(stalled) is Stale.GRANT
    await line.record(stalled, Stale.GRANT)

    assert line.exotel.connects == []
    call = await line.call(call_id)
    assert (call.status, call.claimed_by, call.send_tries, call.error_code) == (
        CallStatus.QUEUED,
        None,
        0,
        None,
    )
    again = await line.claim()
    assert again is not None
    assert again.attempt == job.attempt == 1
    await line.record(again, await line.send(again))
    assert (await line.call(call_id)).status == CallStatus.IN_PROGRESS
    assert len(line.exotel.connects) == 1


# --- POST /calls ------------------------------------------------------------------------------


def later(**delta: float) -> str:
    return (now() + timedelta(**delta)).isoformat()


async def test_a_call_not_before_a_time_to_come_is_scheduled_for_it(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    not_before = now().replace(microsecond=0) + timedelta(hours=2)
    body = place_body(not_before=not_before.isoformat(), retry=BUSY_THRICE.as_json())

    response = await client.post("/calls", json=body)

    assert response.status_code == 202, response.text
    call = response.json()
    assert (call["status"], call["sid"], call["attempts"]) == ("scheduled", None, [])
    assert datetime.fromisoformat(call["next_attempt_at"]) == not_before
    assert datetime.fromisoformat(call["not_before"]) == not_before
    assert call["retry"] == BUSY_THRICE.as_json()
    assert exotel.connects == []


@pytest.mark.parametrize("after", [0, -60])
async def test_an_expiry_not_after_not_before_is_refused_naming_it(
    client: httpx.AsyncClient, after: int
) -> None:
    not_before = now() + timedelta(hours=1)
    body = place_body(
        not_before=not_before.isoformat(),
        expires_at=(not_before + timedelta(seconds=after)).isoformat(),
    )
    response = await client.post("/calls", json=body)
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["error"]["details"]] == ["expires_at"]


@pytest.mark.parametrize(
    ("retry", "field"),
    [
        ({"max_attempts": 2, "on": ["completed"]}, "retry.on.0"),
        ({"max_attempts": 2, "on": ["busy", "canceled"]}, "retry.on.1"),
        ({"max_attempts": 0, "on": ["busy"]}, "retry.max_attempts"),
        ({"max_attempts": 11, "on": ["busy"]}, "retry.max_attempts"),
    ],
)
async def test_a_retry_outside_its_bounds_is_refused_naming_the_field(
    client: httpx.AsyncClient, exotel: ExotelDouble, retry: dict[str, Any], field: str
) -> None:
    response = await client.post("/calls", json=place_body(retry=retry))
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["error"]["details"]] == [field]
    assert exotel.connects == []


@pytest.mark.parametrize("attempts", [1, 10])
async def test_one_to_ten_attempts_are_taken(client: httpx.AsyncClient, attempts: int) -> None:
    retry = {"max_attempts": attempts, "on": ["busy"], "intervals": [60, 120]}
    response = await client.post("/calls", json=place_body(retry=retry))
    assert response.status_code == 201, response.text
    assert response.json()["retry"] == retry


async def test_a_window_that_starts_where_it_ends_is_refused(client: httpx.AsyncClient) -> None:
    window = {"start": "09:00", "end": "09:00"}
    response = await client.post("/calls", json=place_body(window=window))
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["error"]["details"]] == ["window"]


async def test_a_call_to_an_opted_out_number_is_refused_and_kept_rejected(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    opted = await client.post("/opt-outs", json={"number": "09052161110"})
    assert opted.status_code == 201

    response = await client.post("/calls", json=place_body("+91 90521 61110"))

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "number_opted_out"
    call = (await client.get(f"/calls/{error['call_id']}")).json()
    assert (call["status"], call["error"]["code"]) == ("rejected", "number_opted_out")
    assert call["attempts"] == []
    assert exotel.connects == []


async def dialled_through(client: httpx.AsyncClient, call_id: str) -> None:
    async def status() -> str:
        return str((await client.get(f"/calls/{call_id}")).json()["status"])

    await eventually(status, what=f"call {call_id} dialled", until="in-progress".__eq__)


async def test_a_batch_with_an_opted_out_number_rejects_that_call_alone(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    await client.post("/opt-outs", json={"number": "+919052100001"})
    body = {"calls": [place_body(f"+9190521{n:05d}") for n in range(3)]}

    response = await client.post("/calls/batch", json=body)

    assert response.status_code == 202, response.text
    calls = response.json()["calls"]
    assert calls[1]["status"] == "rejected"
    assert calls[1]["error"]["code"] == "number_opted_out"
    for call in (calls[0], calls[2]):
        await dialled_through(client, call["id"])
    assert sorted(form_of(r)["From"] for r in exotel.connects) == ["09052100000", "09052100002"]
    assert (await client.get(f"/calls/{calls[1]['id']}")).json()["status"] == "rejected"


async def test_cancelling_a_final_call_is_409(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    exotel.answer_connect(rest_exception(403, "Call cannot be made because of TRAI NDNC"))
    refused = await client.post("/calls", json=place_body(retry=BUSY_THRICE.as_json()))
    assert refused.status_code == 422
    call_id = refused.json()["error"]["call_id"]

    response = await client.post(f"/calls/{call_id}/cancel")

    assert response.status_code == 409
    error = response.json()["error"]
    assert (error["code"], error["call_id"], error["call_status"]) == (
        "call_ended",
        call_id,
        "rejected",
    )


async def test_cancelling_a_scheduled_call_through_the_api(client: httpx.AsyncClient) -> None:
    body = place_body(not_before=later(hours=1))
    call_id = (await client.post("/calls", json=body)).json()["id"]

    response = await client.post(f"/calls/{call_id}/cancel")

    assert response.status_code == 200
    assert (response.json()["status"], response.json()["next_attempt_at"]) == ("canceled", None)
    assert response.json()["canceled_at"] is not None
    assert (await client.post(f"/calls/{call_id}/cancel")).status_code == 409


async def test_a_status_callback_through_the_api_finds_the_attempt(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    """The API's way in, end to end: a busy callback for attempt 1 schedules attempt 2."""
    body = place_body(retry=BUSY_THRICE.as_json())
    call = (await client.post("/calls", json=body)).json()
    assert call["status"] == "in-progress"

    answered = await client.post(
        callback_path(call["id"]),
        json={"CallSid": call["sid"], "Status": "busy", "EventType": "terminal"},
    )

    assert answered.status_code == 200, answered.text
    call = (await client.get(f"/calls/{call['id']}")).json()
    assert call["status"] == "scheduled"
    assert [(a["n"], a["status"]) for a in call["attempts"]] == [(1, "busy")]
    assert len(exotel.connects) == 1


async def test_a_call_naming_no_window_is_dialled_in_the_calling_window(
    db_url: str, exotel: ExotelDouble
) -> None:
    closed = closed_now()
    settings = make_settings(db_url, CALLING_WINDOW=f"{closed.start:%H:%M}-{closed.end:%H:%M} UTC")
    app = create_app(settings, exotel_transport=httpx.MockTransport(exotel.handle), resolver=no_dns)
    india = now().astimezone(IST)
    open_in_india = {
        "start": f"{india - timedelta(hours=1):%H:%M}",
        "end": f"{india + timedelta(hours=1):%H:%M}",
    }
    async with serving(app) as api:
        waiting = await api.post("/calls", json=place_body())
        own = await api.post("/calls", json=place_body("+919052161111", window=open_in_india))

    assert waiting.status_code == 202, waiting.text
    call = waiting.json()
    assert (call["status"], call["window"]) == ("scheduled", closed.as_json())
    assert datetime.fromisoformat(call["next_attempt_at"]) == closed.opens(now())
    # Its own window, open now, in India's time unless it names a zone.
    assert own.status_code == 201, own.text
    assert own.json()["status"] == "in-progress"
    assert own.json()["window"] == open_in_india | {"timezone": "Asia/Kolkata"}
    assert [form_of(r)["From"] for r in exotel.connects] == ["09052161111"]


async def test_a_call_whose_window_opens_only_after_it_expires_is_expired_at_once(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    closed = closed_now()
    body = place_body(window=closed.as_json(), expires_at=later(hours=1))

    response = await client.post("/calls", json=body)

    assert response.status_code == 202, response.text
    assert (response.json()["status"], response.json()["next_attempt_at"]) == ("expired", None)
    assert exotel.connects == []
