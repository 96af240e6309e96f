"""Events are kept EVENT_RETENTION_DAYS, then deleted with their deliveries, a batch at a time
(app/events/retention.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Delivery, Event
from app.events import retention
from tests.conftest import callback_path, serving
from tests.support.exotel_double import ExotelDouble
from tests.support.exotel_requests import callback, multipart, place
from tests.support.webhooks import app_with

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("at_one_time", [False, True], ids=["apart", "at_one_time"])
async def test_old_events_go_with_their_deliveries_batch_by_batch_and_the_rest_stay(
    at_one_time: bool,
    db_url: str,
    exotel: ExotelDouble,
    sessionmaker: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with serving(app_with(db_url, exotel, webhook_delivery_in_serve=False)) as client:
        registered = await client.post("/webhook-endpoints", json={"url": "http://127.0.0.1:9/"})
        assert registered.status_code == 201
        for _ in range(4):
            call = await place(client, exotel)
            ended = multipart(callback(call["sid"], "completed"))
            assert (await client.post(callback_path(call["id"]), **ended)).status_code == 200
    async with sessionmaker() as session, session.begin():
        ids = list(await session.scalars(select(Event.id).order_by(Event.id)))
        old, kept = ids[:5], ids[5:]
        assert kept
        # At one time, a batch ends among events of the same time: the next takes the rest.
        month = text("'31 days'::interval")
        aged = func.now() - month if at_one_time else Event.created_at - month
        await session.execute(update(Event).where(Event.id.in_(old)).values(created_at=aged))
    monkeypatch.setattr(retention, "_BATCH", 2)  # three batches, the last one short

    assert await retention.forget_old_events(sessionmaker, days=30) == len(old)

    async with sessionmaker() as session:
        assert list(await session.scalars(select(Event.id).order_by(Event.id))) == kept
        owed_for = set(await session.scalars(select(Delivery.event_id)))
        assert owed_for == set(kept)
        assert await session.scalar(select(func.count()).select_from(Delivery)) == len(kept)
