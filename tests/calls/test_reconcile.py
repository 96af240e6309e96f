"""Reconciliation: lost callbacks, `unknown` calls and interrupted dispatches are accounted for
through Exotel's call details, within the account's budget, and never by dialling again."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.calls import queries, ratelimit
from app.calls import reconcile as reconcile_module
from app.calls.ingest import store_callbacks
from app.calls.placing import CallRequest, queue_calls
from app.calls.received import ReceivedCallback
from app.calls.reconcile import Repairs, reconcile_once
from app.calls.state import CallState
from app.calls.store import STATE_COLUMNS
from app.config import Settings
from app.db.models import Call, CallStatus, EventOutcome, ExotelRequest, Receipt, Throttle
from app.exotel.client import ExotelClient
from app.exotel.wire import format_exotel_time
from tests.conftest import FAKE_CALLER_ID, make_settings
from tests.support.exotel_double import ExotelDouble, call_json, exotel_client_of, new_sid

pytestmark = pytest.mark.anyio

LONG_AGO = datetime.now(UTC) - timedelta(hours=5)  # past any time_out + time_limit + grace


@pytest.fixture
def settings(db_url: str) -> Settings:
    return make_settings(db_url, exotel_rate_limit=10, exotel_rate_window_seconds=60)


@pytest.fixture
async def exotel_client(exotel: ExotelDouble) -> AsyncIterator[ExotelClient]:
    async with exotel_client_of(exotel.handle) as client:
        yield client


Reconcile = Any


@pytest.fixture
def reconcile(
    sessionmaker: async_sessionmaker[AsyncSession],
    exotel_client: ExotelClient,
    settings: Settings,
) -> Reconcile:
    async def run(budget: ratelimit.Budget | None = None) -> Repairs:
        return await reconcile_once(
            sessionmaker=sessionmaker,
            exotel=exotel_client,
            settings=settings.reconcile,
            budget=budget or ratelimit.Budget(limit=10, window=60, margin=10),
        )

    return run


async def stored_call(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, **values: Any
) -> Call:
    """A call as the dispatcher would have left it (no dispatcher runs in these tests)."""
    async with sessionmaker() as session, session.begin():
        request = CallRequest("+919052161110", app_id="926", caller_id=FAKE_CALLER_ID)
        ((call, _),) = await queue_calls(session, requests=[request], settings=settings.exotel)
        for name, value in values.items():
            setattr(call, name, value)
    return call


async def received(sessionmaker: async_sessionmaker[AsyncSession], call: Call) -> list[Receipt]:
    """What was kept of what was received for the call, oldest first (as GET /calls/{id}/events
    lists it)."""
    async with sessionmaker() as session:
        return await queries.list_events(session, call_id=call.id)


async def reload(sessionmaker: async_sessionmaker[AsyncSession], call: Call) -> Call:
    async with sessionmaker() as session:
        found = await session.get(Call, call.id)
        assert found is not None
        return found


def details(sid: str, status: str, **fields: Any) -> dict[str, Any]:
    return dict(call_json(sid, status, **fields)["Call"])


async def test_a_lost_callback_is_repaired_from_call_details(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    exotel: ExotelDouble,
    reconcile: Reconcile,
) -> None:
    sid = new_sid()
    call = await stored_call(
        sessionmaker, settings, status=CallStatus.IN_PROGRESS, sid=sid, dispatched_at=LONG_AGO
    )
    exotel.listed = [
        details(sid, "completed", Duration="41", RecordingUrl="https://rec.test/1.mp3")
    ]

    repairs = await reconcile()

    assert (repairs.lookups, repairs.repaired) == (1, 1)
    (lookup,) = exotel.lookups
    assert lookup.url.path == "/v1/Accounts/fake-account/Calls.json"
    assert lookup.url.params["Sid"] == sid
    stored = await reload(sessionmaker, call)
    assert (stored.status, stored.duration) == (CallStatus.COMPLETED, 41)
    assert stored.recording_url == "https://rec.test/1.mp3"
    assert exotel.connects == []
    # How its end was learnt: the look-up, kept as Exotel answered it.
    (answer,) = await received(sessionmaker, call)
    assert (answer.kind, answer.method, answer.outcome) == ("lookup", "GET", EventOutcome.APPLIED)
    assert answer.payload == exotel.listed[0]
    assert (answer.sid, answer.status, answer.recording_url) == (
        sid,
        "completed",
        "https://rec.test/1.mp3",
    )
    assert answer.problem is None


async def test_a_call_is_looked_up_when_due_and_not_before(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    exotel: ExotelDouble,
    reconcile: Reconcile,
) -> None:
    now = datetime.now(UTC)
    waiting = await stored_call(
        sessionmaker,
        settings,
        status=CallStatus.IN_PROGRESS,
        sid=new_sid(),
        dispatched_at=now - timedelta(minutes=3),
        next_lookup_at=now + timedelta(minutes=1),
    )
    due = await stored_call(
        sessionmaker,
        settings,
        status=CallStatus.IN_PROGRESS,
        sid=new_sid(),
        dispatched_at=now - timedelta(minutes=3),  # far within its 4 h time limit
        next_lookup_at=now - timedelta(seconds=1),
    )

    assert (await reconcile()).lookups == 1
    (lookup,) = exotel.lookups
    assert lookup.url.params["Sid"] == due.sid  # and not the other
    # Not listed: still in progress. Looked up again after half its age (3 min).
    stored = await reload(sessionmaker, due)
    assert stored.status == CallStatus.IN_PROGRESS
    assert stored.updated_at == due.updated_at  # the schedule is not a change of the call
    assert stored.next_lookup_at is not None
    wait = (stored.next_lookup_at - now).total_seconds()
    assert 85 <= wait <= 95, wait
    assert (await reload(sessionmaker, waiting)).next_lookup_at == waiting.next_lookup_at


async def test_a_round_takes_the_calls_due_longest_first(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    exotel: ExotelDouble,
    reconcile: Reconcile,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A round looks up a round's worth; one never looked up is due since it was made."""
    monkeypatch.setattr(reconcile_module, "_A_ROUND", 2)
    now = datetime.now(UTC)
    sent = now - timedelta(minutes=30)
    due_at = {"lately": now - timedelta(minutes=1), "long ago": now - timedelta(minutes=20)}
    calls = {
        name: await stored_call(
            sessionmaker,
            settings,
            status=CallStatus.IN_PROGRESS,
            sid=new_sid(),
            dispatched_at=sent,
            next_lookup_at=at,
        )
        for name, at in due_at.items()
    }
    never = await stored_call(
        sessionmaker, settings, status=CallStatus.IN_PROGRESS, sid=new_sid(), dispatched_at=sent
    )
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(Call).where(Call.id == never.id).values(created_at=now - timedelta(minutes=10))
        )

    await reconcile()

    (lookup,) = exotel.lookups
    assert lookup.url.params["Sid"].split(",") == [calls["long ago"].sid, never.sid]


