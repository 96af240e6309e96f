"""The worker: this process, as the database knows it. Its heartbeat keeps its claims alive; its
sweep finds the claims of workers that stopped beating and hands them to their kinds as lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Double,
    and_,
    cast,
    delete,
    exists,
    func,
    literal,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.clock import db_now
from app.db.models import Worker as WorkerRow
from app.db.session import is_database_down

log = logging.getLogger(__name__)

_SWEPT_AT_ONCE = 500
_SERIAL = text("SET LOCAL max_parallel_workers_per_gather = 0")


@dataclass(frozen=True)
class Queue:
    """Where a kind keeps its claims: rows known by `key`, claimed by the worker in
    `claimed_by` (where `claimed` holds, when more than that marks a claimed row); the rows
    that are work to do (`waiting`, claimed or not) are due at `due`. `ready`, where more than
    waiting and unclaimed decides it: the rows counted as due once their time has come (it
    must imply both)."""

    key: ColumnElement[Any]
    claimed_by: ColumnElement[Any]
    due: ColumnElement[Any]
    claimed: ColumnElement[bool] = field(default_factory=true)
    waiting: ColumnElement[bool] = field(default_factory=true)
    ready: ColumnElement[bool] | None = None


@dataclass(frozen=True)
class Backlog:
    """Where a kind's work stands: due and not claimed, claimed (running), and how long the
    oldest due has waited past its time."""

    due: int
    running: int
    oldest_due_age_seconds: float


async def backlogs(session: AsyncSession, queues: Mapping[str, Queue]) -> dict[str, Backlog]:
    """Where each kind's work stands, by name, in one statement (a scrape reads every kind's):
    read through the queues' indexes, what is due and what is claimed; never what waits for a
    later time (a retry, calls scheduled for next week, what an endpoint that is down holds
    back). Parallel query is off for the rest of the caller's transaction."""
    now = func.statement_timestamp()  # one time for every queue (and every `ready`)
    parts = []
    for name, queue in queues.items():
        ready = queue.ready
        if ready is None:
            ready = and_(queue.waiting, queue.claimed_by.is_(None))
        due = (
            select(func.count().label("due"), func.min(queue.due).label("oldest"))
            .where(ready, queue.due <= now)
            .subquery()
        )
        running = select(func.count()).where(
            queue.waiting, queue.claimed, queue.claimed_by.is_not(None)
        )
        age = func.coalesce(func.extract("epoch", now - due.c.oldest), 0)
        parts.append(select(literal(name), due.c.due, running.scalar_subquery(), cast(age, Double)))
    if not parts:
        return {}
    # Counts read from a queue's index gain little from parallel workers, and the planner
    # cannot know how little there is to read: with an endpoint down, the due deliveries of
    # those up are, to it, every one owed. Two workers started for every scrape took about
    # 4.7 ms of the statement's 7.1 (bench/README.md).
    await session.execute(_SERIAL)
    rows = await session.execute(union_all(*parts))
    return {name: Backlog(due, running, max(0.0, age)) for name, due, running, age in rows}


Lost = Callable[[AsyncSession, Sequence[Any]], Awaitable[object]]


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Beats every `beat_seconds` and sweeps the queues of the kinds this process runs; a claim
    whose worker has not beaten for `lease_seconds` is lost, and found by the next sweep of any
    worker: at most lease + beat after a SIGKILL. `alive` says whether its own claims are still
    good (a worker cut off from the database for long stops claiming: others take its claims
    as lost)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        beat_seconds: float,
        lease_seconds: float,
    ) -> None:
        self.id = new_worker_id()
        self.beat_seconds = beat_seconds
        self.lease_seconds = lease_seconds
        self._sessionmaker = sessionmaker
        self._queues: list[tuple[str, Queue, Lost]] = []
        self._beaten_at = -float("inf")  # monotonic time of the last beat the database took
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def watch(self, name: str, queue: Queue, lost: Lost) -> None:
        """Sweep `queue` for lost claims, handing them to `lost` (in the sweep's transaction)."""
        self._queues.append((name, queue, lost))

    @property
    def alive(self) -> bool:
        return time.monotonic() - self._beaten_at < self.lease_seconds / 2

    async def start(self) -> None:
        """The first beat (so that nothing claimed is ever taken for lost), then the loop."""
        with contextlib.suppress(Exception):  # the database may be down: the loop beats later
            await self._beat_once()
        self._task = asyncio.create_task(self._run(), name="worker heartbeat")

    async def stop(self) -> None:
        """Stop beating and say so: whatever this worker still holds is lost at once."""
        self._stopping.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            async with self._sessionmaker() as session, session.begin():
                await session.execute(delete(WorkerRow).where(WorkerRow.id == self.id))
        except Exception:
            log.warning("worker %s: could not say it stopped; its claims lapse", self.id)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._beat_once()
                for name, queue, lost in self._queues:
                    await self.sweep(name, queue, lost)
            except Exception as exc:
                if not is_database_down(exc):
                    log.exception("worker %s: beating or sweeping failed", self.id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.beat_seconds)

    async def _beat_once(self) -> None:
        started = time.monotonic()
        async with self._sessionmaker() as session, session.begin():
            now = await db_now(session)
            await session.execute(
                insert(WorkerRow)
                .values(id=self.id, started_at=now, heartbeat_at=now)
                .on_conflict_do_update(index_elements=[WorkerRow.id], set_={"heartbeat_at": now})
            )
            # Workers gone a day are forgotten (their claims were swept long since).
            await session.execute(
                delete(WorkerRow).where(WorkerRow.heartbeat_at < now - timedelta(days=1))
            )
        self._beaten_at = started

    async def sweep(self, name: str, queue: Queue, lost: Lost) -> int:
        """Hand the claims of `queue` whose worker has not beaten for the lease to `lost`; how
        many."""
        async with self._sessionmaker() as session, session.begin():
            keys = list(await session.scalars(_lost_claims(queue, self.lease_seconds)))
            if keys:
                log.warning("%s: %d claims of a worker that stopped: lost", name, len(keys))
                await lost(session, keys)
        return len(keys)


def _lost_claims(queue: Queue, lease_seconds: float) -> Any:
    alive = exists().where(
        WorkerRow.id == queue.claimed_by,
        WorkerRow.heartbeat_at > func.clock_timestamp() - timedelta(seconds=lease_seconds),
    )
    return (
        select(queue.key)
        .where(queue.claimed, queue.claimed_by.is_not(None), ~alive)
        .limit(_SWEPT_AT_ONCE)
        .with_for_update(skip_locked=True)
    )
