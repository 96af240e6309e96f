"""Delivering events, Standard Webhooks style: claiming what is due, sending one attempt, and
recording what came of it.

- At least once. A claim is a row in `delivery` (`sending`, by a replica) taken with SKIP
  LOCKED; a claim lost mid-send (its replica died: `app.jobs`) is released, and the event is sent
  again as a retry, after an attempt recorded as interrupted.
- A call's events go to an endpoint one at a time, in order: only the head of each (endpoint,
  call) chain is claimed, the earliest not yet delivered or given up. Other calls go on.
- At most WEBHOOK_ENDPOINT_CONCURRENCY deliveries are in flight to one endpoint, across
  replicas, so a slow endpoint holds back no other; to one that is failing, two. One that has
  failed for over a minute is tried by one delivery at a time, after a tenth of the time it
  has been failing (6 s at first, 5 minutes at most): its other deliveries wait, their attempts
  unspent, so that an endpoint that is down costs a few attempts a minute, not one for every
  call it is owed.
- The retry schedule is WEBHOOK_RETRY_SCHEDULE with ±20% jitter; a time-out or "slow down"
  (429, 502, 503, 504) waits at least a minute (or the schedule's longest delay, if shorter);
  Retry-After is honoured between one and two scheduled delays (Svix's rule). 410 disables the
  endpoint; so does failing without a break for WEBHOOK_DISABLE_AFTER_SECONDS.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from sqlalchemy import (
    Boolean,
    ColumnElement,
    Interval,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from standardwebhooks.webhooks import Webhook

from app.config import WebhookSettings
from app.db.base import UTCDateTime
from app.db.clock import db_now
from app.db.models import Delivery, DeliveryAttempt, DeliveryState, Event, WebhookEndpoint
from app.db.statements import among, checked_apart, one_of, table_of, written_in
from app.events.endpoints import align_followers, disable, signing_secrets
from app.jobs.policy import RANDOM, RetryPolicy
from app.retry_after import retry_after_seconds

ANSWER_KEPT = 1024  # bytes of each answer recorded with its attempt
_SLOW_DOWN = frozenset({429, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SLOW_DOWN_FLOOR = 60.0
# Deliveries in flight at once to an endpoint that is failing (its `failing_since`).
_FAILING_SHARE = 2
# Failing for this long, an endpoint is tried by one delivery at a time, no sooner than its
# `retry_at`: a tenth of the time it has been failing later, at most _RETRY_WITHIN.
_TRIPPED_AFTER = timedelta(minutes=1)
_RETRY_WITHIN = timedelta(minutes=5)
_HEALTH_RESOLUTION = timedelta(seconds=1)  # how fresh an endpoint's `last_success_at` is
_INTERRUPTED = "interrupted: the replica sending it stopped before the answer was recorded"
_delivery = table_of(Delivery).c
_endpoint = table_of(WebhookEndpoint).c


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
    attempt: int  # this attempt's number: the delivery's `attempts` once claimed
    claimed_at: datetime


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
    db: AsyncConnection, *, worker: str, limit: int, per_endpoint: int
) -> list[Claimed]:
    """Claim up to `limit` deliveries that are due, heads of their call's chain, within each
    endpoint's share."""
    statements = _statements()
    await db.execute(statements.plan_each_time)
    now = await db_now(db)
    # Each enabled endpoint's share left, read without a lock; then, endpoint by endpoint (in
    # a new order each time, so that none is always served last), at most that many of its
    # due deliveries. Each candidate costs a look-up of its call's earlier deliveries, and one
    # endpoint's backlog never fills another's turn.
    shares = [
        (row.id, share - row.sending)
        for row in await db.execute(statements.shares)
        if row.sending < (share := _share(per_endpoint, row.failing_since, row.retry_at, now))
    ]
    RANDOM.shuffle(shares)
    candidates: list[tuple[int, uuid.UUID]] = []
    for endpoint_id, share in shares:
        if len(candidates) >= limit:
            break
        bounds = {"now": now, "endpoint_id": endpoint_id, "limit": share}
        candidates += [(row.id, endpoint_id) for row in await db.execute(statements.due, bounds)]
    if not candidates:
        return []
    # Every writer locks an endpoint before its deliveries (no deadlock between them), and
    # each endpoint's share is counted under that lock, so that two replicas claiming at once
    # cannot both take its last slot.
    endpoint_ids = sorted({endpoint_id for _, endpoint_id in candidates})
    endpoints = {
        row.id: row for row in await db.execute(statements.lock_endpoints, {"ids": endpoint_ids})
    }
    free = {
        endpoint_id: _share(per_endpoint, row.failing_since, row.retry_at, now)
        for endpoint_id, row in endpoints.items()
    }
    for endpoint_id, sending in await db.execute(statements.sending, {"ids": endpoint_ids}):
        free[endpoint_id] -= sending
    wanted: list[int] = []
    for delivery_id, endpoint_id in candidates:
        if len(wanted) == limit:
            break
        if free.get(endpoint_id, 0) > 0:
            free[endpoint_id] -= 1
            wanted.append(delivery_id)
    if not wanted:
        return []
    taken = (
        await db.execute(statements.take, {"ids": wanted, "replica": worker, "now": now})
    ).all()
    if not taken:
        return []
    bodies = {
        row.id: row
        for row in await db.execute(statements.bodies, {"ids": [row.event_id for row in taken]})
    }
    return [
        Claimed(
            delivery_id=row.id,
            endpoint_id=row.endpoint_id,
            url=endpoints[row.endpoint_id].url,
            secrets=signing_secrets(
                endpoints[row.endpoint_id].secret, endpoints[row.endpoint_id].previous_secrets, now
            ),
            event_id=bodies[row.event_id].public_id,
            body=bodies[row.event_id].body,
            trigger=row.trigger,
            attempt=row.attempts,
            claimed_at=now,
        )
        for row in taken
    ]


