"""The database's clock: the one clock every replica shares. Every time the service stores is
read from it (`db_now`), so that times taken on different replicas compare."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Double, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession


def clock() -> ColumnElement[float]:
    """The database's time as seconds since the epoch, as an SQL expression. clock_timestamp(),
    not now(): now() is frozen at the start of the transaction, which may have waited on a lock."""
    return cast(func.extract("epoch", func.clock_timestamp()), Double)


async def db_now(db: AsyncSession | AsyncConnection) -> datetime:
    """The database's time now."""
    seconds = await db.scalar(select(clock()))
    assert seconds is not None
    return datetime.fromtimestamp(float(seconds), UTC)
