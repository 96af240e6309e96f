"""The event feed: every event, in an order that a later commit can never slip in behind.

Ids are taken before commit, so a transaction holding id 7 may commit after one holding id 8: a
reader that had moved past 8 would never see 7. The feed therefore orders events by position,
(the writing transaction's id, the event's id), and shows only events of transactions older than
the oldest one still in flight (`pg_snapshot_xmin`). Every event shown sorts before every event
not yet committed, whatever the number of replicas. A transaction left open holds the feed back
(not the webhooks) until it ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import BigInteger, ColumnElement, Text, cast, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.calls import cursors
from app.calls.errors import EventNotFound
from app.db.models import Delivery, Event, WebhookEndpoint

NOW = "now"  # `after=now`: only what commits from now on


@dataclass(frozen=True)
class FeedPage:
    items: list[str]  # each event's JSON, exactly as stored (and signed)
    next_cursor: str


async def read_feed(
    session: AsyncSession,
    *,
    after: str | None,
    types: Sequence[str] = (),
    call_id: uuid.UUID | None = None,
    limit: int = 100,
) -> FeedPage:
    """The events after the cursor `after` (from the oldest kept when None), and the cursor to
    ask for the next ones with (the same one when there are none yet)."""
    if after == NOW:
        # Every event of an older transaction is final and behind; any other may come.
        position = (int(await session.scalar(select(_oldest_in_flight())) or 0), 0)
    elif after:
        position = _decode(after)
    else:
        position = (0, 0)
    query = select(Event.txid, Event.id, Event.body).limit(limit)
    final = Event.txid < _oldest_in_flight()
    query = query.where(tuple_(Event.txid, Event.id) > tuple_(*position), final)
    query = query.order_by(Event.txid, Event.id)
    if types:
        query = query.where(Event.type.in_(types))
    if call_id is not None:
        query = query.where(Event.call_id == call_id)
    rows = (await session.execute(query)).all()
    if rows:
        position = (rows[-1].txid or 0, rows[-1].id)
    return FeedPage([row.body for row in rows], cursors.encode(list(position)))


async def get_event(session: AsyncSession, public_id: str) -> Event:
    event = await session.scalar(select(Event).where(Event.public_id == public_id))
    if event is None:
        raise EventNotFound(public_id)
    return event


def _oldest_in_flight() -> ColumnElement[int]:
    """The id of the oldest transaction still in flight (or of the next one, when none is)."""
    return cast(cast(func.pg_snapshot_xmin(func.pg_current_snapshot()), Text), BigInteger)


def _decode(cursor: str) -> tuple[int, int]:
    position = cursors.decode_row_ids(cursor, field="after", length=2)
    return position[0], position[1]


async def deliveries_of_call(
    session: AsyncSession, call_id: uuid.UUID
) -> list[tuple[Event, list[tuple[Delivery, str]]]]:
    """The call's events, oldest first, each with its deliveries and their endpoints' URLs."""
    events = list(
        await session.scalars(select(Event).where(Event.call_id == call_id).order_by(Event.id))
    )
    rows = await session.execute(
        select(Delivery, WebhookEndpoint.url)
        .join(WebhookEndpoint, WebhookEndpoint.id == Delivery.endpoint_id)
        .where(Delivery.call_id == call_id)
        .order_by(Delivery.id)
    )
    owed: dict[int, list[tuple[Delivery, str]]] = {}
    for delivery, url in rows:
        owed.setdefault(delivery.event_id, []).append((delivery, url))
    return [(event, owed.get(event.id, [])) for event in events]