def _share(
    per_endpoint: int, failing_since: datetime | None, retry_at: datetime | None, now: datetime
) -> int:
    """How many deliveries may be in flight to an endpoint: a failing one is tried a few at a
    time until it answers again, so that endpoints that are down (each owed every event) never
    take the slots of those that are up; one failing for longer, one at a time, when due."""
    if failing_since is None:
        return per_endpoint
    if now - failing_since < _TRIPPED_AFTER:
        return min(per_endpoint, _FAILING_SHARE)
    return 1 if retry_at is None or retry_at <= now else 0


def counted_due() -> ColumnElement[bool]:
    """The deliveries counted as due once their time has come: pending, to an enabled endpoint
    that has not failed for over a minute. Such an endpoint is tried one delivery at a time
    (`_share`); none of its deliveries is counted, not even that one: they wait for it to
    answer, as a retry waits for its time, and show in its backlog. A call's later deliveries
    are counted, though each waits for the one before it."""
    sent_freely = select(_endpoint.id).where(
        _endpoint.enabled,
        or_(
            _endpoint.failing_since.is_(None),
            _endpoint.failing_since > func.statement_timestamp() - _TRIPPED_AFTER,
        ),
    )
    return and_(
        written_in(_delivery.state, DeliveryState.PENDING),
        among(_delivery.endpoint_id, sent_freely),
    )


async def release(db: AsyncConnection, delivery_ids: Sequence[int], *, retries: RetryPolicy) -> int:
    """Claims whose answer will never be recorded (their worker died or stopped mid-send, or
    the answer could not be stored) go back to the queue, each after an attempt recorded as
    interrupted, due as the retry policy says after it: the endpoint may have had the event, so
    the next send is a retry, never a first delivery twice."""
    now = await db_now(db)
    query = select(
        _delivery.id,
        _delivery.endpoint_id,
        _delivery.claimed_at,
        _delivery.trigger,
        _delivery.attempts,
    )
    query = query.where(
        written_in(_delivery.state, DeliveryState.SENDING), _delivery.id.in_(delivery_ids)
    )
    stale = (await db.execute(query.with_for_update(skip_locked=True, key_share=True))).all()
    if not stale:
        return 0
    await db.execute(
        _statements().insert_attempts,
        [
            {
                "delivery_id": row.id,
                "endpoint_id": row.endpoint_id,
                "attempted_at": row.claimed_at or now,
                "error": _INTERRUPTED,
                "trigger": row.trigger,
            }
            for row in stale
        ],
    )
    await db.execute(
        update(table_of(Delivery))
        .where(_delivery.id == bindparam("delivery_id"))
        .values(
            state=DeliveryState.PENDING,
            claimed_by=None,
            claimed_at=None,
            next_attempt_at=bindparam("due"),
        ),
        [
            {
                "delivery_id": row.id,
                "due": now + timedelta(seconds=retries.delay(row.attempts)),
            }
            for row in stale
        ],
    )
    await align_followers(db, [row.id for row in stale])
    return len(stale)