def test_the_wait_between_look_ups_grows_with_the_calls_age_up_to_the_recheck() -> None:
    sent = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    call = CallState(**(dict.fromkeys(STATE_COLUMNS) | {"dispatched_at": sent}))
    looked_up = [sent]
    for _ in range(12):
        call.look_up_later(looked_up[-1], first=60, longest=180)
        assert call.next_lookup_at is not None
        looked_up.append(call.next_lookup_at)
    waits = [(b - a).total_seconds() for a, b in itertools.pairwise(looked_up)]
    assert waits[:5] == [60, 60, 60, 90, 135]
    assert waits[5:] == [180] * 7  # a lost callback is known within 3 min of the call's end


async def test_an_unknown_call_is_found_by_its_number(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    exotel: ExotelDouble,
    reconcile: Reconcile,
) -> None:
    """A Calls/connect that timed out did dial: Exotel lists a call from the number then."""
    dispatched = datetime.now(UTC) - timedelta(minutes=10)
    call = await stored_call(
        sessionmaker, settings, status=CallStatus.UNKNOWN, dispatched_at=dispatched
    )
    sid = new_sid()
    when = format_exotel_time(dispatched + timedelta(seconds=2))
    exotel.listed = [details(sid, "busy", DateCreated=when, DateUpdated=when)]

    repairs = await reconcile()

    assert repairs.repaired == 1
    (lookup,) = exotel.lookups
    assert lookup.url.params["From"] == "+919052161110"
    assert lookup.url.params["DateCreated"].startswith("gte:")
    stored = await reload(sessionmaker, call)
    assert (stored.status, stored.sid) == (CallStatus.BUSY, sid)
    (answer,) = await received(sessionmaker, call)
    assert (answer.kind, answer.sid, answer.status) == ("lookup", sid, "busy")
    assert answer.payload == exotel.listed[0]


