"""The calls counted (app/calls/counts.py): what `call_tally`'s triggers keep, folded or not,
is what a count of the calls themselves says, whatever wrote them."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta

import httpx
import pytest
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.calls import counts
from app.db import tally
from app.db.clock import db_now
from app.db.models import Call, CallStatus, CallTally, RecordingStatus
from tests.conftest import place_body

pytestmark = pytest.mark.anyio

RECORDINGS = [None, *RecordingStatus]


async def counted(session: AsyncSession) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """By status, by recording status, and made in the last day: counted from the calls."""
    now = await db_now(session)

    async def by(column, *where) -> dict[str, int]:  # type: ignore[no-untyped-def]
        rows = await session.execute(select(column, func.count()).where(*where).group_by(column))
        return {str(value): n for value, n in rows if value is not None}

    return (
        await by(Call.status),
        await by(Call.recording_status),
        await by(Call.status, Call.created_at >= now - timedelta(days=1)),
    )


async def kept(session: AsyncSession) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    now = await db_now(session)
    return (
        await counts.calls_by_status(session),
        await counts.recordings_by_status(session),
        await counts.last_day(session, now=now),
    )


async def now_of(sessionmaker: async_sessionmaker[AsyncSession]) -> datetime:
    async with sessionmaker() as session:
        return await db_now(session)


def a_call(rng: random.Random, now: datetime) -> dict[str, object]:
    return {
        "status": rng.choice(list(CallStatus)),
        "recording_status": rng.choice(RECORDINGS),
        "from_number": f"+9190521{rng.randrange(10**5):05d}",
        "caller_id": "08030752400",
        "created_at": now - timedelta(hours=rng.uniform(0, 60)),
        "updated_at": now,
    }


async def test_the_tally_is_the_calls_counted_through_any_writes_and_folds(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    rng = random.Random(26)
    now = await now_of(sessionmaker)
    for step in range(120):
        async with sessionmaker() as session, session.begin():
            ids = list(await session.scalars(select(Call.id)))
            move = rng.random()
            if move < 0.3 or not ids:
                for _ in range(rng.randrange(1, 6)):  # one statement a call, and many in one
                    await session.execute(insert(Call).values(**a_call(rng, now)))
                many = [a_call(rng, now) for _ in range(rng.randrange(1, 8))]
                await session.execute(insert(Call), many)
            elif move < 0.8:
                chosen = rng.sample(ids, min(len(ids), rng.randrange(1, 4)))
                changes = a_call(rng, now)
                changed = rng.choice(["status", "recording_status", "created_at", "updated_at"])
                await session.execute(
                    update(Call).where(Call.id.in_(chosen)).values({changed: changes[changed]})
                )
            elif move < 0.9:
                await session.execute(delete(Call).where(Call.id == rng.choice(ids)))
            else:
                await session.rollback()
                await tally.fold(sessionmaker)
                continue
        if step % 10 == 9:
            async with sessionmaker() as session:
                assert await kept(session) == await counted(session), f"after step {step}"


async def test_a_fold_leaves_a_row_a_count_and_old_hours_in_one(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    rng = random.Random(5)
    now = await now_of(sessionmaker)
    async with sessionmaker() as session, session.begin():
        await session.execute(insert(Call), [a_call(rng, now) for _ in range(300)])
        # Moved back and forth: each move is two rows, which the fold sums to nothing.
        await session.execute(update(Call).values(status=CallStatus.QUEUED))
        await session.execute(update(Call).values(status=CallStatus.COMPLETED))
    await tally.fold(sessionmaker)
    async with sessionmaker() as session:
        folded = select(
            CallTally.hour, CallTally.status, CallTally.recording_status, CallTally.calls
        )
        rows = (await session.execute(folded)).all()
        assert len(rows) == len({row[:3] for row in rows})  # one a (hour, status, recording)
        hours = await session.scalar(
            select(func.count(func.distinct(CallTally.hour))).where(
                CallTally.hour < text("now() - interval '25 hours'")
            )
        )
        assert hours == 1  # -infinity: every hour before the last day and an hour
        assert all(calls != 0 for *_, calls in rows)
        assert await kept(session) == await counted(session)


async def test_writers_of_different_calls_never_wait_for_each_other_on_the_count(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    rng = random.Random(7)
    now = await now_of(sessionmaker)
    async with sessionmaker() as session, session.begin():
        first, second = (
            await session.scalars(
                insert(Call).returning(Call.id),
                [a_call(rng, now) | {"status": CallStatus.QUEUED} for _ in range(2)],
            )
        ).all()
    async with engine.connect() as holding:
        # A change of status left uncommitted holds its call's row, and only that.
        await holding.execute(
            update(Call).where(Call.id == first).values(status=CallStatus.IN_PROGRESS)
        )
        async with engine.connect() as other:
            await other.execute(text("SET lock_timeout = '5s'"))
            await other.execute(
                update(Call).where(Call.id == second).values(status=CallStatus.IN_PROGRESS)
            )
            await other.execute(insert(Call).values(**a_call(rng, now)))
            await other.commit()  # a count kept in one row per status would have waited here
        await holding.commit()
    async with sessionmaker() as session:
        assert await kept(session) == await counted(session)


async def test_calls_placed_through_the_api_are_counted_on_the_status_page_and_metrics(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    placed = await asyncio.gather(
        *(client.post("/calls", json=place_body(f"+9190521611{n:02d}")) for n in range(5))
    )
    assert all(answer.status_code in (201, 202) for answer in placed)
    async with sessionmaker() as session:
        by_status, _, last_day = await kept(session)
    assert sum(by_status.values()) == sum(last_day.values()) == 5
    metrics = (await client.get("/metrics")).text
    assert (
        sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in metrics.splitlines()
            if line.startswith("exocall_calls{")
        )
        == 5
    )