def signature(secrets: list[str], *, event_id: str, timestamp: int, body: str) -> str:
    """`webhook-signature`: one `v1,<base64>` per secret, separated by spaces."""
    at = datetime.fromtimestamp(timestamp, UTC)  # sign() takes the time as UTC, whatever its zone
    return " ".join(Webhook(secret).sign(event_id, at, body) for secret in secrets)


async def attempt(http: aiohttp.ClientSession, claimed: Claimed, *, within: float) -> Answer:
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
            async with http.post(
                claimed.url, data=claimed.body.encode(), headers=headers, allow_redirects=False
            ) as response:
                kept = b""
                while len(kept) < ANSWER_KEPT and (chunk := await response.content.read(1024)):
                    kept += chunk
    except TimeoutError:
        return Answer(None, f"no answer within {within:g}s", took())
    except Exception as exc:  # aiohttp's ClientError, and whatever else: never a lost answer
        return Answer(None, f"{type(exc).__name__}: {exc}"[:500], took())
    # As text a column holds: undecodable bytes, and NUL, as U+FFFD.
    text = kept[:ANSWER_KEPT].decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    error = None
    if not 200 <= response.status < 300:
        error = f"answered {response.status}"
        if response.status in _REDIRECTS:
            error += " (a redirect: not followed)"
    return Answer(
        response.status,
        error,
        took(),
        text,
        retry_after_seconds(response.headers.get("retry-after")),
    )


def retry_policy(schedule: Sequence[float]) -> RetryPolicy:
    """WEBHOOK_RETRY_SCHEDULE with ±20% jitter, given up once it has run out; a "slow down"
    waits at least a minute; Retry-After is honoured between one and two scheduled delays."""
    return RetryPolicy(
        schedule,
        max_attempts=len(schedule) + 1,
        jitter=0.2,
        slow_down_floor=_SLOW_DOWN_FLOOR,
        retry_after_within_schedule=True,
    )


def next_delay(answer: Answer, *, attempts: int, retries: RetryPolicy) -> float | None:
    """Seconds until the next attempt after `attempts` failed ones; None: give up."""
    if retries.gives_up(attempts):
        return None
    no_answer = answer.status_code is None and (answer.error or "").startswith("no answer")
    slow_down = no_answer or answer.status_code in _SLOW_DOWN
    return retries.delay(attempts, retry_after=answer.retry_after, slow_down=slow_down)


@dataclass
class _Health:
    """An endpoint's health as read before a batch, and what the batch's answers say of it."""

    last_success_at: datetime | None
    failing_since: datetime | None
    succeeded: bool = False  # in this batch
    failed: bool = False  # the batch's last answer from it was a failure


