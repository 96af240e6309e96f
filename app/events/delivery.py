"""Delivering events, Standard Webhooks style: claiming what is due, sending one attempt, and
recording what came of it.

- At least once. A claim is a row in `delivery` (`sending`, by a replica) taken with SKIP
  LOCKED; a replica that dies mid-send leaves a claim that goes stale, and the event is sent
  again as a retry, after an attempt recorded as interrupted.
- A call's events go to an endpoint one at a time, in order: only the head of each (endpoint,
  call) chain is claimed, the earliest not yet delivered or given up. Other calls go on.
- At most WEBHOOK_ENDPOINT_CONCURRENCY deliveries are in flight to one endpoint, across
  replicas, so a slow endpoint holds back no other.
- The retry schedule is WEBHOOK_RETRY_SCHEDULE with ±20% jitter; a time-out or "slow down"
  (429, 502, 503, 504) waits at least a minute (or the schedule's longest delay, if shorter);
  Retry-After is honoured between one and two scheduled delays (Svix's rule). 410 disables the
  endpoint; so does failing without a break for WEBHOOK_DISABLE_AFTER_SECONDS.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from standardwebhooks.webhooks import Webhook

from app.config import Settings
from app.db.clock import db_now
from app.db.models import Delivery, DeliveryAttempt, DeliveryState, Event, WebhookEndpoint
from app.events.endpoints import OWED, disable, signing_secrets

ANSWER_KEPT = 1024  # bytes of each answer recorded with its attempt
_SLOW_DOWN = frozenset({429, 502, 503, 504})
_SLOW_DOWN_FLOOR = 60.0
_HEALTH_RESOLUTION = timedelta(seconds=1)  # how fresh an endpoint's `last_success_at` is
_INTERRUPTED = "interrupted: the replica sending it stopped before the answer was recorded"


@dataclass(frozen=True)
class Claimed:
    """A delivery this replica is to attempt now."""

    delivery_id: int
    endpoint_id: uuid.UUID
    url: str
    secrets: list[str]
    event_id: str  # the public id: `webhook-id`
    body: str
    trigger: str


@dataclass(frozen=True)
class Answer:
    """What one attempt came to."""

    status_code: int | None  # None: no answer (refused, timed out, cut off)
    error: str | None
    latency_ms: int
    body: str | None = None  # the first ANSWER_KEPT bytes
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def claim(
    session: AsyncSession,
    *,
    replica_id: str,
    limit: int,
    per_endpoint: int,
    stale_after: float,
) -> list[Claimed]:
    """Claim up to `limit` deliveries that are due, heads of their call's chain, within each
    endpoint's share; first release the claims of replicas that died mid-send."""
    now = await db_now(session)
    await _release(session, now=now, older_than=now - timedelta(seconds=stale_after))
    earlier = aliased(Delivery)
    waits_on_earlier = (
        select(earlier.id)
        .where(
            earlier.endpoint_id == Delivery.endpoint_id,
            earlier.call_id == Delivery.call_id,
            earlier.sequence < Delivery.sequence,
            earlier.state.in_(OWED),
        )
        .exists()
    )
    candidates = (
        await session.execute(
            select(Delivery.id, Delivery.endpoint_id)
            .join(WebhookEndpoint, WebhookEndpoint.id == Delivery.endpoint_id)
            .where(
                Delivery.state == DeliveryState.PENDING,
                Delivery.next_attempt_at <= now,
                WebhookEndpoint.enabled,
                ~waits_on_earlier,
            )
            # The index's order, so that the scan stops at the limit (no sort of the backlog).
            .order_by(Delivery.next_attempt_at)
            .limit(limit * 4)  # room to pass over endpoints at their share
        )
    ).all()
    if not candidates:
        return []
    # Every writer locks an endpoint before its deliveries (no deadlock between them), and
    # each endpoint's share is counted under that lock, so that two replicas claiming at once
    # cannot both take its last slot.
    endpoint_ids = sorted({endpoint_id for _, endpoint_id in candidates})
    await lock_endpoints(session, endpoint_ids)
    counted = await session.execute(
        select(Delivery.endpoint_id, func.count())
        .where(Delivery.state == DeliveryState.SENDING, Delivery.endpoint_id.in_(endpoint_ids))
        .group_by(Delivery.endpoint_id)
    )
    free = dict.fromkeys(endpoint_ids, per_endpoint)
    for endpoint_id, sending in counted:
        free[endpoint_id] -= sending
    wanted: list[int] = []
    for delivery_id, endpoint_id in candidates:
        if len(wanted) == limit:
            break
        if free[endpoint_id] > 0:
            free[endpoint_id] -= 1
            wanted.append(delivery_id)
    if not wanted:
        return []
    chosen = list(
        await session.scalars(
            select(Delivery)
            .where(Delivery.id.in_(wanted), Delivery.state == DeliveryState.PENDING)
            .with_for_update(skip_locked=True, key_share=True)
        )
    )
    if not chosen:
        return []
    for delivery in chosen:
        delivery.state = DeliveryState.SENDING
        delivery.claimed_by, delivery.claimed_at = replica_id, now
        delivery.attempts += 1
    endpoints = {
        endpoint.id: endpoint
        for endpoint in await session.scalars(
            select(WebhookEndpoint).where(WebhookEndpoint.id.in_({d.endpoint_id for d in chosen}))
        )
    }
    bodies = await session.execute(
        select(Event.id, Event.public_id, Event.body).where(
            Event.id.in_({d.event_id for d in chosen})
        )
    )
    events = {event_id: (public_id, body) for event_id, public_id, body in bodies}
    return [
        Claimed(
            delivery_id=delivery.id,
            endpoint_id=delivery.endpoint_id,
            url=endpoints[delivery.endpoint_id].url,
            secrets=signing_secrets(endpoints[delivery.endpoint_id], now),
            event_id=events[delivery.event_id][0],
            body=events[delivery.event_id][1],
            trigger=delivery.trigger,
        )
        for delivery in chosen
    ]


