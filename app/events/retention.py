"""Events are kept EVENT_RETENTION_DAYS, then deleted with their deliveries and attempts."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.batches import in_batches, oldest
from app.db.clock import db_now
from app.db.models import Event
from app.db.statements import one_of, table_of

_BATCH = 1000  # events deleted per transaction, so that no lock is held for long
_EVENTS = table_of(Event)


async def forget_old_events(sessionmaker: async_sessionmaker[AsyncSession], *, days: float) -> int:
    """Delete the events older than `days`; says how many."""

    async def batch(session: AsyncSession, since: datetime | None) -> list[datetime]:
        before = await db_now(session) - timedelta(days=days)
        events = select(Event.id, Event.created_at)
        read = oldest(events, Event.created_at, before=before, since=since)
        rows = (await session.execute(read.limit(_BATCH))).all()
        # By their ids: as `IN (SELECT ...)`, a planner that takes the table for a small one may
        # join the two by reading every event's id.
        ids = [event_id for event_id, _ in rows]
        await session.execute(delete(_EVENTS).where(one_of(_EVENTS.c.id, "ids")), {"ids": ids})
        return [created_at for _, created_at in rows]

    return await in_batches(sessionmaker, batch, size=_BATCH)
