"""A call's next versions stay on its page (issue #26; docs/database.md, "Room on a call's
page"): while other transactions still see its older versions, as under a load of callbacks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.db.models import Call, CallStatus
from tests.support.calls import queued

pytestmark = pytest.mark.anyio

CALLS = 40  # a few pages of calls as big as a busy history's (about 700 bytes)


async def pages_of(engine: AsyncEngine) -> dict[uuid.UUID, int]:
    """Each call's page: the block of its current version."""
    async with engine.connect() as db:
        rows = await db.execute(text("SELECT id, (ctid::text::point)[0]::int FROM call"))
        return dict(rows.all())


async def test_a_calls_next_versions_stay_on_its_page(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    # The rows the tests before deleted are gone, so that the calls fill pages of their own.
    async with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as db:
        await db.execute(text("VACUUM call"))
    now = datetime.now(UTC)
    async with sessionmaker() as session, session.begin():
        session.add_all(
            queued(
                f"+9190521{n:05d}",
                now,
                flow_url="http://my.exotel.com/fake-account/exoml/start_voice/" + "9" * 400,
                custom_field="order-" + "7" * 120,
            )
            for n in range(CALLS)
        )
    written = await pages_of(engine)
    one_a_page = {page: call_id for call_id, page in written.items()}.values()
    assert len(one_a_page) > 2, "the calls fill a few pages"

    # Another transaction's snapshot sees every version: none can be pruned meanwhile.
    repeatable = engine.execution_options(isolation_level="REPEATABLE READ")
    async with repeatable.connect() as other, other.begin():
        await other.execute(text("SELECT count(*) FROM call"))  # its snapshot, to the end
        for status in (CallStatus.IN_PROGRESS, CallStatus.COMPLETED):
            for call_id in one_a_page:
                async with engine.begin() as db:
                    changed = update(Call).where(Call.id == call_id).values(status=status)
                    await db.execute(changed)
            assert await pages_of(engine) == written
