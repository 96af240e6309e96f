"""The dispatcher that runs inside every replica: it claims queued calls within the account's
shared budget and sends each to Exotel, several at a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.calls.availability import Availability
from app.calls.dispatch import claim_next, send_claimed
from app.calls.periodic import sleep_until_set
from app.calls.ratelimit import Budget
from app.config import Settings
from app.db.models import Call, CallStatus
from app.db.session import is_database_down
from app.exotel.client import ExotelClient
from app.logs import about
from app.metrics import Metrics

log = logging.getLogger(__name__)


def new_replica_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def budget_of(settings: Settings) -> Budget:
    return Budget(
        limit=settings.exotel_rate_limit,
        window=settings.exotel_rate_window_seconds,
        margin=settings.exotel_rate_margin_seconds,
    )


class Dispatcher:
    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        exotel: ExotelClient,
        settings: Settings,
        replica_id: str,
        metrics: Metrics,
        availability: Availability,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._metrics = metrics
        self._availability = availability
        self._exotel = exotel
        self._settings = settings
        self._budget = budget_of(settings)
        self.replica_id = replica_id
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.dispatch_concurrency)
        self._sending: set[asyncio.Task[None]] = set()
        self._finished: dict[uuid.UUID, asyncio.Event] = {}
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="dispatcher")

    def stop_claiming(self) -> None:
        """Claim nothing more; calls already claimed are still sent (see `stop`)."""
        self._stopping.set()

    async def stop(self, *, grace: float) -> None:
        """Stop claiming; give calls already sent up to `grace` seconds to be recorded. A send
        cut short leaves its claim, which reconciliation resolves without sending again."""
        self._stopping.set()
        if self._loop is not None:
            # Let a claim under way finish rather than cancel it mid-transaction.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._loop, timeout=5)
        if self._sending:
            _, pending = await asyncio.wait(self._sending, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def wake(self) -> None:
        """New work was queued here: look now rather than at the next poll."""
        self._wake.set()

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
                async with self._sessionmaker() as session:
                    call = await session.get(Call, call_id)
                # Done when Exotel's answer is recorded: a callback may have ended the call
                # before the answer came (the claim is held until it does).
                if call is None or (call.status != CallStatus.QUEUED and call.claimed_at is None):
                    return call
                remaining = deadline - loop.time()
                if remaining <= 0 or self._stopping.is_set():
                    return call
                await self._pause(min(pause, remaining), finished)
                pause = min(pause * 2, 1.0)
        finally:
            self._finished.pop(call_id, None)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            await self._slots.acquire()
            if self._stopping.is_set():  # while it waited for a free slot
                self._slots.release()
                return
            try:
                async with self._sessionmaker() as session, session.begin():
                    claimed = await claim_next(
                        session, budget=self._budget, replica_id=self.replica_id
                    )
            except asyncio.CancelledError:
                self._slots.release()
                raise
            except Exception as exc:  # the loop must outlive any one failure
                if is_database_down(exc):
                    self._availability.lost("dispatcher", exc)
                else:
                    log.exception("dispatcher: claiming failed")
                claimed = self._settings.dispatch_poll_seconds
            else:
                self._availability.reached("dispatcher")
            if isinstance(claimed, uuid.UUID):
                self._spawn_send(claimed)
                continue
            self._slots.release()
            if claimed is None:  # nothing ready: sleep until woken or the next poll
                self._wake.clear()
                await self._pause(self._settings.dispatch_poll_seconds, self._wake)
            else:  # the budget is spent: new work does not change that
                started = time.monotonic()
                await self._pause(claimed)
                self._metrics.rate_limit_wait.inc(time.monotonic() - started)

    async def _pause(self, seconds: float, *also: asyncio.Event) -> None:
        """Sleep `seconds`, or until stopping or any of `also` is set."""
        await sleep_until_set(seconds, self._stopping, *also)

    def _spawn_send(self, call_id: uuid.UUID) -> None:
        task = asyncio.create_task(self._send(call_id), name=f"send {call_id}")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, call_id: uuid.UUID) -> None:
        try:
            await send_claimed(
                sessionmaker=self._sessionmaker,
                exotel=self._exotel,
                settings=self._settings,
                call_id=call_id,
                replica_id=self.replica_id,
            )
        except Exception:
            # The claim stays; reconciliation resolves the call without sending it again.
            log.exception(
                "dispatcher: call %s was sent but its outcome was not recorded",
                call_id,
                extra=about(call_id),
            )
        finally:
            self._slots.release()
            if finished := self._finished.get(call_id):
                finished.set()