async def record(
    db: AsyncConnection,
    answered: Sequence[tuple[Claimed, Answer]],
    *,
    settings: WebhookSettings,
    retries: RetryPolicy,
) -> list[DeliveryState]:
    """Store a batch of attempts and what follows from each: delivered, retried later, or given
    up; the endpoints' health, and whether one is to be disabled. A delivery whose claim was
    given back meanwhile (taken for lost) keeps its new state; its attempt is stored all the
    same."""
    statements = _statements()
    now = await db_now(db)
    endpoint_ids = sorted({claimed.endpoint_id for claimed, _ in answered})
    # FOR KEY SHARE: the endpoints are not deleted under the batch.
    health = {
        row.id: _Health(row.last_success_at, row.failing_since)
        for row in await db.execute(statements.health, {"ids": endpoint_ids})
    }
    attempts: list[dict[str, Any]] = []
    # The deliveries that came to one outcome (state, next attempt, finished) are written by
    # one statement: a batch's deliveries mostly share one.
    outcomes: dict[tuple[DeliveryState, datetime | None, datetime | None], list[tuple[int, int]]]
    outcomes = {}
    states: list[DeliveryState] = []
    disabling: dict[uuid.UUID, str] = {}
    for claimed, answer in answered:
        endpoint = health.get(claimed.endpoint_id)
        if endpoint is None:  # deleted, with its deliveries
            states.append(DeliveryState.FAILED)
            continue
        state, next_attempt_at = DeliveryState.FAILED, None
        if answer.delivered:
            state = DeliveryState.DELIVERED
            endpoint.succeeded, endpoint.failed = True, False
        elif answer.status_code == 410:
            disabling[claimed.endpoint_id] = "the endpoint answered 410 Gone"
        else:
            endpoint.failed = True
            delay = next_delay(answer, attempts=claimed.attempt, retries=retries)
            if delay is not None:
                state, next_attempt_at = DeliveryState.PENDING, now + timedelta(seconds=delay)
        states.append(state)
        attempts.append(
            {
                "delivery_id": claimed.delivery_id,
                "endpoint_id": claimed.endpoint_id,
                "attempted_at": claimed.claimed_at,
                "status_code": answer.status_code,
                "error": answer.error,
                "latency_ms": answer.latency_ms,
                "response_body": answer.body,
                "trigger": claimed.trigger,
            }
        )
        outcome = (state, next_attempt_at, None if state == DeliveryState.PENDING else now)
        outcomes.setdefault(outcome, []).append((claimed.delivery_id, claimed.attempt))
    # The endpoints first, in one order, then their deliveries (as a claim locks them). Each
    # delivery would write its endpoint's row, one at a time: it is written only when its
    # health changes, and on success at most once a second.
    for endpoint_id, endpoint in sorted(health.items()):
        if not (
            endpoint.failed
            or (endpoint.succeeded and endpoint.failing_since is not None)
            or (
                endpoint.succeeded
                and (
                    endpoint.last_success_at is None
                    or now - endpoint.last_success_at >= _HEALTH_RESOLUTION
                )
            )
        ):
            continue
        failing_since = await db.scalar(
            statements.health_of,
            {
                "endpoint_id": endpoint_id,
                "now": now,
                "succeeded": endpoint.succeeded,
                "failed": endpoint.failed,
            },
        )
        if failing_since is not None and (now - failing_since).total_seconds() >= (
            settings.disable_after_seconds
        ):
            disabling.setdefault(
                endpoint_id, f"failing without a success since {failing_since.isoformat()}"
            )
    for endpoint_id, reason in sorted(disabling.items()):
        await disable(db, endpoint_id, reason=reason, now=now)
    if attempts:
        await db.execute(statements.insert_attempts, attempts)
    for (state, next_attempt_at, finished_at), claims in outcomes.items():
        await db.execute(
            statements.answered,
            {
                "claims": sorted(claims),
                "state": state,
                "next_attempt_at": next_attempt_at,
                "finished_at": finished_at,
            },
        )
        if state == DeliveryState.PENDING:
            await align_followers(db, [delivery_id for delivery_id, _ in claims])
    return states


