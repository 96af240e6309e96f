"""Each endpoint's backlog (app/events/endpoints.py `backlogs`): what `delivery_tally`'s triggers
keep, folded or not, is what a count of the owed deliveries themselves says, whatever wrote
them; and the oldest owed is the oldest owed. The deliveries due (`exocall_jobs_due`) leave out
those that an endpoint disabled, or failing for over a minute, holds back."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import tally
from app.db.clock import db_now
from app.db.models import Call, CallStatus, Delivery, DeliveryState, Event, WebhookEndpoint
from app.events.deliverer import Delivering
from app.events.endpoints import OWED, Backlog, backlogs
from app.jobs import worker

pytestmark = pytest.mark.anyio


async def counted(session: AsyncSession) -> dict[uuid.UUID, Backlog]:
    rows = await session.execute(
        select(Delivery.endpoint_id, func.count(), func.min(Delivery.created_at))
        .where(Delivery.state.in_(OWED))
        .group_by(Delivery.endpoint_id)
    )
    return {endpoint_id: Backlog(count, oldest) for endpoint_id, count, oldest in rows}


async def setting_up(
    session: AsyncSession, now: datetime
) -> tuple[list[uuid.UUID], uuid.UUID, list[int]]:
    """Three endpoints, and a call with forty events."""
    endpoints = [
        await session.scalar(
            insert(WebhookEndpoint)
            .values(
                url=f"http://127.0.0.1:9/{n}",
                enabled=True,
                secret="whsec_ZmFrZS1zZWNyZXQtZm9yLXRlc3RzLW9ubHk=",
                previous_secrets=[],
                created_at=now,
                updated_at=now,
            )
            .returning(WebhookEndpoint.id)
        )
        for n in range(3)
    ]
    call_id = await session.scalar(
        insert(Call)
        .values(
            status=CallStatus.COMPLETED,
            from_number="+919052161110",
            caller_id="08030752400",
            created_at=now,
            updated_at=now,
        )
        .returning(Call.id)
    )
    events = [
        await session.scalar(
            insert(Event)
            .values(
                public_id=f"evt_{uuid.uuid4().hex}",
                type="call.completed",
                call_id=call_id,
                sequence=n,
                created_at=now,
                body="{}",
            )
            .returning(Event.id)
        )
        for n in range(40)
    ]
    assert call_id is not None
    return [e for e in endpoints if e], call_id, [e for e in events if e]


async def test_the_backlogs_are_the_owed_deliveries_counted_through_any_writes_and_folds(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    rng = random.Random(26)
    async with sessionmaker() as session, session.begin():
        now = await db_now(session)
        endpoints, call_id, events = await setting_up(session, now)
    free = [(event, endpoint) for event in events for endpoint in endpoints]
    rng.shuffle(free)
    for step in range(150):
        async with sessionmaker() as session, session.begin():
            ids = list(await session.scalars(select(Delivery.id)))
            move = rng.random()
            if (move < 0.3 or not ids) and free:
                taken = rng.randrange(1, 6)
                many, free = free[:taken], free[taken:]
                await session.execute(
                    insert(Delivery),
                    [
                        {
                            "event_id": event,
                            "endpoint_id": endpoint,
                            "call_id": call_id,
                            "sequence": 1,
                            "state": rng.choice(list(DeliveryState)),
                            "attempts": 0,
                            "next_attempt_at": now,
                            "trigger": "scheduled",
                            "created_at": now - timedelta(minutes=rng.randrange(600)),
                        }
                        for event, endpoint in many
                    ],
                )
            elif move < 0.8 and ids:
                chosen = rng.sample(ids, min(len(ids), rng.randrange(1, 4)))
                await session.execute(
                    update(Delivery)
                    .where(Delivery.id.in_(chosen))
                    .values(state=rng.choice(list(DeliveryState)))
                )
            elif move < 0.9 and ids:
                await session.execute(delete(Delivery).where(Delivery.id == rng.choice(ids)))
            else:
                await session.rollback()
                await tally.fold(sessionmaker)
                continue
        if step % 10 == 9:
            async with sessionmaker() as session:
                assert await backlogs(session) == await counted(session), f"after step {step}"
    async with sessionmaker() as session:
        one = endpoints[0]
        assert await backlogs(session, of=one) == {
            k: v for k, v in (await counted(session)).items() if k == one
        }
    # An endpoint deleted takes its deliveries, and its backlog, with it.
    async with sessionmaker() as session, session.begin():
        await session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoints[1]))
    await tally.fold(sessionmaker)
    async with sessionmaker() as session:
        assert endpoints[1] not in await backlogs(session)
        assert await backlogs(session) == await counted(session)


async def test_the_deliveries_due_leave_out_those_an_endpoint_down_holds_back(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with sessionmaker() as session, session.begin():
        now = await db_now(session)
        endpoints, call_id, events = await setting_up(session, now)
        # Each endpoint is owed 30 events due (for 10 min, 1 min, an hour), 5 retried in an hour,
        # and 2 in flight.
        waited = dict(zip(endpoints, (600, 60, 3600), strict=True))
        await session.execute(
            insert(Delivery),
            [
                {
                    "event_id": event,
                    "endpoint_id": endpoint,
                    "call_id": call_id,
                    "sequence": n,
                    "state": DeliveryState.SENDING if n >= 35 else DeliveryState.PENDING,
                    "claimed_by": "a worker" if n >= 35 else None,
                    "attempts": 0,
                    "next_attempt_at": now
                    + (timedelta(hours=1) if n >= 30 else timedelta(seconds=-waited[endpoint])),
                    "trigger": "scheduled",
                    "created_at": now,
                }
                for endpoint in endpoints
                for n, event in enumerate(events[:37])
            ],
        )
        # The second has failed for 30 s (still tried as its deliveries come due), the third
        # for two minutes: tried one delivery at a time, its others held back.
        for endpoint, failing in zip(endpoints[1:], (30, 120), strict=True):
            await session.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == endpoint)
                .values(failing_since=now - timedelta(seconds=failing))
            )

    async def due() -> worker.Backlog:
        async with sessionmaker() as session:
            return (await worker.backlogs(session, {"delivery": Delivering.queue}))["delivery"]

    work = await due()
    assert (work.due, work.running) == (60, 6)
    assert 600 <= work.oldest_due_age_seconds < 660
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoints[0])
            .values(enabled=False, disabled_reason="disabled through the API")
        )
    work = await due()
    assert (work.due, work.running) == (30, 6)
    assert 60 <= work.oldest_due_age_seconds < 600
    async with sessionmaker() as session, session.begin():  # the third answers again
        await session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoints[2])
            .values(failing_since=None)
        )
    work = await due()
    assert work.due == 60
    assert 3600 <= work.oldest_due_age_seconds < 4200
