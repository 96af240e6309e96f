"""The deliverer that runs inside every replica: it claims due deliveries from the database and
sends them, several at a time (`app.events.delivery` says how)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from app.calls.availability import Availability
from app.calls.periodic import sleep_until_set
from app.config import Settings
from app.db.models import DeliveryState
from app.db.session import is_database_down
from app.events import delivery
from app.events.targets import TargetPolicy, guarded_session
from app.metrics import Metrics

log = logging.getLogger(__name__)

_GATHER_SECONDS = 0.005
_RELEASE_EVERY_SECONDS = 1.0  # how often stale claims are looked for


class Deliverer:
    """One loop claims and records, in batches: each turn records every answer that came in
    since the last, then claims as many deliveries as there are free slots; each delivery is
    sent by a task of its own, which hands its answer back to the loop."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        http: aiohttp.ClientSession,
        settings: Settings,
        replica_id: str,
        metrics: Metrics,
        availability: Availability,
    ) -> None:
        self._engine = engine
        self._http = http
        self._settings = settings
        self._replica_id = replica_id
        self._metrics = metrics
        self._availability = availability
        self._stopping = asyncio.Event()
        self._answered: list[tuple[delivery.Claimed, delivery.Answer]] = []
        self._answer = asyncio.Event()  # set by every answer handed back
        self._sending: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="deliverer")

    def stop_claiming(self) -> None:
        self._stopping.set()

    async def stop(self, *, grace: float) -> None:
        """Stop claiming; give deliveries in flight `grace` seconds and record their answers,
        then give back the claims of those still unanswered (they are retried, by whichever
        replica is left)."""
        self._stopping.set()
        if self._loop is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._loop, timeout=5)
        pending: set[asyncio.Task[None]] = set()
        if self._sending:
            _, pending = await asyncio.wait(self._sending, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        try:
            await self._record_answered()
            if pending:
                async with self._engine.begin() as db:
                    await delivery.release(db, replica_id=self._replica_id)
        except Exception:
            # The claims go stale instead, and are given back by another replica.
            log.warning("deliverer: could not record or give back its claims", exc_info=True)

    async def _run(self) -> None:
        settings = self._settings
        released_at = -math.inf
        while not self._stopping.is_set():
            self._answer.clear()
            free = settings.webhook_concurrency - len(self._sending)
            claimed: list[delivery.Claimed] = []
            try:
                await self._record_answered()
                if time.monotonic() - released_at >= _RELEASE_EVERY_SECONDS:
                    async with self._engine.begin() as db:
                        # A claim this old is a replica that died mid-send.
                        await delivery.release(
                            db,
                            older_than=settings.webhook_timeout_seconds
                            + settings.dispatch_claim_grace_seconds,
                        )
                    released_at = time.monotonic()
                if free > 0:
                    async with self._engine.begin() as db:
                        claimed = await delivery.claim(
                            db,
                            replica_id=self._replica_id,
                            limit=free,
                            per_endpoint=settings.webhook_endpoint_concurrency,
                        )
            except Exception as exc:  # the loop must outlive any one failure
                if is_database_down(exc):
                    self._availability.lost("deliverer", exc)
                else:
                    log.exception("deliverer: claiming or recording failed")
            else:
                self._availability.reached("deliverer")
            for one in claimed:
                task = asyncio.create_task(self._deliver(one), name=f"deliver {one.event_id}")
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
            if claimed and len(claimed) == free:
                continue  # there may be more due: claim again once slots free up
            await sleep_until_set(settings.webhook_poll_seconds, self._stopping, self._answer)
            if self._answer.is_set():
                # Let the deliveries ending about now end too: one turn for them all (a
                # transaction costs about as much for one delivery as for many).
                await asyncio.sleep(_GATHER_SECONDS)

    async def _deliver(self, claimed: delivery.Claimed) -> None:
        answer = await delivery.attempt(
            self._http, claimed, within=self._settings.webhook_timeout_seconds
        )
        self._answered.append((claimed, answer))
        self._answer.set()

    async def _record_answered(self) -> None:
        """Record the answers handed back so far, in one transaction. Should the database be
        down, they are kept for the next turn; should it refuse them, their claims go stale and
        the events are sent again as retries."""
        if not self._answered:
            return
        answered, self._answered = self._answered, []
        try:
            async with self._engine.begin() as db:
                states = await delivery.record(db, answered, settings=self._settings)
        except Exception as exc:
            if is_database_down(exc):
                self._answered[:0] = answered
            raise
        for (claimed, answer), state in zip(answered, states, strict=True):
            self._metrics.webhook_deliveries.labels(_OUTCOMES[state]).inc()
            if not answer.delivered:
                log.info(
                    "webhook %s to endpoint %s: %s",
                    claimed.event_id,
                    claimed.endpoint_id,
                    answer.error,
                )


async def start_deliverer(
    stack: contextlib.AsyncExitStack,
    *,
    engine: AsyncEngine,
    targets: TargetPolicy,
    settings: Settings,
    replica_id: str,
    metrics: Metrics,
    availability: Availability,
    grace: float = 5,
) -> Deliverer:
    """A deliverer running until `stack` closes. Subscribers are reached only at addresses
    `targets` allows, checked at every connect; redirects are never followed. At the close,
    deliveries in flight get `grace` seconds, and those still unanswered are given back, to be
    retried."""
    http = await stack.enter_async_context(
        guarded_session(targets, limit=settings.webhook_concurrency)
    )
    deliverer = Deliverer(
        engine=engine,
        http=http,
        settings=settings,
        replica_id=replica_id,
        metrics=metrics,
        availability=availability,
    )
    deliverer.start()
    stack.push_async_callback(deliverer.stop, grace=grace)
    return deliverer


_OUTCOMES = {
    DeliveryState.DELIVERED: "delivered",
    DeliveryState.PENDING: "failed",  # to be retried
    DeliveryState.FAILED: "given_up",
}
