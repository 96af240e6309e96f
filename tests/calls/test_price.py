"""What each call cost: Exotel fills in `Price` minutes after an attempt ends, and
reconciliation asks for it in bulk call details, 100 SIDs a request, on a schedule that ends."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.calls import queries, ratelimit
from app.calls.placing import CallRequest, queue_calls
from app.calls.reconcile import Repairs, reconcile_once
from app.calls.state import (
    CallState,
    StatusUpdate,
    apply_price,
    apply_update,
    begin_attempt,
    record_attempt,
    wait_for_prices,
)
from app.calls.store import STATE_COLUMNS
from app.config import Settings
from app.db.models import Call, CallStatus, Event, EventOutcome
from app.exotel.client import MAX_SIDS_PER_LOOKUP, ExotelClient
from tests.conftest import FAKE_CALLER_ID, make_settings
from tests.support.exotel_double import call_json, exotel_client_of, new_sid

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
DELAY = timedelta(seconds=300)
GIVE_UP = timedelta(days=1)


def new_state(**values: Any) -> CallState:
    base = {
        "created_at": T0,
        "status": CallStatus.QUEUED,
        "attempts": [],
        "max_attempts": 2,
        "retry": {"max_attempts": 2, "on": ["busy"], "intervals": [60]},
        "send_tries": 0,
    }
    return CallState(**(dict.fromkeys(STATE_COLUMNS) | base | values))


def test_an_attempt_that_ends_with_a_sid_is_owed_its_price() -> None:
    call = new_state()
    begin_attempt(call, at=T0)
    call.sid = "sid-1"
    busy_at = T0 + timedelta(seconds=20)
    apply_update(call, StatusUpdate(CallStatus.BUSY, heard_at=busy_at))
    assert call.status == CallStatus.SCHEDULED
    assert call.price_wait_from == busy_at  # from its end

    begin_attempt(call, at=T0 + timedelta(minutes=2))
    call.sid = "sid-2"
    apply_update(call, StatusUpdate(CallStatus.COMPLETED, heard_at=T0 + timedelta(minutes=3)))
    record_attempt(call, at=T0 + timedelta(minutes=3))
    assert call.status == CallStatus.COMPLETED
    assert call.attempts[1]["ended_at"] is not None
    assert call.price_wait_from == busy_at  # the first is owed still, and longer


def test_an_attempt_that_never_reached_exotel_is_owed_nothing() -> None:
    call = new_state(max_attempts=1, retry=None)
    begin_attempt(call, at=T0)
    apply_update(call, StatusUpdate(CallStatus.REJECTED, heard_at=T0))
    record_attempt(call, at=T0)
    assert call.attempts[0]["ended_at"] is not None
    assert call.price_wait_from is None


def ended(n: int, sid: str, status: str, at: datetime, **values: Any) -> dict[str, Any]:
    return {
        "n": n,
        "sid": sid,
        "status": status,
        "dispatched_at": (at - timedelta(minutes=1)).isoformat(),
        "ended_at": at.isoformat(),
        "duration": 41,
        "error": None,
    } | values


def test_the_wait_for_a_price_grows_with_the_attempts_age_and_ends() -> None:
    call = new_state(status=CallStatus.COMPLETED, attempts=[ended(1, "sid-1", "completed", T0)])
    call.price_wait_from = T0
    asked_at = []
    while call.price_wait_from is not None:
        now = call.price_wait_from + DELAY  # the round that finds it due
        asked_at.append(now)
        wait_for_prices(call, now=now, asked={"sid-1"}, delay=DELAY, give_up=GIVE_UP)
    ages = [(at - T0) / DELAY for at in asked_at]
    assert ages[:5] == [1, 2, 3, 4.5, 6.75]  # from RECONCILE_PRICE_DELAY_SECONDS, then half its age
    assert asked_at[-1] < T0 + GIVE_UP
    assert len(asked_at) <= 15


def test_a_price_is_kept_with_its_attempt_and_the_call_has_the_total() -> None:
    call = new_state(
        status=CallStatus.COMPLETED,
        attempts=[
            ended(1, "sid-1", "busy", T0),
            ended(2, "sid-2", "completed", T0 + timedelta(minutes=5)),
        ],
    )
    assert apply_price(call, 2, Decimal("1.200")) == EventOutcome.APPLIED
    assert (call.attempts[1]["price"], call.price) == ("1.200", Decimal("1.200"))
    assert apply_price(call, 1, Decimal("0.000")) == EventOutcome.APPLIED
    assert call.price == Decimal("1.200")
    assert apply_price(call, 2, Decimal("9")) == EventOutcome.DUPLICATE  # known: it stays
    assert call.price == Decimal("1.200")


def test_an_attempt_under_way_has_no_price_yet() -> None:
    call = new_state(status=CallStatus.IN_PROGRESS)
    begin_attempt(call, at=T0)
    assert apply_price(call, 1, Decimal("0.600")) == EventOutcome.STALE
    assert call.price is None


# --- reconciliation, against the database and a stand-in for Exotel's bulk call details -----


class BulkDetails:
    """Exotel's bulk call details as an `httpx.MockTransport` handler: every request checked
    (a GET of this account's `Calls.json`, with its credentials, 1 to 100 distinct SIDs), and
    the calls it knows of among the SIDs asked for listed, each with its `Price`."""

    def __init__(self) -> None:
        self.prices: dict[str, Any] = {}  # SID -> `Price`, as Exotel would write it
        self.asked: list[list[str]] = []  # the SIDs of each request

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "GET"
        assert request.url.path == "/v1/Accounts/fake-account/Calls.json"
        credentials = base64.b64encode(b"fake-api-key:fake-api-token").decode()
        assert request.headers["Authorization"] == f"Basic {credentials}"
        sids = request.url.params["Sid"].split(",")
        assert 1 <= len(sids) <= MAX_SIDS_PER_LOOKUP
        assert len(set(sids)) == len(sids)
        self.asked.append(sids)
        calls = [
            call_json(sid, "completed", Duration="41", Price=self.prices[sid])["Call"]
            for sid in sids
            if sid in self.prices
        ]
        return httpx.Response(200, json={"Metadata": {"NextPageUri": None}, "Calls": calls})


@pytest.fixture
def settings(db_url: str) -> Settings:
    return make_settings(db_url)


@pytest.fixture
def bulk() -> BulkDetails:
    return BulkDetails()


@pytest.fixture
async def exotel_client(bulk: BulkDetails) -> AsyncIterator[ExotelClient]:
    async with exotel_client_of(bulk.handle) as client:
        yield client


async def reconcile(
    sessionmaker: async_sessionmaker[AsyncSession],
    exotel_client: ExotelClient,
    settings: Settings,
    *,
    limit: int = 10,
) -> Repairs:
    return await reconcile_once(
        sessionmaker=sessionmaker,
        exotel=exotel_client,
        settings=settings.reconcile,
        budget=ratelimit.Budget(limit=limit, window=60, margin=10),
    )


async def ended_calls(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    attempts: list[list[dict[str, Any]]],
) -> list[Call]:
    """Calls whose attempts ended as `attempts` say (each call's, in order), none priced, and
    owed their prices as the state machine leaves them: from their first attempt's end."""
    async with sessionmaker() as session, session.begin():
        requests = [
            CallRequest("+919052161110", app_id="926", caller_id=FAKE_CALLER_ID) for _ in attempts
        ]
        queued = await queue_calls(session, requests=requests, settings=settings.exotel)
        calls = [call for call, _ in queued]
        for call, its_attempts in zip(calls, attempts, strict=True):
            latest = its_attempts[-1]
            call.status = CallStatus(latest["status"])
            call.sid = latest["sid"]
            call.dispatched_at = datetime.fromisoformat(latest["dispatched_at"])
            call.duration = latest["duration"]
            call.attempts = its_attempts
            call.max_attempts = len(its_attempts)
            call.price_wait_from = datetime.fromisoformat(its_attempts[0]["ended_at"])
    return calls


async def reload(sessionmaker: async_sessionmaker[AsyncSession], call: Call) -> Call:
    async with sessionmaker() as session:
        found = await session.get(Call, call.id)
        assert found is not None
        return found


async def events_of(sessionmaker: async_sessionmaker[AsyncSession], call: Call) -> list[Event]:
    async with sessionmaker() as session:
        query = select(Event).where(Event.call_id == call.id).order_by(Event.sequence)
        return list(await session.scalars(query))


def minutes_ago(minutes: float) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=minutes)


async def test_a_retried_calls_prices_are_kept_per_attempt_and_in_all(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    bulk: BulkDetails,
    exotel_client: ExotelClient,
) -> None:
    sid_1, sid_2 = new_sid(), new_sid()
    (call,) = await ended_calls(
        sessionmaker,
        settings,
        [[ended(1, sid_1, "busy", minutes_ago(40)), ended(2, sid_2, "completed", minutes_ago(8))]],
    )
    bulk.prices = {sid_1: "0.000", sid_2: "1.200"}

    repairs = await reconcile(sessionmaker, exotel_client, settings)

    assert bulk.asked == [[sid_1, sid_2]]  # one request for both attempts
    assert (repairs.lookups, repairs.priced, repairs.charged) == (1, 2, Decimal("1.2"))
    stored = await reload(sessionmaker, call)
    assert [a["price"] for a in stored.attempts] == ["0.000", "1.200"]
    assert stored.price == Decimal("1.2")
    assert stored.price_wait_from is None  # nothing more owed
    # How each was learnt: Exotel's answer, kept with its attempt.
    async with sessionmaker() as session:
        answers = await queries.list_events(session, call_id=call.id)
    assert [(a.kind, a.attempt, a.sid, a.outcome) for a in answers] == [
        ("lookup", 1, sid_1, EventOutcome.APPLIED),
        ("lookup", 2, sid_2, EventOutcome.APPLIED),
    ]
    assert answers[1].payload["Price"] == "1.200"
    # A final call that learns its price: `call.updated`, with the call as it is now.
    (event,) = await events_of(sessionmaker, call)
    assert event.type == "call.updated"
    shown = json.loads(event.body)["data"]["call"]
    assert shown["price"] == 1.2
    assert [a["price"] for a in shown["attempts"]] == [0.0, 1.2]

    await reconcile(sessionmaker, exotel_client, settings)
    assert len(bulk.asked) == 1  # known: never asked again


async def test_a_price_is_null_until_exotel_fills_it_in(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    bulk: BulkDetails,
    exotel_client: ExotelClient,
) -> None:
    sid = new_sid()
    (call,) = await ended_calls(
        sessionmaker, settings, [[ended(1, sid, "completed", minutes_ago(10))]]
    )
    bulk.prices = {sid: None}

    assert (await reconcile(sessionmaker, exotel_client, settings)).lookups == 1
    stored = await reload(sessionmaker, call)
    assert (stored.price, stored.attempts[0].get("price")) == (None, None)
    assert stored.updated_at == call.updated_at  # the schedule is not a change of the call
    async with sessionmaker() as session:
        assert await queries.list_events(session, call_id=call.id) == []  # nothing learnt
    # Asked again after half its age (5 min), not at the next round.
    assert stored.price_wait_from is not None
    assert stored.price_wait_from > call.price_wait_from
    assert (await reconcile(sessionmaker, exotel_client, settings)).lookups == 0
    assert len(bulk.asked) == 1

    # Its time comes, and Exotel has filled it in.
    async with sessionmaker() as session, session.begin():
        due = update(Call).where(Call.id == call.id).values(price_wait_from=minutes_ago(10))
        await session.execute(due)
    bulk.prices = {sid: "0.600"}
    assert (await reconcile(sessionmaker, exotel_client, settings)).priced == 1
    assert (await reload(sessionmaker, call)).price == Decimal("0.6")


async def test_one_bulk_request_asks_for_100_attempts(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    bulk: BulkDetails,
    exotel_client: ExotelClient,
) -> None:
    # 150 calls, two of them retried: 152 attempts, a call's never split across requests.
    attempts = [[ended(1, new_sid(), "completed", minutes_ago(10))] for _ in range(148)]
    attempts += [
        [ended(1, new_sid(), "busy", minutes_ago(20)), ended(2, new_sid(), "busy", minutes_ago(9))]
        for _ in range(2)
    ]
    calls = await ended_calls(sessionmaker, settings, attempts)
    sids = [a["sid"] for its in attempts for a in its]
    bulk.prices = dict.fromkeys(sids, "0.600")

    repairs = await reconcile(sessionmaker, exotel_client, settings)

    assert [len(asked) for asked in bulk.asked] == [100, 52]
    assert sorted(sid for asked in bulk.asked for sid in asked) == sorted(sids)
    assert (repairs.lookups, repairs.priced, repairs.charged) == (2, 152, Decimal("91.2"))
    retried = await reload(sessionmaker, calls[-1])
    assert retried.price == Decimal("1.2")


async def test_price_look_ups_draw_on_the_accounts_budget(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    bulk: BulkDetails,
    exotel_client: ExotelClient,
) -> None:
    attempts = [[ended(1, new_sid(), "completed", minutes_ago(10))] for _ in range(150)]
    calls = await ended_calls(sessionmaker, settings, attempts)
    bulk.prices = {its[0]["sid"]: "0.600" for its in attempts}

    # Room for one request this minute: the rest wait for the next round.
    repairs = await reconcile(sessionmaker, exotel_client, settings, limit=1)
    assert (repairs.lookups, repairs.priced) == (1, 100)
    assert len(bulk.asked) == 1
    stored = [await reload(sessionmaker, c) for c in calls]
    unpriced = [c for c in stored if c.price is None]
    assert len(unpriced) == 50
    assert all(c.price_wait_from is not None for c in unpriced)  # still owed

    repairs = await reconcile(sessionmaker, exotel_client, settings, limit=2)
    assert (repairs.lookups, repairs.priced) == (1, 50)
    assert sorted(bulk.asked[1]) == sorted(c.sid for c in unpriced if c.sid)


@pytest.mark.parametrize(
    "price",
    ["₹0.60", "n/a", "-0.600", "1e3", "0.00001", "1000000.000", {"amount": "0.600"}, True],
)
async def test_a_price_that_is_not_an_amount_is_kept_raw_and_not_applied(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    bulk: BulkDetails,
    exotel_client: ExotelClient,
    price: Any,
) -> None:
    sid, fine = new_sid(), new_sid()
    call, other = await ended_calls(
        sessionmaker,
        settings,
        [
            [ended(1, sid, "completed", minutes_ago(10))],
            [ended(1, fine, "completed", minutes_ago(10))],
        ],
    )
    bulk.prices = {sid: price, fine: "0.600"}

    repairs = await reconcile(sessionmaker, exotel_client, settings)

    assert repairs.priced == 1  # the round went on
    assert (await reload(sessionmaker, other)).price == Decimal("0.6")
    stored = await reload(sessionmaker, call)
    assert (stored.price, stored.attempts[0].get("price")) == (None, None)
    assert stored.price_wait_from is not None  # asked again: Exotel may put it right
    async with sessionmaker() as session:
        (answer,) = await queries.list_events(session, call_id=call.id)
    assert (answer.outcome, answer.attempt) == (EventOutcome.UNREADABLE, 1)
    assert answer.payload["Price"] == price  # as Exotel sent it
    assert "is not an amount" in (answer.problem or "")


async def test_a_price_is_given_up_on_a_while_after_the_attempt_ended(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    bulk: BulkDetails,
    exotel_client: ExotelClient,
) -> None:
    give_up = settings.reconcile.price_give_up_seconds / 60
    (call,) = await ended_calls(
        sessionmaker, settings, [[ended(1, new_sid(), "completed", minutes_ago(give_up + 1))]]
    )

    assert (await reconcile(sessionmaker, exotel_client, settings)).lookups == 0
    assert bulk.asked == []
    stored = await reload(sessionmaker, call)
    assert (stored.price, stored.price_wait_from) == (None, None)  # out of the index for good


async def test_an_attempt_is_not_asked_for_before_exotel_can_have_priced_it(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    bulk: BulkDetails,
    exotel_client: ExotelClient,
) -> None:
    (call,) = await ended_calls(
        sessionmaker, settings, [[ended(1, new_sid(), "completed", minutes_ago(1))]]
    )
    assert (await reconcile(sessionmaker, exotel_client, settings)).lookups == 0
    assert (await reload(sessionmaker, call)).price_wait_from == call.price_wait_from
