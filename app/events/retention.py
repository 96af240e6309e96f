"""Events are kept EVENT_RETENTION_DAYS, then deleted with their deliveries and attempts."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.batches import in_batches
from app.db.clock import db_now
from app.db.models import Event
from app.db.statements import one_of, table_of

_BATCH = 1000  # events deleted per transaction, so that no lock is held for long
_EVENTS = table_of(Event)


async def forget_old_events(sessionmaker: async_sessionmaker[AsyncSession], *, days: float) -> int:
    """Delete the events older than `days`; says how many."""

    async def batch(session: AsyncSession) -> int:
        before = await db_now(session) - timedelta(days=days)
        oldest = select(Event.id).where(Event.created_at < before).limit(_BATCH)
        ids = list(await session.scalars(oldest))
        # By their ids: as `IN (SELECT ...)`, a planner that takes the table for a small one may
        # join the two by reading every event's id.
        await session.execute(delete(_EVENTS).where(one_of(_EVENTS.c.id, "ids")), {"ids": ids})
        return len(ids)

    return await in_batches(sessionmaker, batch, size=_BATCH)
