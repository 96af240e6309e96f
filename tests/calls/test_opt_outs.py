"""`app.calls.opt_outs`: from a session and from a Core connection, on the real database."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.calls import opt_outs
from app.calls.opt_outs import OptOutSource

pytestmark = pytest.mark.anyio

OPTED_OUT = ["+919052161110", "+919052161111", "+14155550100"]


async def test_opted_out_says_which_numbers_are_from_a_connection_and_a_session(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with sessionmaker.begin() as session:
        for number in OPTED_OUT:
            await opt_outs.add(session, number=number)
    asked = [*OPTED_OUT, "+919052161112", OPTED_OUT[0]]

    async with engine.connect() as connection:
        assert await opt_outs.opted_out(connection, asked) == set(OPTED_OUT)
        assert await opt_outs.opted_out(connection, []) == set()
    async with sessionmaker() as session:
        assert await opt_outs.opted_out(session, iter(asked)) == set(OPTED_OUT)


async def test_nothing_is_committed_by_the_functions(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with engine.connect() as connection:
        entry, created = await opt_outs.add(
            connection, number=OPTED_OUT[0], reason="pressed 9", source=OptOutSource.PASSTHRU
        )
        assert (entry.source, entry.reason, created) == (OptOutSource.PASSTHRU, "pressed 9", True)
        assert await opt_outs.opted_out(connection, OPTED_OUT) == {OPTED_OUT[0]}
        await connection.rollback()

    async with sessionmaker() as session:
        assert await opt_outs.get(session, number=OPTED_OUT[0]) is None


async def test_concurrent_adds_of_one_number_make_one_entry(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async def add(reason: str) -> tuple[opt_outs.OptOutEntry, bool]:
        async with sessionmaker.begin() as session:
            return await opt_outs.add(session, number=OPTED_OUT[0], reason=reason)

    results = await asyncio.gather(*(add(f"reason {n}") for n in range(8)))

    assert sum(created for _, created in results) == 1
    assert len({entry for entry, _ in results}) == 1
    async with sessionmaker() as session:
        assert await opt_outs.remove(session, number=OPTED_OUT[0]) is True
        assert await opt_outs.remove(session, number=OPTED_OUT[0]) is False