async def release(session: AsyncSession, *, replica_id: str) -> int:
    """Give back this replica's claims (it stops with deliveries unanswered)."""
    now = await db_now(session)
    return await _release(session, now=now, replica_id=replica_id)


async def _release(
    session: AsyncSession,
    *,
    now: datetime,
    older_than: datetime | None = None,
    replica_id: str | None = None,
) -> int:
    """Claims whose answer will never be recorded go back to the queue, due at once, each after
    an attempt recorded as interrupted: the endpoint may have had the event, so the next send is
    a retry, never a first delivery twice."""
    query = select(Delivery).where(Delivery.state == DeliveryState.SENDING)
    if older_than is not None:
        query = query.where(Delivery.claimed_at < older_than)
    if replica_id is not None:
        query = query.where(Delivery.claimed_by == replica_id)
    stale = list(await session.scalars(query.with_for_update(skip_locked=True, key_share=True)))
    for delivery in stale:
        session.add(
            DeliveryAttempt(
                delivery_id=delivery.id,
                endpoint_id=delivery.endpoint_id,
                attempted_at=delivery.claimed_at or now,
                error=_INTERRUPTED,
                trigger=delivery.trigger,
            )
        )
        delivery.state = DeliveryState.PENDING
        delivery.claimed_by = delivery.claimed_at = None
        delivery.next_attempt_at = now
    return len(stale)


async def lock_endpoints(session: AsyncSession, endpoint_ids: list[uuid.UUID]) -> None:
    """Lock the endpoints' rows, in one order: before any of their deliveries. FOR NO KEY
    UPDATE, as an UPDATE of the row would: a delivery or an attempt inserted meanwhile only
    shares the key (its foreign key), and does not wait."""
    await session.execute(
        select(WebhookEndpoint.id)
        .where(WebhookEndpoint.id.in_(endpoint_ids))
        .order_by(WebhookEndpoint.id)
        .with_for_update(key_share=True)
    )


def signature(secrets: list[str], *, event_id: str, timestamp: int, body: str) -> str:
    """`webhook-signature`: one `v1,<base64>` per secret, separated by spaces."""
    at = datetime.fromtimestamp(timestamp, UTC)  # sign() takes the time as UTC, whatever its zone
    return " ".join(Webhook(secret).sign(event_id, at, body) for secret in secrets)


async def attempt(http: httpx.AsyncClient, claimed: Claimed, *, within: float) -> Answer:
    """POST the event once: exactly the stored bytes, signed. Redirects are not followed."""
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "exocall-webhooks",
        "webhook-id": claimed.event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(
            claimed.secrets, event_id=claimed.event_id, timestamp=timestamp, body=claimed.body
        ),
    }
    started = time.monotonic()

    def took() -> int:
        return round((time.monotonic() - started) * 1000)

    try:
        async with asyncio.timeout(within):
            async with http.stream(
                "POST", claimed.url, content=claimed.body.encode(), headers=headers
            ) as response:
                kept = b""
                async for chunk in response.aiter_raw():
                    kept += chunk
                    if len(kept) >= ANSWER_KEPT:
                        break
    except TimeoutError:
        return Answer(None, f"no answer within {within:g}s", took())
    except httpx.HTTPError as exc:
        return Answer(None, f"{type(exc).__name__}: {exc}"[:500], took())
    text = kept[:ANSWER_KEPT].decode("utf-8", errors="replace")
    error = None
    if not 200 <= response.status_code < 300:
        error = f"answered {response.status_code}"
        if response.is_redirect:
            error += " (a redirect: not followed)"
    return Answer(
        response.status_code,
        error,
        took(),
        text,
        _retry_after(response.headers.get("retry-after")),
    )


