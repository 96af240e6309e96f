"""Events are kept EVENT_RETENTION_DAYS, then deleted with their deliveries and attempts."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.batches import in_batches
from app.db.clock import db_now
from app.db.models import Event
from app.db.statements import one_of, table_of

_BATCH = 1000  # events deleted per transaction, so that no lock is held for long
_EVENTS = table_of(Event)


async def forget_old_events(sessionmaker: async_sessionmaker[AsyncSession], *, days: float) -> int:
    """Delete the events older than `days`; says how many.

    Each batch reads on from the time of the previous one's newest event, not from the oldest
    in the index: the entries of the events a run has deleted stay in the index until VACUUM
    removes them, and every batch would walk over all of them again (on ten million calls,
    most of a batch's time: bench/README.md, "Retention from where it stopped")."""
    since: datetime | None = None

    async def batch(session: AsyncSession) -> int:
        nonlocal since
        before = await db_now(session) - timedelta(days=days)
        oldest = select(Event.id, Event.created_at).where(Event.created_at < before)
        if since is not None:  # an event is never made older than now: none is left behind
            oldest = oldest.where(Event.created_at >= since)
        rows = (await session.execute(oldest.order_by(Event.created_at).limit(_BATCH))).all()
        ids = [event_id for event_id, _ in rows]
        if rows:
            since = rows[-1].created_at
        # By their ids: as `IN (SELECT ...)`, a planner that takes the table for a small one may
        # join the two by reading every event's id.
        await session.execute(delete(_EVENTS).where(one_of(_EVENTS.c.id, "ids")), {"ids": ids})
        return len(ids)

    return await in_batches(sessionmaker, batch, size=_BATCH)
