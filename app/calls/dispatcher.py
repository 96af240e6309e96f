"""Dispatch as a kind of job (`app.jobs`): every replica claims queued calls within the
account's shared budget and sends each to Exotel, several at a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.calls.dispatch import (
    Verdict,
    claim_next,
    classify,
    record_lost,
    record_sent,
)
from app.calls.ratelimit import Budget
from app.calls.store import CallStore
from app.config import DispatchSettings, ExotelSettings, ReconcileSettings
from app.db.models import Call, CallStatus
from app.db.statements import table_of
from app.exotel.client import ConnectRequest, ExotelClient
from app.exotel.errors import ExotelError
from app.exotel.wire import ExotelCall
from app.jobs.policy import RetryPolicy
from app.jobs.runner import Kind, Wait
from app.jobs.worker import Queue
from app.logs import about, mask

log = logging.getLogger(__name__)

_CALLS = table_of(Call).c


def budget_of(settings: ExotelSettings) -> Budget:
    return Budget(
        limit=settings.rate_limit,
        window=settings.rate_window_seconds,
        margin=settings.rate_margin_seconds,
    )


@dataclass(frozen=True)
class Claimed:
    call_id: uuid.UUID
    number: str
    request: ConnectRequest


class Dispatch(Kind[Claimed, ExotelCall | Verdict]):
    """A claim is a queued call's `claimed_by`; one claimed is sent at once. Nothing that may
    have reached Exotel is sent again: a claim lost mid-send makes the call `unknown`. What
    certainly did not dial (a 429, no connection made) goes back to the queue, on the retry
    policy: 2, 4, 8 s ... up to the rate window, and `rejected` after DISPATCH_MAX_ATTEMPTS
    connections never made."""

    name = "dispatch"
    queue = Queue(
        key=_CALLS.id,
        claimed_by=_CALLS.claimed_by,
        due=func.coalesce(_CALLS.not_before, _CALLS.created_at),
        waiting=_CALLS.status == CallStatus.QUEUED.value,
    )

    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        exotel: ExotelClient,
        settings: DispatchSettings,
        budget: Budget,
        connect: Callable[[Call], ConnectRequest],
        lookups: ReconcileSettings,
    ) -> None:
        self.concurrency = settings.concurrency
        self._sessionmaker = sessionmaker
        self._exotel = exotel
        self._budget = budget
        self._connect = connect
        self._lookups = lookups
        self._retries = RetryPolicy.doubling(2, budget.window, max_attempts=settings.max_attempts)
        self._finished: dict[uuid.UUID, asyncio.Event] = {}
        self._stopping = False

    async def claim(
        self, session: AsyncSession, *, worker: str, limit: int
    ) -> list[Claimed] | Wait:
        claimed = await claim_next(session, budget=self._budget, worker=worker)
        if claimed is None:
            return []
        if isinstance(claimed, float):
            return Wait(claimed)
        return [Claimed(claimed.id, claimed.from_number, self._connect(claimed))]

    async def run(self, job: Claimed) -> ExotelCall | Verdict:
        log.info("dialling %s for call %s", mask(job.number), job.call_id, extra=about(job.call_id))
        try:
            return await self._exotel.connect(job.request)
        except ExotelError as exc:
            return classify(exc)

    async def record(
        self, session: AsyncSession, done: Sequence[tuple[Claimed, ExotelCall | Verdict]]
    ) -> None:
        store = await CallStore.of(session)
        sids = [result.sid for _, result in done if isinstance(result, ExotelCall)]
        await store.lock(ids=[job.call_id for job, _ in done], sids=sids)
        for job, result in done:
            await record_sent(
                session,
                store,
                job.call_id,
                result,
                lookups=self._lookups,
                retries=self._retries,
            )
        await store.flush()

    def recorded(self, done: Sequence[tuple[Claimed, ExotelCall | Verdict]]) -> None:
        for job, _ in done:
            if finished := self._finished.get(job.call_id):
                finished.set()

    def key(self, job: Claimed) -> uuid.UUID:
        return job.call_id

    async def lost(self, session: AsyncSession, keys: Sequence[uuid.UUID]) -> None:
        await record_lost(session, keys)

    def stop_waiting(self) -> None:
        """The replica is shutting down: requests waiting for their call to be sent answer now."""
        self._stopping = True
        for finished in self._finished.values():
            finished.set()

    async def wait_until_sent(self, call_id: uuid.UUID, *, within: float) -> Call | None:
        """Wait up to `within` seconds for the call to leave the queue; the call as stored.

        The call may be sent by any replica: this one says so at once, the others are seen by
        looking at the database now and then. A replica shutting down waits no more: the call
        is queued for whichever replica is left, or its send here is finished without us.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        finished = self._finished.setdefault(call_id, asyncio.Event())
        pause = 0.05
        try:
            while True:
                finished.clear()  # set from here on: recorded since this read
                async with self._sessionmaker() as session:
                    call = await session.get(Call, call_id)
                # Done when Exotel's answer is recorded: a callback may have ended the call
                # before the answer came (the claim is held until it does).
                if call is None or (call.status != CallStatus.QUEUED and call.claimed_at is None):
                    return call
                remaining = deadline - loop.time()
                if remaining <= 0 or self._stopping:
                    return call
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finished.wait(), min(pause, remaining))
                pause = min(pause * 2, 1.0)
        finally:
            self._finished.pop(call_id, None)
