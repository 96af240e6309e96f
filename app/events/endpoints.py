"""Webhook endpoints: registering, changing and removing them, their secrets, their health, and
putting events back in their queue (a redelivery, a recovery)."""

from __future__ import annotations

import base64
import functools
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Update, func, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.calls.errors import EndpointNotFound, InvalidField
from app.db.clock import db_now
from app.db.models import (
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    DeliveryTally,
    Event,
    WebhookEndpoint,
)
from app.db.statements import one_of, table_of, written_in
from app.events.targets import TargetPolicy, TargetRefused
from app.ids import new_id

# Svix keeps at most 10 old keys; so do we.
_MAX_PREVIOUS_SECRETS = 10
# A recovery puts back at most this many events (Svix's limit).
RECOVER_LIMIT = 10_000
OWED = (DeliveryState.PENDING, DeliveryState.SENDING)


def new_secret() -> str:
    """A Standard Webhooks secret: 32 random bytes, base64, after `whsec_`."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def signing_secrets(
    secret: str, previous_secrets: list[dict[str, str]], now: datetime
) -> list[str]:
    """The secrets a delivery is signed with now: the endpoint's `secret`, and those a rotation
    replaced less than WEBHOOK_SECRET_OVERLAP_SECONDS ago."""
    earlier = [
        entry["secret"]
        for entry in previous_secrets
        if datetime.fromisoformat(entry["until"]) > now
    ]
    return [secret, *earlier]


async def _checked_url(policy: TargetPolicy, url: str) -> str:
    try:
        await policy.check_url(url)
    except TargetRefused as exc:
        raise InvalidField("url", str(exc)) from exc
    return url


async def create_endpoint(
    session: AsyncSession,
    *,
    url: str,
    event_types: Sequence[str] | None,
    description: str | None,
    policy: TargetPolicy,
) -> WebhookEndpoint:
    now = await db_now(session)
    endpoint = WebhookEndpoint(
        id=new_id(),
        url=await _checked_url(policy, url),
        event_types=list(event_types) if event_types is not None else None,
        description=description,
        enabled=True,
        secret=new_secret(),
        previous_secrets=[],
        created_at=now,
        updated_at=now,
    )
    session.add(endpoint)
    await session.flush()
    return endpoint


async def get_endpoint(session: AsyncSession, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    # FOR NO KEY UPDATE: deliveries inserted meanwhile (their foreign key) do not wait.
    endpoint = await session.get(WebhookEndpoint, endpoint_id, with_for_update={"key_share": True})
    if endpoint is None:
        raise EndpointNotFound(endpoint_id)
    return endpoint


async def list_endpoints(session: AsyncSession) -> list[WebhookEndpoint]:
    query = select(WebhookEndpoint).order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    return list(await session.scalars(query))


async def change_endpoint(
    session: AsyncSession, endpoint_id: uuid.UUID, *, changes: dict[str, Any], policy: TargetPolicy
) -> WebhookEndpoint:
    """Apply the fields given. Enabling an endpoint clears why it was disabled, and its
    deliveries held back meanwhile go out again. A new URL starts with a clean record: the old
    one's failures neither hold it back nor count towards disabling it."""
    endpoint = await get_endpoint(session, endpoint_id)
    if "url" in changes:
        url = await _checked_url(policy, changes["url"])
        if url != endpoint.url:
            endpoint.url, endpoint.failing_since, endpoint.retry_at = url, None, None
    if "event_types" in changes:
        types = changes["event_types"]
        endpoint.event_types = list(types) if types is not None else None
    if "description" in changes:
        endpoint.description = changes["description"]
    if "enabled" in changes:
        if changes["enabled"] and not endpoint.enabled:
            endpoint.disabled_reason = None
            endpoint.failing_since = endpoint.retry_at = None
        elif not changes["enabled"] and endpoint.enabled:
            endpoint.disabled_reason = "disabled through the API"
        endpoint.enabled = changes["enabled"]
    endpoint.updated_at = await db_now(session)
    return endpoint


