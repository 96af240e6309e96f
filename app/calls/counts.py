"""The calls counted, for the status page and the metrics: read from `call_tally`, which triggers
on `call` keep (`app.db.tally`). Nothing here counts the calls themselves, but for the part of
an hour at the start of the last day."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Call, CallTally
from app.db.statements import table_of

_TALLY = table_of(CallTally).c
_DAY = timedelta(days=1)


async def calls_by_status(session: AsyncSession) -> dict[str, int]:
    """Every call, by status."""
    rows = await session.execute(
        select(_TALLY.status, func.sum(_TALLY.calls)).group_by(_TALLY.status)
    )
    return {str(status): int(calls) for status, calls in rows if calls}


async def recordings_by_status(session: AsyncSession) -> dict[str, int]:
    """Every call's recording, by where it stands in the archive."""
    rows = await session.execute(
        select(_TALLY.recording_status, func.sum(_TALLY.calls))
        .where(_TALLY.recording_status.is_not(None))
        .group_by(_TALLY.recording_status)
    )
    return {str(status): int(calls) for status, calls in rows if calls}


async def last_day(session: AsyncSession, *, now: datetime) -> dict[str, int]:
    """The calls made in the day before `now` (the database's time), by status: the whole hours
    from the tally, the part of an hour the day starts in from the calls themselves."""
    since = now - _DAY
    whole_hours_from = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    whole_hours_from += timedelta(hours=1)
    counted: dict[str, int] = {}
    for rows in (
        await session.execute(
            select(_TALLY.status, func.sum(_TALLY.calls))
            .where(_TALLY.hour >= whole_hours_from)
            .group_by(_TALLY.status)
        ),
        await session.execute(
            select(Call.status, func.count())
            .where(Call.created_at >= since, Call.created_at < whole_hours_from)
            .group_by(Call.status)
        ),
    ):
        for status, calls in rows:
            counted[str(status)] = counted.get(str(status), 0) + int(calls)
    return {status: calls for status, calls in counted.items() if calls}
