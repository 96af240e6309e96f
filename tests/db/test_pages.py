"""Where a call's new versions go (issue #26). A change of a call's status is no HOT update
(the status is indexed); PostgreSQL still writes the new version on the row's own page when
the page has room, and else wherever the free space map points: on a big table, a page read
from disk for nearly every callback. `call` leaves room on the pages it fills (its
fillfactor), so that the changes of a call's first minutes stay on its page."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.db.models import Call, CallStatus
from tests.support.calls import queued

pytestmark = pytest.mark.anyio

# Calls enough to fill a few pages.
CALLS = 200


async def pages_of(engine: AsyncEngine) -> dict[object, int]:
    """Each call's page (the block of its current version)."""
    async with engine.connect() as db:
        rows = await db.execute(text("SELECT id, (ctid::text::point)[0]::int FROM call"))
        return {call_id: int(block) for call_id, block in rows.all()}


async def test_a_calls_changes_stay_on_its_page(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    # The tests before left dead rows, whose pruning would make room on any page: gone first.
    async with engine.connect() as db:
        await (await db.execution_options(isolation_level="AUTOCOMMIT")).execute(
            text("VACUUM call")
        )
    now = datetime.now(UTC)
    async with sessionmaker() as session, session.begin():
        session.add_all(queued(f"+9190521{n:05d}", now) for n in range(CALLS))
    written = await pages_of(engine)
    assert len(set(written.values())) > 1, "the calls fill more than a page"

    # As callbacks change them: each change a transaction of its own.
    for status in (CallStatus.IN_PROGRESS, CallStatus.COMPLETED):
        for call_id in written:
            async with engine.begin() as db:
                await db.execute(update(Call).where(Call.id == call_id).values(status=status))

    assert await pages_of(engine) == written