class _Statements:
    """The deliverer's statements, built once: it runs them many times a second."""

    def __init__(self) -> None:
        delivery, endpoint = table_of(Delivery), table_of(WebhookEndpoint)
        d, e = delivery.c, endpoint.c
        # The claim's statements are planned at every claim, on the tables as they are. A plan
        # cached while the queue was small (PostgreSQL keeps a prepared statement's generic
        # plan until the next ANALYZE) scans the whole queue once per row when it has grown:
        # in one run of the webhooks bench, the read of what is due took 2.9 ms on average,
        # and 0.2 ms (and its planning) planned afresh.
        self.plan_each_time = text("SET LOCAL plan_cache_mode = force_custom_plan")
        earlier = delivery.alias("earlier").c
        waits_on_earlier = (
            select(earlier.id)
            .where(
                earlier.endpoint_id == d.endpoint_id,
                earlier.call_id == d.call_id,
                earlier.sequence < d.sequence,
                # Owed, said without `state`: a planner whose statistics predate the backlog
                # would look it up through a state index, row by row.
                earlier.finished_at.is_(None),
            )
            # A subplan, looked up by the candidate's call: as a join, a planner that took a
            # new endpoint for one with no deliveries (its statistics older than the
            # endpoint) read all of the endpoint's for each candidate, 9.9 ms a claim with
            # 1,800 owed against 0.08 (bench/README.md). OFFSET keeps it from being a join.
            .offset(0)
            .exists()
        )
        self.shares = (
            select(e.id, e.failing_since, e.retry_at, func.count(d.id).label("sending"))
            .select_from(
                endpoint.outerjoin(
                    delivery,
                    and_(d.endpoint_id == e.id, written_in(d.state, DeliveryState.SENDING)),
                )
            )
            .where(e.enabled)
            .group_by(e.id)
        )
        self.due = (
            select(d.id)
            .where(
                written_in(d.state, DeliveryState.PENDING),
                d.endpoint_id == bindparam("endpoint_id"),
                d.next_attempt_at <= bindparam("now"),
                ~waits_on_earlier,
            )
            # The index's order, so that the scan stops at the limit (no sort of the backlog).
            .order_by(d.next_attempt_at)
            .limit(bindparam("limit"))
        )
        # FOR NO KEY UPDATE, as an UPDATE of the row would: a delivery or an attempt inserted
        # meanwhile only shares the key (its foreign key), and does not wait.
        self.lock_endpoints = (
            select(e.id, e.url, e.secret, e.previous_secrets, e.failing_since, e.retry_at)
            .where(one_of(e.id, "ids"))
            .order_by(e.id)
            .with_for_update(key_share=True)
        )
        self.sending = (
            select(d.endpoint_id, func.count())
            .where(
                written_in(d.state, DeliveryState.SENDING),
                one_of(d.endpoint_id, "ids"),
            )
            .group_by(d.endpoint_id)
        )
        pending = delivery.alias("pending").c  # not the updated table's row: its own
        still_pending = (
            select(pending.id)
            # By key: with the owed deliveries' index, all of them were read for each claim
            # (1,649 buffers a claim on ten million calls, 8.2 ms against 0.4 on day one).
            .where(one_of(pending.id, "ids"), checked_apart(pending.state, DeliveryState.PENDING))
            .with_for_update(skip_locked=True, key_share=True)
        )
        self.take = (
            update(delivery)
            .where(d.id.in_(still_pending))
            .values(
                state=DeliveryState.SENDING,
                claimed_by=bindparam("replica"),
                claimed_at=bindparam("now"),
                attempts=d.attempts + 1,
            )
            .returning(d.id, d.endpoint_id, d.event_id, d.trigger, d.attempts)
        )
        event = table_of(Event).c
        self.bodies = select(event.id, event.public_id, event.body).where(one_of(event.id, "ids"))
        self.health = (
            select(e.id, e.last_success_at, e.failing_since)
            .where(one_of(e.id, "ids"))
            .with_for_update(read=True, key_share=True)
        )
        succeeded = bindparam("succeeded", type_=Boolean)
        failed = bindparam("failed", type_=Boolean)
        now = bindparam("now", type_=UTCDateTime)
        failing_for = (now - e.failing_since).self_group()
        # An interval's `/` is PostgreSQL's: SQLAlchemy's Interval has none.
        tenth = failing_for.op("/", return_type=Interval())(10)
        wait = func.least(tenth, _RETRY_WITHIN)
        self.health_of = (
            update(endpoint)
            .where(e.id == bindparam("endpoint_id"))
            .values(
                last_success_at=case((succeeded, now), else_=e.last_success_at),
                # Failing since the batch's first failure after its last success.
                failing_since=case(
                    (~failed, None),
                    (succeeded, now),
                    else_=func.coalesce(e.failing_since, now),
                ),
                # Failing still, and for long enough (`failing_since` as it was): the next try.
                retry_at=case(
                    (failed & ~succeeded & (failing_for >= _TRIPPED_AFTER), now + wait),
                    else_=None,
                ),
            )
            .returning(e.failing_since)
        )
        # RETURNING, so that a batch is one INSERT (SQLAlchemy's "insertmanyvalues"), not one
        # per row.
        attempt = table_of(DeliveryAttempt)
        self.insert_attempts = insert(attempt).returning(attempt.c.id)
        # Each (delivery, attempt number) only while the claim that made the attempt still
        # holds: a claim given back (lost) and taken again has a higher attempt number.
        self.answered = (
            update(delivery)
            .where(
                tuple_(d.id, d.attempts).in_(bindparam("claims", expanding=True)),
                d.state == DeliveryState.SENDING,
            )
            .values(
                state=bindparam("state"),
                next_attempt_at=func.coalesce(
                    bindparam("next_attempt_at", type_=UTCDateTime), d.next_attempt_at
                ),
                finished_at=bindparam("finished_at"),
                claimed_by=None,
                claimed_at=None,
                trigger="scheduled",
            )
        )


@functools.cache
def _statements() -> _Statements:
    return _Statements()