async def test_an_unknown_call_exotel_never_heard_of_is_rejected_once_overdue(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    exotel: ExotelDouble,
    reconcile: Reconcile,
) -> None:
    recent = await stored_call(
        sessionmaker, settings, status=CallStatus.UNKNOWN, dispatched_at=datetime.now(UTC)
    )
    old = await stored_call(
        sessionmaker, settings, status=CallStatus.UNKNOWN, dispatched_at=LONG_AGO
    )

    repairs = await reconcile()

    assert repairs.not_dialled == 1
    assert (await reload(sessionmaker, recent)).status == CallStatus.UNKNOWN
    stored = await reload(sessionmaker, old)
    assert (stored.status, stored.error_code) == (CallStatus.REJECTED, "exotel_no_record")
    assert exotel.connects == []
    # Learnt from a look-up that found nothing: kept, saying so; the recent call learnt nothing.
    (answer,) = await received(sessionmaker, old)
    assert (answer.kind, answer.payload, answer.outcome) == ("lookup", {}, EventOutcome.APPLIED)
    assert answer.problem == "Exotel has no record of this call: it was not dialled"
    assert await received(sessionmaker, recent) == []


async def test_call_details_with_no_status_we_know_are_kept_and_change_nothing(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    exotel: ExotelDouble,
    reconcile: Reconcile,
) -> None:
    sid = new_sid()
    call = await stored_call(
        sessionmaker, settings, status=CallStatus.IN_PROGRESS, sid=sid, dispatched_at=LONG_AGO
    )
    exotel.listed = [details(sid, "free")]

    repairs = await reconcile()

    assert repairs.repaired == 0
    assert (await reload(sessionmaker, call)).status == CallStatus.IN_PROGRESS
    (answer,) = await received(sessionmaker, call)
    assert (answer.kind, answer.status, answer.outcome) == ("lookup", "free", "unreadable")
    assert answer.problem == "'free' is not a call status"


async def test_every_page_of_call_details_is_read_each_from_the_budget(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    exotel: ExotelDouble,
    reconcile: Reconcile,
) -> None:
    """Bulk call details come in pages: the look-up follows `Metadata.NextPageUri` to the end,
    and every page is a request of the account's budget."""
    sids = [new_sid() for _ in range(3)]
    calls = [
        await stored_call(
            sessionmaker, settings, status=CallStatus.IN_PROGRESS, sid=sid, dispatched_at=LONG_AGO
        )
        for sid in sids
    ]
    exotel.listed = [details(sid, "busy") for sid in sids]
    exotel.page_size = 2

    repairs = await reconcile()

    assert (repairs.lookups, repairs.repaired) == (2, 3)
    assert [r.url.params.get("After") for r in exotel.lookups] == [None, "2"]
    assert all(r.url.params["Sid"] == ",".join(sids) for r in exotel.lookups)
    for call in calls:
        assert (await reload(sessionmaker, call)).status == CallStatus.BUSY
    async with sessionmaker() as session:
        kinds = list(await session.scalars(select(ExotelRequest.kind)))
    assert kinds == ["lookup", "lookup"]


async def test_look_ups_draw_from_the_accounts_budget(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    exotel: ExotelDouble,
    reconcile: Reconcile,
) -> None:
    await stored_call(
        sessionmaker, settings, status=CallStatus.IN_PROGRESS, sid=new_sid(), dispatched_at=LONG_AGO
    )
    spent = ratelimit.Budget(limit=1, window=60, margin=0)
    async with sessionmaker() as session, session.begin():
        assert await ratelimit.acquire(session, spent, kind=ratelimit.RequestKind.CONNECT) == 0

    assert (await reconcile(spent)).lookups == 0
    assert exotel.requests == []

    await reconcile()
    async with sessionmaker() as session:
        kinds = list(await session.scalars(select(ExotelRequest.kind).order_by(ExotelRequest.at)))
    assert kinds == ["connect", "lookup"]


async def test_look_ups_give_way_to_a_dispatch_backlog(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    exotel: ExotelDouble,
    reconcile: Reconcile,
) -> None:
    for _ in range(3):
        await stored_call(
            sessionmaker,
            settings,
            status=CallStatus.IN_PROGRESS,
            sid=new_sid(),
            dispatched_at=LONG_AGO,
        )
    await stored_call(sessionmaker, settings)  # queued: a backlog
    budget = ratelimit.Budget(limit=10, window=60, margin=0, lookup_share=0.1)
    async with sessionmaker() as session, session.begin():
        assert (
            await ratelimit.acquire(
                session, budget, kind=ratelimit.RequestKind.LOOKUP, backlog=True
            )
            == 0
        )
        # One look-up (10% of 10) is all a backlog leaves them.
        assert (
            await ratelimit.acquire(
                session, budget, kind=ratelimit.RequestKind.LOOKUP, backlog=True
            )
            > 0
        )
        assert await ratelimit.acquire(session, budget, kind=ratelimit.RequestKind.CONNECT) == 0


