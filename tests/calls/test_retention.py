"""What was received for no call is kept CALLBACK_UNMATCHED_RETENTION_DAYS, then deleted by a
periodic job (app/calls/retention.py); what a call has is kept with it, however old."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.calls import retention
from app.calls.ingest import store_callbacks
from app.calls.received import ReceivedCallback
from app.calls.retention import forget_unmatched_receipts
from app.config import Settings
from app.db.models import Receipt, RequestKind
from app.main import create_app
from tests.conftest import make_settings, serving
from tests.support.eventually import eventually
from tests.support.exotel_double import ExotelDouble, new_sid
from tests.support.exotel_requests import callback, place

pytestmark = pytest.mark.anyio

FORM = "multipart/form-data"


def received(
    fields: dict[str, str],
    *,
    days_ago: float,
    call_id: str | None = None,
    kind: RequestKind = RequestKind.STATUS_CALLBACK,
) -> ReceivedCallback:
    return ReceivedCallback(
        uuid.UUID(call_id) if call_id else None,
        "GET" if kind == RequestKind.PASSTHRU else "POST",
        None if kind == RequestKind.PASSTHRU else FORM,
        fields,
        received_at=datetime.now(UTC) - timedelta(days=days_ago),
        kind=kind,
    )


async def store(engine: AsyncEngine, *batch: ReceivedCallback) -> None:
    async with engine.connect() as connection:
        await store_callbacks(connection, list(batch))


async def receipt_ids(sessionmaker: async_sessionmaker[AsyncSession]) -> set[uuid.UUID | None]:
    async with sessionmaker() as session:
        return set(await session.scalars(select(Receipt.receipt_id)))


async def test_old_receipts_of_no_call_are_forgotten_and_the_rest_kept(
    db_url: str,
    exotel: ExotelDouble,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The service's own job keeps them longer: only the run below forgets anything.
    settings = make_settings(db_url, callback_unmatched_retention_days=30)
    app = create_app(settings, exotel_transport=httpx.MockTransport(exotel.handle))
    async with serving(app) as client:
        call = await place(client, exotel)
    of_the_call = received(callback(call["sid"], "completed"), days_ago=2, call_id=call["id"])
    forgotten = [
        received(callback(new_sid(), "busy"), days_ago=2),  # its call never came
        received({"CallSid": new_sid(), "digits": '"1"'}, days_ago=2, kind=RequestKind.PASSTHRU),
        received({"DialCallStatus": "completed"}, days_ago=2),  # no SID: it never could
    ]
    # Two a batch, all received at one time: the first batch ends among them, the next takes
    # the rest.
    forgotten = [replace(r, received_at=forgotten[0].received_at) for r in forgotten]
    monkeypatch.setattr(retention, "_BATCH", 2)
    recent = received(callback(new_sid(), "busy"), days_ago=0.5)
    await store(engine, of_the_call, *forgotten, recent)

    assert await forget_unmatched_receipts(sessionmaker, days=1) == len(forgotten)

    # Exotel's answer to the call's dispatch (no receipt id), its callback, and the recent one.
    assert await receipt_ids(sessionmaker) == {None, of_the_call.receipt_id, recent.receipt_id}


async def test_the_service_forgets_them_periodically(
    settings: Settings,
    exotel: ExotelDouble,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    settings = settings.replace(CALLBACK_UNMATCHED_RETENTION_DAYS=1)
    old = received(callback(new_sid(), "busy"), days_ago=1.5)
    recent = received(callback(new_sid(), "busy"), days_ago=0.5)
    await store(engine, old, recent)

    app = create_app(settings, exotel_transport=httpx.MockTransport(exotel.handle))
    async with serving(app):
        await eventually(
            lambda: receipt_ids(sessionmaker),
            what="the old receipt forgotten",
            until=lambda ids: old.receipt_id not in ids,
        )
    assert await receipt_ids(sessionmaker) == {recent.receipt_id}
