"""Webhook delivery as a kind of job (`app.jobs`): every replica claims due deliveries and
sends them, several at a time (`app.events.delivery` says how)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import WebhookSettings
from app.db.models import Delivery, DeliveryState
from app.db.statements import table_of, written_in
from app.events import delivery
from app.events.targets import TargetPolicy, guarded_session
from app.jobs.runner import Kind
from app.jobs.worker import Queue
from app.metrics import Metrics

log = logging.getLogger(__name__)

_DELIVERIES = table_of(Delivery).c


class Delivering(Kind[delivery.Claimed, delivery.Answer]):
    """A claim is a delivery `sending`, by its worker. A claim lost (its worker died or stopped
    mid-send) goes back to the queue after an attempt recorded as interrupted."""

    name = "delivery"
    wake_while_working = False  # woken by every batch of callbacks stored: only when idle
    queue = Queue(
        key=_DELIVERIES.id,
        claimed_by=_DELIVERIES.claimed_by,
        due=_DELIVERIES.next_attempt_at,
        claimed=written_in(_DELIVERIES.state, DeliveryState.SENDING),
        waiting=written_in(_DELIVERIES.state, DeliveryState.PENDING, DeliveryState.SENDING),
        ready=delivery.counted_due(),
    )

    def __init__(self, *, http: aiohttp.ClientSession, settings: WebhookSettings, metrics: Metrics):
        self.concurrency = settings.concurrency
        self._http = http
        self._settings = settings
        self._metrics = metrics
        self._retries = delivery.retry_policy(settings.retry_schedule)

    async def claim(
        self, session: AsyncSession, *, worker: str, limit: int
    ) -> list[delivery.Claimed]:
        return await delivery.claim(
            await session.connection(),
            worker=worker,
            limit=limit,
            per_endpoint=self._settings.endpoint_concurrency,
        )

    async def run(self, job: delivery.Claimed) -> delivery.Answer:
        return await delivery.attempt(self._http, job, within=self._settings.timeout_seconds)

    async def record(
        self, session: AsyncSession, done: Sequence[tuple[delivery.Claimed, delivery.Answer]]
    ) -> None:
        states = await delivery.record(
            await session.connection(), done, settings=self._settings, retries=self._retries
        )
        for (claimed, answer), state in zip(done, states, strict=True):
            self._metrics.webhook_deliveries.labels(_OUTCOMES[state]).inc()
            if not answer.delivered:
                log.info(
                    "webhook %s to endpoint %s: %s",
                    claimed.event_id,
                    claimed.endpoint_id,
                    answer.error,
                )

    def key(self, job: delivery.Claimed) -> int:
        return job.delivery_id

    async def lost(self, session: AsyncSession, keys: Sequence[int]) -> None:
        await delivery.release(await session.connection(), keys, retries=self._retries)


async def delivering(
    stack: contextlib.AsyncExitStack,
    *,
    targets: TargetPolicy,
    settings: WebhookSettings,
    metrics: Metrics,
) -> Delivering:
    """The delivery kind, its HTTP client open until `stack` closes. Subscribers are reached
    only at addresses `targets` allows, checked at every connect; redirects are never
    followed."""
    http = await stack.enter_async_context(guarded_session(targets, limit=settings.concurrency))
    return Delivering(http=http, settings=settings, metrics=metrics)


_OUTCOMES = {
    DeliveryState.DELIVERED: "delivered",
    DeliveryState.PENDING: "failed",  # to be retried
    DeliveryState.FAILED: "given_up",
}