async def test_a_look_up_whose_grant_went_stale_asks_the_budget_again(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    exotel: ExotelDouble,
    reconcile: Reconcile,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its commit came back after half the margin: not sent on that grant, which still counts."""
    sid = new_sid()
    await stored_call(
        sessionmaker, settings, status=CallStatus.IN_PROGRESS, sid=sid, dispatched_at=LONG_AGO
    )
    exotel.listed = [details(sid, "completed")]
    freshness = iter([False, True])
    monkeypatch.setattr(ratelimit.Budget, "fresh", lambda budget, granted: next(freshness))

    repairs = await reconcile()

    assert (repairs.lookups, repairs.repaired) == (1, 1)
    assert len(exotel.requests) == 1
    async with sessionmaker() as session:
        kinds = list(await session.scalars(select(ExotelRequest.kind)))
    assert kinds == ["lookup", "lookup"]


async def time_passes(sessionmaker: async_sessionmaker[AsyncSession], *, seconds: float) -> None:
    """For the account's budget, as if `seconds` had passed: every time it keeps (grants, a
    429's pause, a look-up's claim on the next slot) moved back by as much."""
    back = func.make_interval(0, 0, 0, 0, 0, 0, seconds)
    async with sessionmaker() as session, session.begin():
        await session.execute(update(ExotelRequest).values(at=ExotelRequest.at - back))
        await session.execute(
            update(Throttle).values(
                paused_until=Throttle.paused_until - back,
                lookup_wanted_until=Throttle.lookup_wanted_until - back,
            )
        )


async def test_a_look_up_refused_by_a_full_budget_gets_the_next_free_slot(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """A backlog takes every slot as it frees; reconciliation must not starve behind it."""
    budget = ratelimit.Budget(limit=10, window=60, margin=0)  # longer than any grants here take
    connect, lookup = ratelimit.RequestKind.CONNECT, ratelimit.RequestKind.LOOKUP

    async def acquire(kind: ratelimit.RequestKind) -> float:
        async with sessionmaker() as session, session.begin():
            return await ratelimit.acquire(session, budget, kind=kind, backlog=True)

    assert [await acquire(connect) for _ in range(10)] == [0] * 10
    assert await acquire(lookup) > 0  # the window is full
    await time_passes(sessionmaker, seconds=61)  # and now empty again
    assert [await acquire(connect) for _ in range(9)] == [0] * 9
    assert await acquire(connect) > 0  # the tenth slot is kept for the look-up
    assert await acquire(lookup) == 0


async def test_a_look_up_waits_for_a_slot_rather_than_give_up_its_round(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    exotel: ExotelDouble,
    reconcile: Reconcile,
) -> None:
    sid = new_sid()
    call = await stored_call(
        sessionmaker, settings, status=CallStatus.IN_PROGRESS, sid=sid, dispatched_at=LONG_AGO
    )
    await stored_call(sessionmaker, settings)  # queued: a backlog
    exotel.listed = [details(sid, "completed")]
    budget = ratelimit.Budget(limit=2, window=2, margin=2)
    async with sessionmaker() as session, session.begin():
        for _ in range(2):  # the backlog took the whole window
            await ratelimit.acquire(session, budget, kind=ratelimit.RequestKind.CONNECT)

    repairs = await reconcile(budget)  # a slot frees within the round (4 s < 30 s)

    assert (repairs.lookups, repairs.repaired) == (1, 1)
    assert (await reload(sessionmaker, call)).status == CallStatus.COMPLETED


async def test_callbacks_stored_before_their_sid_was_known_are_attached(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    reconcile: Reconcile,
) -> None:
    sid = new_sid()
    payload = {"CallSid": sid, "Status": "no-answer", "DateUpdated": "2024-09-16 15:51:00"}
    async with engine.connect() as connection:
        outcomes = await store_callbacks(
            connection, [ReceivedCallback(None, "POST", "multipart/form-data", payload)]
        )
    assert [stored.outcome for stored in outcomes] == [EventOutcome.UNKNOWN_SID]
    # The dispatch that learnt the SID raced the callback and missed it.
    call = await stored_call(sessionmaker, settings, status=CallStatus.IN_PROGRESS)
    async with sessionmaker() as session, session.begin():
        await session.execute(update(Call).where(Call.id == call.id).values(sid=sid))

    repairs = await reconcile()

    assert repairs.attached == 1
    assert (await reload(sessionmaker, call)).status == CallStatus.NO_ANSWER
    async with sessionmaker() as session:
        event = (await session.scalars(select(Receipt))).one()
    assert (event.call_id, event.outcome) == (call.id, EventOutcome.APPLIED)
