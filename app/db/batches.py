"""Work on a large table done as many small transactions, oldest rows first: the retentions'
deletes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TypeVarTuple

from sqlalchemy import Select, SQLColumnExpression
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

# Between two batches, a pause this many times as long as the batch took: a run that deletes
# a month of history takes at most about half of what the database gives this process, and
# the callbacks coming meanwhile keep their time (bench/README.md, "A year of calls later").
PAUSE_PER_BATCH_TIME = 1.0

Columns = TypeVarTuple("Columns")

# A batch: given where the one before stopped (None for the first), does the oldest rows
# from there (`oldest`) and says their times, oldest first.
Batch = Callable[[AsyncSession, datetime | None], Awaitable[Sequence[datetime]]]


async def in_batches(
    sessionmaker: async_sessionmaker[AsyncSession], batch: Batch, *, size: int
) -> int:
    """`batch` in a transaction of its own, again and again until it does fewer than `size`
    rows; says how many it did in all.

    Each batch reads on from the time of the previous one's newest row, not from the oldest in
    the index: the entries of the rows a run has deleted (or taken out of a partial index) stay
    in the index until VACUUM removes them, and every batch would walk over all of them again
    (on ten million calls, most of a batch's time: bench/README.md, "Retention from where it
    stopped")."""
    done = 0
    since: datetime | None = None
    while True:
        started = time.monotonic()
        async with sessionmaker() as session, session.begin():
            times = await batch(session, since)
        done += len(times)
        if len(times) < size:
            return done
        since = times[-1]
        await asyncio.sleep((time.monotonic() - started) * PAUSE_PER_BATCH_TIME)


def oldest(
    query: Select[*Columns],
    at: SQLColumnExpression[datetime | None],
    *,
    before: datetime,
    since: datetime | None,
) -> Select[*Columns]:
    """`query`'s rows whose time `at` is before `before` and from `since` on, oldest first.
    The batches before did every row older than `since`, but for one written meanwhile with a
    time already past (a callback replayed from the spool keeps the time it came): the next
    run does it. Rows of the time `since` itself are read again; those done are gone."""
    query = query.where(at < before)
    if since is not None:
        query = query.where(at >= since)
    return query.order_by(at)
