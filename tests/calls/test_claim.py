"""The dispatch claim on the database: calls it holds back do not keep it from the next due."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.calls import ratelimit
from app.calls.dispatch import claim_due
from app.calls.policy import NumberLimit
from app.db.models import Call, CallStatus, Dial
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
