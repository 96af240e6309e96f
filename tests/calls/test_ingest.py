"""Group commit under concurrent load: every callback answered 200 is stored exactly once and
applied, in batches that mix calls whose SID is known with SIDs nobody has yet."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.calls.ingest import CallbackWriter
from app.calls.received import ReceivedCallback
from app.db.models import EventOutcome, Receipt, RequestKind
from tests.conftest import callback_path, place_body
from tests.support.exotel_double import ExotelDouble, accepted, new_sid

pytestmark = pytest.mark.anyio

# The callbacks stored (a call's events also keep Exotel's answer to its dispatch).
CALLBACKS = select(Receipt).where(Receipt.kind == RequestKind.STATUS_CALLBACK)


def form(sid: str, status: str, date: str, **extra: str) -> dict[str, Any]:
    fields = {"CallSid": sid, "Status": status, "RecordingUrl": "", "DateUpdated": date} | extra
    return {"files": {name: (None, value) for name, value in fields.items()}}


async def place_calls(client: httpx.AsyncClient, exotel: ExotelDouble, count: int) -> list[Any]:
    calls = []
    for n in range(count):
        exotel.answer_connect(accepted(new_sid()))
        calls.append((await client.post("/calls", json=place_body(f"90521{n:04d}0"))).json())
    return calls


async def test_concurrent_callbacks_are_each_stored_once_and_applied(
    client: httpx.AsyncClient,
    exotel: ExotelDouble,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    calls = await place_calls(client, exotel, 40)
    # Each call: answered, its end, and its end again; plus callbacks for SIDs nobody has yet,
    # stored in the same batches.
    sends = [
        (call["id"], form(call["sid"], status, date))
        for call in calls
        for status, date in [
            ("in-progress", "2024-09-16 15:50:30"),
            ("no-answer", "2024-09-16 15:51:00"),
            ("no-answer", "2024-09-16 15:51:00"),
        ]
    ] + [(None, form(new_sid(), "busy", "2024-09-16 15:51:00")) for _ in range(10)]

    responses = await asyncio.gather(
        *(client.post(callback_path(call_id), **body) for call_id, body in sends)
    )

    assert {r.status_code for r in responses} == {200}
    receipts = {uuid.UUID(r.json()["receipt_id"]) for r in responses}
    async with sessionmaker() as session:
        events = list(await session.scalars(CALLBACKS))
    assert len(events) == len(sends)
    assert {event.receipt_id for event in events} == receipts
    for call in calls:
        stored = (await client.get(f"/calls/{call['id']}")).json()
        assert stored["status"] == "no-answer"
        outcomes = sorted(e.outcome for e in events if str(e.call_id) == call["id"])
        # In whatever order they were stored: the end applied once, a duplicate, and the
        # answered event applied before it or stale after it.
        assert outcomes.count("applied") in (1, 2)
        assert len(outcomes) == 3
    assert sum(e.outcome == "unknown_sid" for e in events) == 10


async def test_one_callback_no_column_holds_fails_none_sent_with_it(
    client: httpx.AsyncClient,
    exotel: ExotelDouble,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    calls = await place_calls(client, exotel, 16)
    ended = "2024-09-16 15:51:00"
    valid = [(call["id"], form(call["sid"], "completed", ended)) for call in calls]
    # A duration no integer column holds: it once failed the transaction of its whole batch.
    victim = calls[0]
    unstorable = form(victim["sid"], "completed", ended, Duration="1" + "0" * 25)

    *answers, refused = await asyncio.gather(
        *(client.post(callback_path(call_id), **body) for call_id, body in valid),
        client.post(callback_path(victim["id"]), **unstorable),
    )

    assert [r.status_code for r in answers] == [200] * len(valid)
    assert refused.status_code == 422
    assert refused.json()["error"]["details"][0]["field"] == "Duration"
    async with sessionmaker() as session:
        events = list(await session.scalars(CALLBACKS))
    assert {e.receipt_id for e in events} == {uuid.UUID(r.json()["receipt_id"]) for r in answers}
    for call in calls:
        assert (await client.get(f"/calls/{call['id']}")).json()["status"] == "completed"
    assert (await client.get(f"/calls/{victim['id']}/events")).status_code == 200


async def test_a_callback_the_database_refuses_is_kept_unreadable_and_fails_no_other(
    client: httpx.AsyncClient,
    exotel: ExotelDouble,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """Whatever the checks before it miss: the writer finds the callback that fails its batch,
    keeps it as received, and commits every other."""
    victim, *calls = await place_calls(client, exotel, 17)
    ended = {"Status": "completed", "DateUpdated": "2024-09-16 15:51:00"}
    valid = [
        ReceivedCallback(uuid.UUID(call["id"]), "POST", "application/json", ended) for call in calls
    ]
    # Handed to the writer directly, past the receiver's checks: no integer column holds it.
    unstorable = ReceivedCallback(
        uuid.UUID(victim["id"]), "POST", "application/json", ended | {"Duration": 10**25}
    )
    writer = CallbackWriter(engine, writers=1)
    writer.start()
    try:
        *stored, kept = await asyncio.gather(*map(writer.store, [*valid, unstorable]))
    finally:
        await writer.stop()

    assert {s.outcome for s in stored} == {EventOutcome.APPLIED}
    assert kept.outcome == EventOutcome.UNREADABLE
    async with sessionmaker() as session:
        event = await session.scalar(
            select(Receipt).where(Receipt.receipt_id == unstorable.receipt_id)
        )
    assert event is not None
    assert (event.call_id, event.outcome) == (unstorable.call_id, EventOutcome.UNREADABLE)
    assert event.problem is not None
    assert event.problem.startswith("not storable as read")
    assert event.payload["Duration"] == 10**25  # as received
    for call in calls:
        assert (await client.get(f"/calls/{call['id']}")).json()["status"] == "completed"
    assert (await client.get(f"/calls/{victim['id']}")).json()["status"] == "in-progress"
    events = await client.get(f"/calls/{victim['id']}/events")
    assert events.status_code == 200
    assert [(e["kind"], e["outcome"]) for e in events.json()] == [
        ("dispatch", "applied"),
        ("status_callback", "unreadable"),
    ]
