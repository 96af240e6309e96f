"""Background jobs each replica runs every so often for as long as it serves."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from app.calls.availability import Availability
from app.db.session import is_database_down

log = logging.getLogger(__name__)


async def sleep_until_set(seconds: float, *events: asyncio.Event) -> None:
    """Sleep `seconds`, or until any of `events` is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()


class Periodic:
    """Runs `job` every `interval` seconds, at once or after a first interval. A failing run is
    logged and the job runs again next time: the loop outlives any one failure."""

    def __init__(
        self,
        name: str,
        job: Callable[[], Awaitable[object]],
        *,
        interval: float,
        at_start: bool,
        availability: Availability,
    ) -> None:
        self._name = name
        self._availability = availability
        self._job = job
        self._interval = interval
        self._at_start = at_start
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self, *, grace: float = 10) -> None:
        """Stop after the run under way, if any (cancelled only after `grace` seconds)."""
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, timeout=grace)

    async def _run(self) -> None:
        if not self._at_start and await self._stopped_within(self._interval):
            return
        while True:
            try:
                await self._job()
            except Exception as exc:
                if is_database_down(exc):
                    self._availability.lost(self._name, exc)
                else:
                    log.exception("%s failed; trying again in %gs", self._name, self._interval)
            else:
                self._availability.reached(self._name)
            if await self._stopped_within(self._interval):
                return

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()
