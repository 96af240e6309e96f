"""Background jobs each replica runs every so often for as long as it serves."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from app.db.session import is_database_down

log = logging.getLogger(__name__)


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
    ) -> None:
        self._name = name
        self._job = job
        self._interval = interval
        self._at_start = at_start
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        if not self._at_start:
            await asyncio.sleep(self._interval)
        while True:
            try:
                await self._job()
            except Exception as exc:
                if is_database_down(exc):
                    log.warning("%s: the database is unreachable (%r)", self._name, exc)
                else:
                    log.exception("%s failed; trying again in %gs", self._name, self._interval)
            await asyncio.sleep(self._interval)