async def delete_endpoint(session: AsyncSession, endpoint_id: uuid.UUID) -> None:
    await session.delete(await get_endpoint(session, endpoint_id))


async def rotate_secret(
    session: AsyncSession, endpoint_id: uuid.UUID, *, overlap: float
) -> WebhookEndpoint:
    """A new secret; the old one goes on signing beside it for `overlap` seconds."""
    endpoint = await get_endpoint(session, endpoint_id)
    now = await db_now(session)
    until = (now + timedelta(seconds=overlap)).isoformat()
    kept = [e for e in endpoint.previous_secrets if datetime.fromisoformat(e["until"]) > now]
    previous = [{"secret": endpoint.secret, "until": until}, *kept]
    endpoint.previous_secrets = previous[:_MAX_PREVIOUS_SECRETS]
    endpoint.secret = new_secret()
    endpoint.updated_at = now
    return endpoint


@dataclass(frozen=True)
class Backlog:
    """What an endpoint is owed: how many deliveries, and since when."""

    count: int = 0
    oldest: datetime | None = None


async def backlogs(
    session: AsyncSession, *, of: uuid.UUID | None = None
) -> dict[uuid.UUID, Backlog]:
    """What each endpoint is owed (only endpoint `of`, when given); none owed: not listed. The
    count from `delivery_tally`, the oldest from the owed deliveries' index."""
    tally = table_of(DeliveryTally).c
    owed = (
        select(tally.endpoint_id, func.sum(tally.deliveries).label("count"))
        .group_by(tally.endpoint_id)
        .having(func.sum(tally.deliveries) != 0)
    )
    if of is not None:
        owed = owed.where(tally.endpoint_id == of)
    counted = owed.subquery()
    oldest = (
        select(func.min(Delivery.created_at))
        .where(Delivery.endpoint_id == counted.c.endpoint_id, written_in(Delivery.state, *OWED))
        .scalar_subquery()
    )
    rows = await session.execute(select(counted.c.endpoint_id, counted.c.count, oldest))
    return {endpoint_id: Backlog(int(count), oldest) for endpoint_id, count, oldest in rows}


async def list_attempts(
    session: AsyncSession, endpoint_id: uuid.UUID, *, before: int | None, limit: int
) -> list[tuple[DeliveryAttempt, str]]:
    """The endpoint's attempts, newest first, each with its event's id."""
    await get_endpoint(session, endpoint_id)
    query = (
        select(DeliveryAttempt, Event.public_id)
        .join(Delivery, Delivery.id == DeliveryAttempt.delivery_id)
        .join(Event, Event.id == Delivery.event_id)
        .where(DeliveryAttempt.endpoint_id == endpoint_id)
        .order_by(DeliveryAttempt.id.desc())
        .limit(limit)
    )
    if before is not None:
        query = query.where(DeliveryAttempt.id < before)
    return [(attempt, public_id) for attempt, public_id in await session.execute(query)]


async def owe_again(
    session: AsyncSession, *, events: Sequence[Event], endpoints: Sequence[WebhookEndpoint]
) -> int:
    """Queue each event again for each endpoint that takes its type, at once (a manual
    attempt): a new delivery where there was none, a finished one reopened. A delivery in
    flight is left to finish. Says how many were queued."""
    if not events or not endpoints:
        return 0
    now = await db_now(session)
    existing = {
        (delivery.event_id, delivery.endpoint_id): delivery
        for delivery in await session.scalars(
            select(Delivery)
            .where(
                Delivery.event_id.in_([event.id for event in events]),
                Delivery.endpoint_id.in_([endpoint.id for endpoint in endpoints]),
            )
            .with_for_update(key_share=True)
        )
    }
    reopened: list[Delivery] = []
    for event in events:
        for endpoint in endpoints:
            if endpoint.event_types is not None and event.type not in endpoint.event_types:
                continue
            delivery = existing.get((event.id, endpoint.id))
            if delivery is None:
                delivery = Delivery(
                    event_id=event.id,
                    endpoint_id=endpoint.id,
                    call_id=event.call_id,
                    sequence=event.sequence,
                    attempts=0,
                    created_at=now,
                )
                session.add(delivery)
            elif delivery.state == DeliveryState.SENDING:
                continue
            delivery.state = DeliveryState.PENDING
            delivery.next_attempt_at = now
            delivery.trigger = "manual"
            delivery.finished_at = None
            reopened.append(delivery)
    await session.flush()
    await align_followers(await session.connection(), [delivery.id for delivery in reopened])
    return len(reopened)


