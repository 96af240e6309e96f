"""The database's clock: the one clock every replica shares. Every time the service stores is
read from it (`db_now`), so that times taken on different replicas compare."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Double, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

# julianday() of the Unix epoch.
_UNIX_EPOCH_JULIAN_DAY = 2440587.5


def clock(db: AsyncSession | AsyncConnection) -> ColumnElement[float]:
    """The database's time as seconds since the epoch, as an SQL expression."""
    dialect = db.get_bind().dialect if isinstance(db, AsyncSession) else db.dialect
    if dialect.name == "postgresql":
        # clock_timestamp(), not now(): now() is frozen at the start of the transaction, which
        # may have waited on a lock.
        return cast(func.extract("epoch", func.clock_timestamp()), Double)
    return cast((func.julianday("now") - _UNIX_EPOCH_JULIAN_DAY) * 86400.0, Double)


async def db_now(db: AsyncSession | AsyncConnection) -> datetime:
    """The database's time now."""
    seconds = await db.scalar(select(clock(db)))
    assert seconds is not None
    return datetime.fromtimestamp(float(seconds), UTC)
