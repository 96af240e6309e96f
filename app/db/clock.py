"""The database's clock: the one clock every replica shares, for the rate limit, claims and
leases. Read as seconds since the epoch."""

from __future__ import annotations

from sqlalchemy import ColumnElement, Double, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession

# julianday() of the Unix epoch.
_UNIX_EPOCH_JULIAN_DAY = 2440587.5


def clock(dialect_name: str) -> ColumnElement[float]:
    if dialect_name == "postgresql":
        # clock_timestamp(), not now(): now() is frozen at the start of the transaction, which
        # may have waited on a lock.
        return cast(func.extract("epoch", func.clock_timestamp()), Double)
    return cast((func.julianday("now") - _UNIX_EPOCH_JULIAN_DAY) * 86400.0, Double)


async def db_now(session: AsyncSession) -> float:
    value = await session.scalar(select(clock(session.get_bind().dialect.name)))
    assert value is not None
    return float(value)
