"""Work on a large table done as many small transactions: the retentions' deletes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

# Between two batches, a pause this many times as long as the batch took: a run that deletes
# a month of history takes at most about half of what the database gives this process, and
# the callbacks coming meanwhile keep their time (bench/README.md, "A year of calls later").
PAUSE_PER_BATCH_TIME = 1.0


async def in_batches(
    sessionmaker: async_sessionmaker[AsyncSession],
    batch: Callable[[AsyncSession], Awaitable[int]],
    *,
    size: int,
) -> int:
    """`batch` in a transaction of its own, again and again until it does fewer than `size`
    rows; says how many it did in all."""
    done = 0
    while True:
        started = time.monotonic()
        async with sessionmaker() as session, session.begin():
            rows = await batch(session)
        done += rows
        if rows < size:
            return done
        await asyncio.sleep((time.monotonic() - started) * PAUSE_PER_BATCH_TIME)
