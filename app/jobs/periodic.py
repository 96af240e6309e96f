"""Periodic kinds: a job run every so often, by one worker at a time across replicas (a row of
`periodic`, claimed like any queue's), or by every process on its own (`local`: the spool's
replay, whose files are this process's)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.clock import db_now
from app.db.models import Periodic as Row
from app.db.session import is_database_down
from app.db.statements import table_of
from app.jobs.runner import Kind
from app.jobs.worker import Queue

log = logging.getLogger(__name__)

_ROW = table_of(Row).c


def queue_of(name: str) -> Queue:
    """The row of the periodic job `name`."""
    return Queue(
        key=_ROW.name,
        claimed_by=_ROW.claimed_by,
        due=_ROW.due_at,
        claimed=_ROW.name == name,
        waiting=_ROW.name == name,
    )


class Periodic(Kind[str, None]):
    """`job` every `every` seconds (first at once, or after `every` when not `at_start`). A run
    that fails is logged, and the next comes at the next interval; one that finds the database
    gone runs again once it is back."""

    concurrency = 1

    def __init__(
        self,
        name: str,
        job: Callable[[], Awaitable[object]],
        *,
        every: float,
        at_start: bool = True,
        local: bool = False,
    ) -> None:
        self.name = name
        self._job = job
        self.every = every
        self._at_start = at_start
        self.queue = None if local else queue_of(name)
        self._due_at = time.monotonic() + (0 if at_start else every)  # when `local`

    async def claim(self, session: AsyncSession, *, worker: str, limit: int) -> list[str]:
        """The claiming worker, as the job, when the job is due."""
        if self.queue is None:
            return [worker] if time.monotonic() >= self._due_at else []
        now = await db_now(session)
        first = now if self._at_start else now + timedelta(seconds=self.every)
        await session.execute(
            insert(Row).values(name=self.name, due_at=first).on_conflict_do_nothing()
        )
        claimed = await session.scalar(
            update(Row)
            .where(Row.name == self.name, Row.claimed_by.is_(None), Row.due_at <= now)
            .values(claimed_by=worker, claimed_at=now)
            .returning(Row.name)
        )
        return [worker] if claimed else []

    async def run(self, job: str) -> None:
        try:
            await self._job()
        except Exception as exc:
            if is_database_down(exc):
                raise  # the runner says so, and the job is run again once it is back
            log.exception("%s failed; trying again in %gs", self.name, self.every)
        finally:
            self._due_at = time.monotonic() + self.every  # when `local`

    async def record(self, session: AsyncSession, done: Sequence[tuple[str, None]]) -> None:
        if self.queue is None:
            return
        now = await db_now(session)
        for worker, _ in done:
            # Only while the claim is still this worker's (it may have been taken for lost).
            await session.execute(
                update(Row)
                .where(Row.name == self.name, Row.claimed_by == worker)
                .values(
                    claimed_by=None, claimed_at=None, due_at=now + timedelta(seconds=self.every)
                )
            )

    def key(self, job: str) -> str:
        return self.name

    async def lost(self, session: AsyncSession, keys: Sequence[Any]) -> None:
        """Run it again at once, wherever a worker is free."""
        await session.execute(
            update(Row)
            .where(Row.name.in_(keys))
            .values(claimed_by=None, claimed_at=None, due_at=await db_now(session))
        )
