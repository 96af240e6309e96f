"""The dispatch claim on the database: calls it holds back do not keep it from the next due, and
however long it takes, it grants no more than the account's budget."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.calls import ratelimit
from app.calls.dispatch import claim_due
from app.calls.policy import NumberLimit
from app.db.models import Call, CallStatus, Dial, ExotelRequest
from tests.support.calls import queued

pytestmark = pytest.mark.anyio

BUDGET = ratelimit.Budget(limit=100, window=60, margin=0)
LIMITED = "+919052161110"  # dialled once this hour: at its limit
FREE = "+919052161120"


async def test_calls_held_back_for_their_number_do_not_keep_the_claim_from_the_next(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    now = datetime.now(UTC)
    async with sessionmaker() as session, session.begin():
        earlier = queued(LIMITED, now - timedelta(minutes=10))
        held = [queued(LIMITED, now - timedelta(minutes=5 - n)) for n in range(2)]
        free = queued(FREE, now - timedelta(minutes=1))
        session.add_all([earlier, *held, free])
        await session.flush()
        session.add(Dial(call_id=earlier.id, n=1, number=LIMITED, sent_at=now))
        earlier.status = CallStatus.IN_PROGRESS

    async with sessionmaker() as session, session.begin():
        claimed = await claim_due(
            session, budget=BUDGET, worker="w", number_limit=NumberLimit.parse("1/1h"), limit=1
        )

    # The two calls to the number at its limit, older in the queue, wait for its next hour;
    # the claim then takes the next call due.
    assert isinstance(claimed, list)
    ((call, attempt),) = claimed
    assert (call.id, attempt) == (free.id, 1)
    async with sessionmaker() as session:
        for call in held:
            stored = await session.get(Call, call.id)
            assert stored is not None
            assert stored.status == CallStatus.SCHEDULED
            assert stored.next_attempt_at is not None
            assert stored.next_attempt_at > now + timedelta(minutes=59)


# A budget of one request a window, and a claim slowed past the window at every call it takes.
ONE_A_WINDOW = ratelimit.Budget(limit=1, window=0.2, margin=0)
SLOW_DIAL = 0.3


@pytest.fixture
async def slow_dials(engine: AsyncEngine) -> AsyncIterator[None]:
    """Every row written into `dial` takes SLOW_DIAL seconds of the database's time."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "CREATE FUNCTION slow_dial() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN PERFORM pg_sleep({SLOW_DIAL}); RETURN NEW; END $$"
            )
        )
        await connection.execute(
            text(
                "CREATE TRIGGER slow_dial BEFORE INSERT ON dial "
                "FOR EACH ROW EXECUTE FUNCTION slow_dial()"
            )
        )
    yield
    async with engine.begin() as connection:
        await connection.execute(text("DROP FUNCTION slow_dial() CASCADE"))


async def test_a_claim_longer_than_the_window_grants_no_more_than_the_budget(
    sessionmaker: async_sessionmaker[AsyncSession], slow_dials: None
) -> None:
    now = datetime.now(UTC)
    async with sessionmaker() as session, session.begin():
        session.add_all(
            queued(f"+91905216111{n}", now - timedelta(minutes=10 - n)) for n in range(4)
        )

    async with sessionmaker() as session, session.begin():
        claimed = await claim_due(
            session, budget=ONE_A_WINDOW, worker="w", number_limit=None, limit=4
        )

    # Its calls are all sent once it commits: one, however far the window slid meanwhile.
    assert isinstance(claimed, list)
    assert len(claimed) == 1
    async with sessionmaker() as session:
        (grant,) = await session.scalars(select(ExotelRequest.at))
        (dial,) = await session.scalars(select(Dial.sent_at))
    # And it is counted from the claim's end, not from its start.
    assert grant - dial >= timedelta(seconds=SLOW_DIAL)