async def align_followers(db: AsyncConnection, delivery_ids: Sequence[int]) -> None:
    """A call's later deliveries wait for its earlier ones, and are due when the one they wait
    for is: later when it is to be retried later (or every claim would read them as due until
    it is done: a dead endpoint's whole backlog, at each claim), sooner, when never tried, when
    it is queued again at once. `delivery_ids`, pending, were just given a time."""
    await db.execute(_align_followers(), {"ids": sorted(delivery_ids)})


@functools.cache
def _align_followers() -> Update:
    # The given deliveries by their key, then each one's later deliveries by their call (the
    # index on endpoint, call and sequence), each fenced (OFFSET 0), so that no plan reads the
    # pending deliveries' index for them: as one join, with statistics whose sample of a
    # history of millions held no pending delivery, the planner took those for one row and read
    # them all for each given delivery (22 s a statement on ten million calls).
    delivery = table_of(Delivery)
    d = delivery.c
    head = select(delivery).where(one_of(d.id, "ids")).offset(0).subquery("head")
    later = delivery.alias("later").c
    follower = (
        select(later.id, later.state)
        .where(
            later.endpoint_id == head.c.endpoint_id,
            later.call_id == head.c.call_id,
            later.sequence > head.c.sequence,
        )
        .offset(0)
        .lateral("follower")
    )
    moved = (
        select(follower.c.id, follower.c.state, head.c.next_attempt_at)
        .select_from(head.join(follower, true()))
        .where(
            written_in(head.c.state, DeliveryState.PENDING),
            written_in(follower.c.state, DeliveryState.PENDING),
        )
        .subquery("moved")
    )
    return (
        update(delivery)
        .where(
            d.id == moved.c.id,
            # Pending still, checked again on the row updated; not `=`, which would let the
            # planner carry the literal over to this row, and read it by the pending index.
            d.state.is_not_distinct_from(moved.c.state),
            d.next_attempt_at != moved.c.next_attempt_at,
            or_(d.next_attempt_at < moved.c.next_attempt_at, d.attempts == 0),
        )
        .values(next_attempt_at=moved.c.next_attempt_at)
    )


async def recover(session: AsyncSession, endpoint_id: uuid.UUID, *, since: datetime) -> int:
    """Queue again every event since `since` the endpoint takes and has not received, oldest
    first, at most RECOVER_LIMIT."""
    endpoint = await get_endpoint(session, endpoint_id)
    delivered = select(Delivery.event_id).where(
        Delivery.endpoint_id == endpoint_id,
        Delivery.state.in_((*OWED, DeliveryState.DELIVERED)),
    )
    query = select(Event).where(Event.created_at >= since, Event.id.not_in(delivered))
    if endpoint.event_types is not None:
        query = query.where(Event.type.in_(endpoint.event_types))
    events = list(await session.scalars(query.order_by(Event.id).limit(RECOVER_LIMIT)))
    return await owe_again(session, events=events, endpoints=[endpoint])


async def redeliver(session: AsyncSession, event: Event, *, endpoint_id: uuid.UUID | None) -> int:
    """Queue the event again for one endpoint, or for every enabled one that takes it."""
    if endpoint_id is not None:
        endpoints = [await get_endpoint(session, endpoint_id)]
    else:
        endpoints = list(
            await session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.enabled))
        )
    return await owe_again(session, events=[event], endpoints=endpoints)


async def disable(
    session: AsyncSession | AsyncConnection, endpoint_id: uuid.UUID, *, reason: str, now: datetime
) -> None:
    await session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.enabled)
        .values(enabled=False, disabled_reason=reason, updated_at=now, retry_at=None)
    )
