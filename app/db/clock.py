"""The database's clock: the one clock every replica shares, for the rate limit, claims and
leases. Read as seconds since the epoch."""

from __future__ import annotations

from sqlalchemy import ColumnElement, Double, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession

# julianday() of the Unix epoch.
_UNIX_EPOCH_JULIAN_DAY = 2440587.5


def clock(session: AsyncSession) -> ColumnElement[float]:
    """The database's time, as an SQL expression."""
    if session.get_bind().dialect.name == "postgresql":
        # clock_timestamp(), not now(): now() is frozen at the start of the transaction, which
        # may have waited on a lock.
        return cast(func.extract("epoch", func.clock_timestamp()), Double)
    return cast((func.julianday("now") - _UNIX_EPOCH_JULIAN_DAY) * 86400.0, Double)


async def db_now(session: AsyncSession) -> float:
    value = await session.scalar(select(clock(session)))
    assert value is not None
    return float(value)
