"""The runner: works one kind of job in this process. One loop claims as many jobs as there are
free slots and records, in one transaction, every outcome that came in since its last turn; each
job runs in a task of its own, holding no transaction."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Generic, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.calls.availability import Availability
from app.db.session import is_database_down
from app.jobs.worker import Queue, Worker
from app.metrics import Metrics

log = logging.getLogger(__name__)

Job = TypeVar("Job")
Outcome = TypeVar("Outcome")
_GATHER_SECONDS = 0.005


@dataclass(frozen=True)
class Wait:
    """Ready work is held back this long (the account's budget is spent)."""

    seconds: float


class Kind(ABC, Generic[Job, Outcome]):
    """A kind of job, and its rules."""

    name: str
    concurrency: int = 1  # jobs run at once in this process
    # False: a wake-up is heard only while none of its jobs runs; while some do, each one's end
    # brings the next claim anyway, and a wake-up per commit would add claims that find nothing.
    wake_while_working: bool = True
    queue: Queue | None = None  # where its claims are kept; None: nothing outlives the process

    @abstractmethod
    async def claim(self, session: AsyncSession, *, worker: str, limit: int) -> list[Job] | Wait:
        """Up to `limit` jobs, claimed for `worker`; or, when ready work is held back (the
        account's budget spent), how long until it may go."""

    @abstractmethod
    async def run(self, job: Job) -> Outcome:
        """Do the job, holding no transaction; what came of it (the job's own failures are
        outcomes too)."""

    @abstractmethod
    async def record(self, session: AsyncSession, done: Sequence[tuple[Job, Outcome]]) -> None:
        """Write what came of the jobs, releasing their claims."""

    @cached_property
    def woken(self) -> asyncio.Event:
        return asyncio.Event()

    def wake(self) -> None:
        """New work of this kind was queued here: claim it now rather than at the next poll."""
        self.woken.set()

    def recorded(self, done: Sequence[tuple[Job, Outcome]]) -> None:
        """What came of the jobs is committed."""

    def key(self, job: Job) -> Any:
        """The job's key in its queue."""
        return job

    async def lost(self, session: AsyncSession, keys: Sequence[Any]) -> object:
        """Claims whose outcome will never be recorded: their worker died, or stopped with them
        unfinished, or recording it failed. Each kind says what that means (a dispatch may have
        dialled; a delivery may have arrived)."""
        raise NotImplementedError(f"{self.name} keeps no claims")

    async def unrun(self, session: AsyncSession, keys: Sequence[Any]) -> object:
        """Claims made for this process whose jobs it never ran: the claim's commit went
        unconfirmed (the connection dropped at COMMIT), and had committed. Lost, unless the
        kind can do better with work certainly not begun."""
        return await self.lost(session, keys)


class Runner(Generic[Job, Outcome]):
    def __init__(
        self,
        kind: Kind[Job, Outcome],
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        worker: Worker,
        poll: float,
        grace: float,
        availability: Availability,
        metrics: Metrics,
    ) -> None:
        self.kind = kind
        self._sessionmaker = sessionmaker
        self._worker = worker
        self._poll = poll
        self._grace = grace
        self._availability = availability
        self._metrics = metrics
        self._stopping = asyncio.Event()
        self._claiming = True
        # The keys of the claims this runner knows it holds: from their claim's commit until
        # what came of them is committed (recorded, or handed to the kind as lost).
        self._held: set[Any] = set()
        # A claim's commit raised: it may have committed all the same (`_give_back_unrun`).
        self._unconfirmed = False
        self._done: list[tuple[Job, Outcome | BaseException]] = []
        self._finished = asyncio.Event()  # set by every job that ends
        self._running: dict[asyncio.Task[None], Job] = {}
        # Held from a claim's start until its jobs run: stop() waits for a claim under way.
        self._claim = asyncio.Lock()
        self._loop: asyncio.Task[None] | None = None
        if kind.queue is not None:
            worker.watch(kind.name, kind.queue, kind.lost)

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name=self.kind.name)

    def stop_claiming(self) -> None:
        """Claim nothing more (SIGTERM); what runs is still recorded as it ends."""
        self._claiming = False
        self.kind.wake()

    async def stop(self) -> None:
        """Claim nothing more; give the jobs running `grace` seconds, record what came of them,
        and hand those still unfinished to their kind as lost."""
        self._claiming = False
        # A claim that began before claiming stopped may still commit: its jobs are started
        # first, so that they get their grace and are recorded or handed back like the rest
        # (they ran unwatched, and their calls stayed claimed by a process that had exited).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._grace), self._claim:
                pass
        unfinished: list[Job] = []
        if self._running:
            _, pending = await asyncio.wait(self._running, timeout=self._grace)
            unfinished = [self._running[task] for task in pending]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._stopping.set()
        if self._loop is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._loop, timeout=5)
        try:
            await self._record_done()
            if unfinished and self.kind.queue is not None:
                await self._lost(unfinished)
            if self._unconfirmed:
                await self._give_back_unrun()
        except Exception:
            # Its claims lapse with the worker instead, and another worker's sweep finds them.
            log.warning("%s: could not record or give back its jobs", self.kind.name, exc_info=True)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            self._finished.clear()
            claimed: list[Job] | Wait = []
            free = self.kind.concurrency - len(self._running)
            with self._watching_the_database():
                await self._record_done()
                if self._unconfirmed:
                    await self._give_back_unrun()
                if self._claiming and free > 0 and self._worker.alive:
                    async with self._claim:
                        async with self._sessionmaker() as session, session.begin():
                            wanted = await self.kind.claim(
                                session, worker=self._worker.id, limit=free
                            )
                            # Should the commit fail now, it may have committed all the same.
                            self._unconfirmed = self.kind.queue is not None and (
                                not isinstance(wanted, Wait) and bool(wanted)
                            )
                        self._unconfirmed = False
                        claimed = wanted  # only once committed: a claim rolled back is no claim
                        if not isinstance(claimed, Wait):
                            if self.kind.queue is not None:
                                self._held.update(self.kind.key(job) for job in claimed)
                            for job in claimed:
                                task = asyncio.create_task(
                                    self._work(job), name=f"{self.kind.name} job"
                                )
                                self._running[task] = job
                                task.add_done_callback(self._running.pop)
            if isinstance(claimed, Wait):  # ready work held back: new work changes nothing
                started = time.monotonic()
                await self._pause(claimed.seconds, self._finished)
                self._metrics.job_wait.labels(self.kind.name).inc(time.monotonic() - started)
            elif claimed:
                continue  # there may be more: claim again while slots are free
            else:
                heard = self.kind.wake_while_working or not self._running
                await self._pause(self._poll, *([self.kind.woken] if heard else []), self._finished)
            self.kind.woken.clear()
            if self._finished.is_set():
                # Let the jobs ending about now end too: one transaction records them all.
                await asyncio.sleep(_GATHER_SECONDS)

    @contextlib.contextmanager
    def _watching_the_database(self) -> Iterator[None]:
        """The loop outlives any one failure: an unreachable database is said once (and once
        when it is back), any other failure logged."""
        try:
            yield
        except Exception as exc:
            if is_database_down(exc):
                self._availability.lost(self.kind.name, exc)
            else:
                log.exception("%s: recording or claiming failed", self.kind.name)
        else:
            self._availability.reached(self.kind.name)

    async def _pause(self, seconds: float, *events: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(e.wait()) for e in (self._stopping, *events)]
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()

    async def _work(self, job: Job) -> None:
        outcome: Outcome | BaseException
        try:
            outcome = await self.kind.run(job)
        except Exception as exc:
            if is_database_down(exc):
                self._availability.lost(self.kind.name, exc)
            else:
                log.exception("%s: a job failed unexpectedly", self.kind.name)
            outcome = exc
        self._done.append((job, outcome))
        self._finished.set()

    async def _record_done(self) -> None:
        """Record the outcomes handed back so far, in one transaction. While the database is
        down they wait for the next turn. Should it refuse the batch, each is recorded alone;
        a job whose outcome cannot be recorded, or that failed unexpectedly, is lost (its kind
        says what that means)."""
        if not self._done:
            return
        done, self._done = self._done, []
        ran = [(job, outcome) for job, outcome in done if not isinstance(outcome, BaseException)]
        lost = [job for job, outcome in done if isinstance(outcome, BaseException)]
        try:
            if ran:
                await self._record(ran)
        except Exception as exc:
            if is_database_down(exc):
                self._done[:0] = done
                raise
            log.exception("%s: recording %d outcomes failed; each alone", self.kind.name, len(ran))
            for i, one in enumerate(ran):
                try:
                    await self._record([one])
                except Exception as again:
                    if is_database_down(again):
                        self._done[:0] = [*ran[i:], *((job, again) for job in lost)]
                        raise
                    log.exception("%s: an outcome cannot be recorded", self.kind.name)
                    lost.append(one[0])
        if lost and self.kind.queue is not None:
            await self._lost(lost)

    async def _give_back_unrun(self) -> None:
        """After a claim whose commit went unconfirmed: the claims of this worker in the kind's
        queue that this runner does not know it holds are that claim's, had it committed, and
        never ran. Left alone, they would stay claimed (by a worker alive) until the process
        stopped. While the database is down this waits for the next turn; any other failure
        leaves them to lapse with the worker, said once."""
        queue = self.kind.queue
        assert queue is not None
        mine = (
            select(queue.key)
            .where(queue.claimed, queue.claimed_by == self._worker.id)
            .order_by(queue.key)
            .with_for_update()
        )
        try:
            async with self._sessionmaker() as session, session.begin():
                unrun = [key for key in await session.scalars(mine) if key not in self._held]
                if unrun:
                    log.warning(
                        "%s: %d claims committed unconfirmed, never run", self.kind.name, len(unrun)
                    )
                    await self.kind.unrun(session, unrun)
        except Exception as exc:
            if is_database_down(exc):
                raise
            log.exception("%s: claims committed unconfirmed cannot be given back", self.kind.name)
        self._unconfirmed = False

    async def _record(self, ran: Sequence[tuple[Job, Outcome]]) -> None:
        async with self._sessionmaker() as session, session.begin():
            await self.kind.record(session, ran)
        self._held.difference_update(self.kind.key(job) for job, _ in ran)
        self.kind.recorded(ran)
        self._metrics.jobs.labels(self.kind.name, "done").inc(len(ran))

    async def _lost(self, jobs: Sequence[Job]) -> None:
        """Hand `jobs` to their kind as lost; while the database is down, they wait."""
        keys = [self.kind.key(job) for job in jobs]
        try:
            async with self._sessionmaker() as session, session.begin():
                await self.kind.lost(session, keys)
        except Exception as exc:
            if is_database_down(exc):
                self._done[:0] = [(job, exc) for job in jobs]
            # Otherwise the claims stay until this worker stops: said, never retried in a loop.
            raise
        self._held.difference_update(keys)
        self._metrics.jobs.labels(self.kind.name, "lost").inc(len(jobs))
