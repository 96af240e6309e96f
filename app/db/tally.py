"""The tallies: counts that triggers keep as rows of +n and -n (`call_tally` of the calls,
`delivery_tally` of the deliveries owed), so that no writer waits on another's count, and that
a page or a scrape reads a few hundred rows instead of counting millions. `fold` sums each
tally's rows into one a key, every few seconds (the periodic job `counts`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import (
    CTE,
    ColumnElement,
    Insert,
    Table,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal_column,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.base import UTCDateTime
from app.db.clock import db_now
from app.db.models import CallTally, DeliveryTally
from app.db.statements import table_of

# The calls' hours kept apart: the last day's, and one more for a fold that ran a while ago.
# Older hours are folded into one row, so the tally stays a few hundred rows however old the
# service.
_CALL_HOURS_APART = timedelta(hours=25)
_EARLIER: ColumnElement[datetime] = literal_column("'-infinity'::timestamptz")


async def fold(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """Sum each tally's rows into one a key."""
    async with sessionmaker() as session, session.begin():
        kept_from = await db_now(session) - _CALL_HOURS_APART
        for statement in _folds():
            await session.execute(statement, {"kept_from": kept_from})


def _folding(
    tally: Table, amount: str, keys: Callable[[CTE], Sequence[ColumnElement[object]]]
) -> Insert:
    """Delete the tally's rows and insert their sums by `keys` (of the deleted rows), but for
    those that come to nothing."""
    gone = delete(tally).returning(*tally.c).cte(f"{tally.name}_gone")
    keyed = keys(gone)
    summed = (
        select(*keyed, func.sum(gone.c[amount]))
        .group_by(*keyed)
        .having(func.sum(gone.c[amount]) != 0)
    )
    return insert(tally).from_select([*(key.name for key in keyed), amount], summed)


@functools.cache
def _folds() -> tuple[Insert, ...]:
    kept_from = bindparam("kept_from", type_=UTCDateTime)

    def call_keys(gone: CTE) -> list[ColumnElement[object]]:
        hour = case((gone.c.hour < kept_from, _EARLIER), else_=gone.c.hour)
        return [hour.label("hour"), gone.c.status, gone.c.recording_status]

    def delivery_keys(gone: CTE) -> list[ColumnElement[object]]:
        return [gone.c.endpoint_id, gone.c.state]

    return (
        _folding(table_of(CallTally), "calls", call_keys),
        _folding(table_of(DeliveryTally), "deliveries", delivery_keys),
    )
