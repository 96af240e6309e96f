"""The deliverer that runs inside every replica: it claims due deliveries from the database and
sends them, several at a time (`app.events.delivery` says how)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.calls.availability import Availability
from app.calls.periodic import sleep_until_set
from app.config import Settings
from app.db.models import DeliveryState
from app.db.session import is_database_down
from app.events import delivery
from app.metrics import Metrics

log = logging.getLogger(__name__)

_GATHER_SECONDS = 0.005


class Deliverer:
    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        http: httpx.AsyncClient,
        settings: Settings,
        replica_id: str,
        metrics: Metrics,
        availability: Availability,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._http = http
        self._settings = settings
        self._replica_id = replica_id
        self._metrics = metrics
        self._availability = availability
        self._stopping = asyncio.Event()
        self._freed = asyncio.Event()
        self._sending: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="deliverer")

    def stop_claiming(self) -> None:
        self._stopping.set()

    async def stop(self, *, grace: float) -> None:
        """Stop claiming; give deliveries in flight `grace` seconds, then give back the claims
        of those still unanswered (they are retried, by whichever replica is left)."""
        self._stopping.set()
        if self._loop is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._loop, timeout=5)
        if self._sending:
            _, pending = await asyncio.wait(self._sending, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if pending:
                try:
                    async with self._sessionmaker() as session, session.begin():
                        await delivery.release(session, replica_id=self._replica_id)
                except Exception:
                    # The claims go stale instead, and are given back by another replica.
                    log.warning("deliverer: could not give back its claims", exc_info=True)

    async def _run(self) -> None:
        settings = self._settings
        while not self._stopping.is_set():
            free = settings.webhook_concurrency - len(self._sending)
            if free <= 0:
                self._freed.clear()
                await self._pause(settings.webhook_poll_seconds, self._freed)
                continue
            # Set by any delivery that ends from here on: it may free an endpoint's share.
            self._freed.clear()
            try:
                async with self._sessionmaker() as session, session.begin():
                    claimed = await delivery.claim(
                        session,
                        replica_id=self._replica_id,
                        limit=free,
                        per_endpoint=settings.webhook_endpoint_concurrency,
                        # A claim this old is a replica that died mid-send.
                        stale_after=settings.webhook_timeout_seconds
                        + settings.dispatch_claim_grace_seconds,
                    )
            except Exception as exc:  # the loop must outlive any one failure
                if is_database_down(exc):
                    self._availability.lost("deliverer", exc)
                else:
                    log.exception("deliverer: claiming failed")
                claimed = []
            else:
                self._availability.reached("deliverer")
            for one in claimed:
                task = asyncio.create_task(self._deliver(one), name=f"deliver {one.event_id}")
                self._sending.add(task)
                task.add_done_callback(self._done)
            if not claimed:
                await self._pause(settings.webhook_poll_seconds, self._freed)
                if self._freed.is_set():
                    # Let the deliveries ending about now end too: one claim for them all
                    # (a claim costs as much for one delivery as for many).
                    await asyncio.sleep(_GATHER_SECONDS)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._freed.set()

    async def _pause(self, seconds: float, *also: asyncio.Event) -> None:
        """Sleep `seconds`, or until stopping or any of `also` is set."""
        await sleep_until_set(seconds, self._stopping, *also)

    async def _deliver(self, claimed: delivery.Claimed) -> None:
        answer = await delivery.attempt(
            self._http, claimed, within=self._settings.webhook_timeout_seconds
        )
        try:
            async with self._sessionmaker() as session, session.begin():
                state = await delivery.record(session, claimed, answer, settings=self._settings)
        except Exception:
            # The claim stays, goes stale, and the event is sent again as a retry.
            log.exception("deliverer: the answer to %s was not recorded", claimed.event_id)
            return
        outcome = (
            "delivered"
            if state == DeliveryState.DELIVERED
            else ("given_up" if state == DeliveryState.FAILED else "failed")
        )
        self._metrics.webhook_deliveries.labels(outcome).inc()
        if not answer.delivered:
            log.info(
                "webhook %s to endpoint %s: %s", claimed.event_id, claimed.endpoint_id, answer.error
            )
