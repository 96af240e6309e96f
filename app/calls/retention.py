"""Callbacks and Passthru requests that matched no call are kept CALLBACK_UNMATCHED_RETENTION_DAYS
(trimmed to Exotel's fields: `ReceivedCallback.without_call`), then deleted. Until then, a call
that learns their SID takes them (`CallStore.learn_sid`); after, one whose call never came is
gone, having changed nothing."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.batches import in_batches, oldest
from app.db.clock import db_now
from app.db.models import Receipt
from app.db.statements import one_of, table_of

log = logging.getLogger(__name__)

_BATCH = 1000  # receipts deleted per transaction, so that no lock is held for long
_RECEIPTS = table_of(Receipt)


async def forget_unmatched_receipts(
    sessionmaker: async_sessionmaker[AsyncSession], *, days: float
) -> int:
    """Delete what was received more than `days` ago for no call; says how many."""

    async def batch(session: AsyncSession, since: datetime | None) -> list[datetime]:
        before = await db_now(session) - timedelta(days=days)
        unmatched = select(Receipt.id, Receipt.received_at).where(Receipt.call_id.is_(None))
        read = (
            oldest(unmatched, Receipt.received_at, before=before, since=since)
            .limit(_BATCH)
            # A row a call is taking now is skipped; one taken meanwhile is no longer
            # unmatched when the DELETE reads it again.
            .with_for_update(skip_locked=True)
        )
        rows = (await session.execute(read)).all()
        # By their ids: as `IN (SELECT ...)`, a planner that takes the table for a small one may
        # join the two by reading every receipt's id.
        gone = delete(_RECEIPTS).where(one_of(_RECEIPTS.c.id, "ids"), _RECEIPTS.c.call_id.is_(None))
        await session.execute(gone, {"ids": [receipt_id for receipt_id, _ in rows]})
        return [received_at for _, received_at in rows]

    forgotten = await in_batches(sessionmaker, batch, size=_BATCH)
    if forgotten:
        log.info("forgot %d callbacks that matched no call", forgotten)
    return forgotten
