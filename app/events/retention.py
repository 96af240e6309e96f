"""Events are kept EVENT_RETENTION_DAYS, then deleted with their deliveries and attempts."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.clock import db_now
from app.db.models import Event

_BATCH = 1000  # events deleted per transaction, so that no lock is held for long


async def forget_old_events(sessionmaker: async_sessionmaker[AsyncSession], *, days: float) -> int:
    """Delete the events older than `days`; says how many."""
    forgotten = 0
    while True:
        async with sessionmaker() as session, session.begin():
            before = await db_now(session) - timedelta(days=days)
            oldest = select(Event.id).where(Event.created_at < before).limit(_BATCH)
            deleted = await session.execute(delete(Event).where(Event.id.in_(oldest)))
        count = getattr(deleted, "rowcount", 0) or 0
        forgotten += count
        if count < _BATCH:
            return forgotten
