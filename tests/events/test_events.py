"""The outbox and the event feed: every applied change of a call is an event, written with the
change; nothing else is; and the feed never skips one, whatever order events commit in."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.calls.placing import CallRequest, queue_calls
from app.calls.received import ReceivedCallback
from app.calls.store import CallStore
from app.config import Settings
from app.db.models import Event
from app.events.feed import read_feed
from tests.conftest import callback_path
from tests.support.eventually import NotInTime
from tests.support.exotel_requests import callback, multipart, place
from tests.support.feed import feed_caught_up, feed_items

pytestmark = pytest.mark.anyio


async def feed(client: httpx.AsyncClient, db_url: str, **params: Any) -> dict[str, Any]:
    """The feed's page for `params`, once it shows every event committed before the call
    (tests/support/feed.py)."""
    await feed_caught_up(db_url)
    response = await client.get("/events", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_each_applied_change_is_one_event_with_the_call_after_it(
    client: httpx.AsyncClient, exotel: Any, db_url: str
) -> None:
    call = await place(client, exotel)
    sid = call["sid"]
    for fields in (
        callback(sid, "completed", "2019-04-08 03:18:35"),
        callback(sid, "completed", "2019-04-08 03:18:35"),  # a duplicate
        callback(sid, "in-progress", "2019-04-08 03:18:00"),  # stale
        callback(sid, "completed", "2019-04-08 03:18:35", recording="https://rec.test/a.mp3"),
    ):
        response = await client.post(callback_path(call["id"]), **multipart(fields))
        assert response.status_code == 200, response.text

    events = (await feed(client, db_url))["items"]
    assert [e["type"] for e in events] == ["call.in_progress", "call.completed", "call.updated"]
    assert [e["data"]["sequence"] for e in events] == [1, 2, 3]
    assert [e["data"]["previous_status"] for e in events] == ["queued", "in-progress", "completed"]
    assert all(e["id"].startswith("evt_") for e in events)
    assert len({e["id"] for e in events}) == 3
    assert events[0]["data"]["call"]["sid"] == sid
    assert events[1]["data"]["call"]["status"] == "completed"
    assert events[1]["data"]["call"]["recording_url"] is None
    now = (await client.get(f"/calls/{call['id']}")).json()
    assert events[2]["data"]["call"] == now  # the resource, after the change

    one = await client.get(f"/events/{events[1]['id']}")
    assert one.status_code == 200
    assert one.json() == events[1]


async def test_the_feed_filters_by_type_and_call_and_pages_with_its_cursor(
    client: httpx.AsyncClient, exotel: Any, db_url: str
) -> None:
    first, second = await place(client, exotel), await place(client, exotel)
    for call in (first, second):
        fields = callback(call["sid"], "busy")
        await client.post(callback_path(call["id"]), **multipart(fields))

    assert [
        e["data"]["call"]["id"] for e in (await feed(client, db_url, type="call.busy"))["items"]
    ] == [
        first["id"],
        second["id"],
    ]
    only = (await feed(client, db_url, call_id=second["id"]))["items"]
    assert [e["type"] for e in only] == ["call.in_progress", "call.busy"]

    seen, cursor = [], None
    for _ in range(5):
        page = await feed(client, db_url, limit=1, **({"after": cursor} if cursor else {}))
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
    assert seen == [e["id"] for e in (await feed(client, db_url))["items"]]
    assert len(seen) == 4
    # At the end the cursor stays where it is: a consumer polls with it.
    assert (await feed(client, db_url, after=cursor)) == {"items": [], "next_cursor": cursor}

    later = (await feed(client, db_url, after="now"))["next_cursor"]
    third = await place(client, exotel)
    assert [
        e["data"]["call"]["id"] for e in (await feed(client, db_url, after=later))["items"]
    ] == [third["id"]]


async def test_a_read_after_writes_waits_while_an_older_transaction_holds_the_feed_back(
    client: httpx.AsyncClient, exotel: Any, engine: AsyncEngine, db_url: str
) -> None:
    """tests/support/feed.py: a transaction begun before an event's, left open, holds the event
    back (app/events/feed.py); the wait lasts while it is open, and after it the event is shown."""
    async with engine.connect() as held:
        await held.execute(text("SELECT pg_current_xact_id()"))  # given an id: in flight
        call = await place(client, exotel)  # its call.in_progress commits after that
        at_once = await client.get("/events", params={"call_id": call["id"]})
        assert at_once.json()["items"] == []
        # Its condition cannot hold while `held` is open: a short deadline fails it surely.
        with pytest.raises(NotInTime, match="the oldest in flight"):
            await feed_caught_up(db_url, within=0.3)
        await held.rollback()
    assert [e["type"] for e in await feed_items(client, db_url, call_id=call["id"])] == [
        "call.in_progress"
    ]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"after": "not-a-cursor"}, "after"),
        ({"after": "WzEsMiwzXQ"}, "after"),  # [1, 2, 3]
        ({"type": "call.exploded"}, "type"),
        ({"limit": "0"}, "limit"),
        ({"call_id": "nope"}, "call_id"),
    ],
)
async def test_the_feed_refuses_what_it_cannot_read_naming_the_field(
    client: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    response = await client.get("/events", params=params)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == field


async def test_an_unknown_event_is_a_404_in_the_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/events/evt_nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "event_not_found"


async def _queue(sessionmaker: async_sessionmaker[AsyncSession], count: int) -> list[uuid.UUID]:
    settings = Settings.load(env_file=None, exotel_caller_id="08030752400")
    requests = [CallRequest(from_number=f"+9190521{i:05d}", app_id="926") for i in range(count)]
    async with sessionmaker() as session, session.begin():
        queued = await queue_calls(session, requests=requests, settings=settings.exotel)
    return [call.id for call, _ in queued]


async def test_no_cursor_skips_an_event_that_commits_after_a_later_one(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], db_url: str
) -> None:
    """Writers take event ids in one order and commit in another, while a reader follows the
    feed with its cursor: the reader ends with every event, each once."""
    call_ids = await _queue(sessionmaker, 40)
    rng = random.Random(7)
    done = asyncio.Event()

    async def write(call_id: uuid.UUID) -> None:
        await asyncio.sleep(rng.uniform(0, 0.3))
        async with engine.connect() as connection, connection.begin():
            store = CallStore(connection)
            await store.lock(ids=[call_id], sids=[f"sid-{call_id.hex}"])
            received = ReceivedCallback(
                call_id=call_id,
                method="POST",
                content_type="application/json",
                payload={"CallSid": f"sid-{call_id.hex}", "Status": "completed"},
            )
            store.add_callback(received)
            await store.flush()  # the event has its id now ...
            await asyncio.sleep(rng.uniform(0, 0.3))  # ... and commits later, out of order

    async def follow() -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            finished = done.is_set()  # before the read: a last read after every commit
            async with sessionmaker() as session:
                page = await read_feed(session, after=cursor, limit=7)
            seen += [json.loads(event)["id"] for event in page.items]
            cursor = page.next_cursor
            if finished and not page.items:
                return seen
            await asyncio.sleep(0.01)

    reader = asyncio.create_task(follow())
    await asyncio.gather(*(write(call_id) for call_id in call_ids))
    # The reader's last read must see every event: none held back by a transaction of the
    # server's that is none of these writers'.
    await feed_caught_up(db_url)
    done.set()
    seen_ids = await reader

    async with sessionmaker() as session:
        written = list(await session.scalars(select(Event.public_id)))
    assert len(written) == 40
    assert sorted(seen_ids) == sorted(written)  # every one, none twice