def next_delay(answer: Answer, *, attempts: int, schedule: list[float]) -> float | None:
    """Seconds until the next attempt after `attempts` failed ones; None: give up."""
    if attempts > len(schedule):
        return None
    scheduled = schedule[attempts - 1]
    delay = scheduled * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not a secret
    if answer.status_code is None and answer.error and answer.error.startswith("no answer"):
        slow_down = True
    else:
        slow_down = answer.status_code in _SLOW_DOWN
    if slow_down:
        delay = max(delay, min(_SLOW_DOWN_FLOOR, max(schedule)))
    if answer.retry_after is not None:
        delay = min(max(answer.retry_after, scheduled), 2 * scheduled)
    return delay


async def record(
    session: AsyncSession, claimed: Claimed, answer: Answer, *, settings: Settings
) -> DeliveryState:
    """Store the attempt and what follows from it: delivered, retried later, or given up; the
    endpoint's health, and whether it is to be disabled."""
    now = await db_now(session)
    endpoint = WebhookEndpoint.__table__.c
    health = (
        await session.execute(
            select(endpoint.last_success_at, endpoint.failing_since).where(
                endpoint.id == claimed.endpoint_id
            )
        )
    ).one_or_none()
    if health is None:  # the endpoint was deleted meanwhile
        return DeliveryState.FAILED
    # Every delivery to the endpoint would write its row, one at a time: it is written only
    # when its health changes, and on success at most once a second.
    touches_endpoint = (
        not answer.delivered
        or health.failing_since is not None
        or health.last_success_at is None
        or now - health.last_success_at >= _HEALTH_RESOLUTION
    )
    if touches_endpoint:
        await lock_endpoints(session, [claimed.endpoint_id])  # before the delivery's row
    delivery = await session.get(Delivery, claimed.delivery_id, with_for_update={"key_share": True})
    if delivery is None:  # the endpoint was deleted meanwhile
        return DeliveryState.FAILED
    await session.execute(
        insert(DeliveryAttempt).values(
            delivery_id=delivery.id,
            endpoint_id=delivery.endpoint_id,
            attempted_at=delivery.claimed_at or now,
            status_code=answer.status_code,
            error=answer.error,
            latency_ms=answer.latency_ms,
            response_body=answer.body,
            trigger=claimed.trigger,
        )
    )
    delivery.claimed_by = delivery.claimed_at = None
    delivery.trigger = "scheduled"
    if answer.delivered:
        delivery.state, delivery.finished_at = DeliveryState.DELIVERED, now
        if touches_endpoint:
            await session.execute(
                update(WebhookEndpoint)
                .where(endpoint.id == delivery.endpoint_id)
                .values(last_success_at=now, failing_since=None)
            )
        return delivery.state
    if answer.status_code == 410:
        delivery.state, delivery.finished_at = DeliveryState.FAILED, now
        await disable(
            session, delivery.endpoint_id, reason="the endpoint answered 410 Gone", now=now
        )
        return delivery.state
    delay = next_delay(answer, attempts=delivery.attempts, schedule=settings.webhook_retry_schedule)
    if delay is None:
        delivery.state, delivery.finished_at = DeliveryState.FAILED, now
    else:
        delivery.state = DeliveryState.PENDING
        delivery.next_attempt_at = now + timedelta(seconds=delay)
    failing_since = await session.scalar(
        update(WebhookEndpoint)
        .where(endpoint.id == delivery.endpoint_id)
        .values(failing_since=func.coalesce(endpoint.failing_since, now))
        .returning(endpoint.failing_since)
    )
    if failing_since is not None and (now - failing_since).total_seconds() >= (
        settings.webhook_disable_after_seconds
    ):
        reason = f"failing without a success since {failing_since.isoformat()}"
        await disable(session, delivery.endpoint_id, reason=reason, now=now)
    return delivery.state


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((when - datetime.now(when.tzinfo)).total_seconds(), 0.0)
