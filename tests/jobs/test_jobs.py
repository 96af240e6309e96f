"""The one job mechanism (app/jobs): a claim lives as long as its worker beats; a lost one goes to
its kind, which says what that means; periodic jobs run one at a time across workers; the retry
policy. Replicas killed while holding each kind of work: tests/jobs/test_jobs_e2e.py."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.calls.availability import Availability
from app.calls.dispatch import Dispatch, budget_of, connect_request
from app.calls.placing import CallRequest, queue_calls
from app.config import Settings, default
from app.db.clock import db_now
from app.db.models import Call, CallStatus
from app.db.models import Periodic as PeriodicRow
from app.db.models import Worker as WorkerRow
from app.jobs.periodic import Periodic
from app.jobs.policy import RetryPolicy
from app.jobs.runner import Kind, Runner, Wait
from app.jobs.worker import Backlog, Queue, Worker, backlogs, new_worker_id
from app.metrics import Metrics
from app.recordings.archive import Archive
from tests.conftest import FAKE_CALLER_ID
from tests.support.eventually import eventually
from tests.support.exotel_double import ExotelDouble, accepted, exotel_client_of, form_of

pytestmark = pytest.mark.anyio

# The heartbeat's defaults (JOBS_BEAT_SECONDS, JOBS_LEASE_SECONDS), whatever the environment says.
BEAT_SECONDS = default("JOBS_BEAT_SECONDS")
LEASE_SECONDS = default("JOBS_LEASE_SECONDS")


def new_worker(sessionmaker: async_sessionmaker[AsyncSession]) -> Worker:
    """A worker with the default heartbeat, as a replica runs one."""
    return Worker(sessionmaker, beat_seconds=BEAT_SECONDS, lease_seconds=LEASE_SECONDS)


async def claimed_call(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, *, by: str
) -> Call:
    async with sessionmaker() as session, session.begin():
        request = CallRequest("+919052161110", app_id="926", caller_id=FAKE_CALLER_ID)
        ((call, _),) = await queue_calls(session, requests=[request], settings=settings.exotel)
        call.claimed_by, call.claimed_at, call.send_tries = by, await db_now(session), 1
    return call


async def beat(sessionmaker: async_sessionmaker[AsyncSession], worker: str, *, ago: float) -> None:
    """`worker`'s last heartbeat, `ago` seconds ago."""
    async with sessionmaker() as session, session.begin():
        at = await db_now(session) - timedelta(seconds=ago)
        session.add(WorkerRow(id=worker, started_at=at, heartbeat_at=at))


@contextlib.asynccontextmanager
async def running(
    kind: Kind[Any, Any], sessionmaker: async_sessionmaker[AsyncSession], *, grace: float = 1
) -> AsyncIterator[Runner[Any, Any]]:
    """`kind`'s runner, polling often, with a worker of its own; both stopped at the end."""
    metrics = Metrics()
    worker = new_worker(sessionmaker)
    await worker.start()
    runner = Runner(
        kind,
        sessionmaker=sessionmaker,
        worker=worker,
        poll=0.01,
        grace=grace,
        availability=Availability(metrics),
        metrics=metrics,
    )
    runner.start()
    try:
        yield runner
    finally:
        await runner.stop()
        await worker.stop()


class Recorded:
    """A kind's `lost`, noting what it was handed."""

    def __init__(self) -> None:
        self.keys: list[Any] = []

    async def __call__(self, session: AsyncSession, keys: Sequence[Any]) -> None:
        self.keys += keys


async def test_a_claim_lives_while_its_worker_beats_and_is_lost_once_it_stops(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    await beat(sessionmaker, "beating", ago=1)
    await beat(sessionmaker, "stopped", ago=LEASE_SECONDS + 1)
    alive = await claimed_call(sessionmaker, settings, by="beating")
    dead = await claimed_call(sessionmaker, settings, by="stopped")
    never = await claimed_call(sessionmaker, settings, by="never-beat")
    lost = Recorded()

    swept = await new_worker(sessionmaker).sweep("dispatch", Dispatch.queue, lost)

    assert swept == 2
    assert sorted(lost.keys) == sorted([dead.id, never.id])
    assert alive.id not in lost.keys


async def test_a_dispatch_whose_worker_stopped_mid_send_becomes_unknown_and_is_not_resent(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, exotel: ExotelDouble
) -> None:
    await beat(sessionmaker, "stopped", ago=LEASE_SECONDS + 1)
    call = await claimed_call(sessionmaker, settings, by="stopped")
    kind = Dispatch(
        sessionmaker=sessionmaker,
        exotel=None,  # type: ignore[arg-type]  # nothing is sent
        settings=settings.dispatch,
        budget=budget_of(settings.exotel),
        connect=None,  # type: ignore[arg-type]
        lookups=settings.reconcile,
    )

    assert await new_worker(sessionmaker).sweep(kind.name, kind.queue, kind.lost) == 1

    async with sessionmaker() as session:
        stored = await session.get(Call, call.id)
        assert stored is not None
        # Swept once: a second sweep finds nothing, and nothing is queued to be sent again.
        ready = await session.scalar(select(Call.id).where(Call.status == CallStatus.QUEUED))
    assert (stored.status, stored.error_code) == (CallStatus.UNKNOWN, "dispatch_interrupted")
    assert stored.claimed_by is None
    assert ready is None
    assert await new_worker(sessionmaker).sweep(kind.name, kind.queue, kind.lost) == 0
    assert exotel.connects == []


async def test_a_worker_that_stops_says_so_and_its_claims_are_lost_at_once(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    worker = new_worker(sessionmaker)
    await worker.start()
    assert worker.alive
    call = await claimed_call(sessionmaker, settings, by=worker.id)
    lost = Recorded()
    assert await new_worker(sessionmaker).sweep("dispatch", Dispatch.queue, lost) == 0

    await worker.stop()

    assert await new_worker(sessionmaker).sweep("dispatch", Dispatch.queue, lost) == 1
    assert lost.keys == [call.id]


async def test_a_periodic_job_runs_on_one_worker_at_a_time_and_again_when_lost(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    runs: list[str] = []

    async def job() -> None:
        runs.append("ran")

    kind = Periodic("tidy", job, every=60)
    async with sessionmaker() as session, session.begin():
        assert await kind.claim(session, worker="a", limit=1) == ["a"]
    async with sessionmaker() as session, session.begin():
        assert await kind.claim(session, worker="b", limit=1) == []  # held by a
    await kind.run("a")
    async with sessionmaker() as session, session.begin():
        await kind.record(session, [("a", None)])
    async with sessionmaker() as session, session.begin():
        assert await kind.claim(session, worker="b", limit=1) == []  # next due in a minute
        # A worker died holding it: it is due again at once.
        await session.execute(update(PeriodicRow).values(claimed_by="a"))
        await kind.lost(session, [kind.key("a")])
    async with sessionmaker() as session, session.begin():
        assert await kind.claim(session, worker="b", limit=1) == ["b"]
    assert runs == ["ran"]


async def test_a_late_record_of_a_periodic_run_taken_for_lost_leaves_the_new_claim(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    kind = Periodic("tidy", _nothing, every=60)
    async with sessionmaker() as session, session.begin():
        assert await kind.claim(session, worker="a", limit=1) == ["a"]
        await kind.lost(session, [kind.key("a")])  # a fell silent
    async with sessionmaker() as session, session.begin():
        assert await kind.claim(session, worker="b", limit=1) == ["b"]
    async with sessionmaker() as session, session.begin():
        await kind.record(session, [("a", None)])  # a, back, records its old run

    async with sessionmaker() as session:
        row = (await session.scalars(select(PeriodicRow))).one()
    assert row.claimed_by == "b"  # c cannot start a third run meanwhile


async def test_the_periodic_queue_is_swept_like_any_other(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    kind = Periodic("tidy", _nothing, every=60)
    async with sessionmaker() as session, session.begin():
        assert await kind.claim(session, worker="gone", limit=1) == ["gone"]
    assert isinstance(kind.queue, Queue)

    assert await new_worker(sessionmaker).sweep(kind.name, kind.queue, kind.lost) == 1

    async with sessionmaker() as session, session.begin():
        assert await kind.claim(session, worker="b", limit=1) == ["b"]


async def _nothing() -> None:
    return None


async def test_a_backlog_counts_what_is_due_what_runs_and_how_long_the_oldest_waited(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    await claimed_call(sessionmaker, settings, by="someone")
    waiting = await claimed_call(sessionmaker, settings, by="someone")
    later = await claimed_call(sessionmaker, settings, by="someone")
    async with sessionmaker() as session, session.begin():
        now = await db_now(session)
        await session.execute(
            update(Call)
            .where(Call.id == waiting.id)
            .values(claimed_by=None, created_at=now - timedelta(seconds=30))
        )
        await session.execute(
            update(Call)
            .where(Call.id == later.id)
            .values(claimed_by=None, next_attempt_at=now + timedelta(minutes=1))
        )
    async with sessionmaker() as session:
        work = await backlogs(session, {"dispatch": Dispatch.queue, "archive": Archive.queue})
    assert (work["dispatch"].due, work["dispatch"].running) == (1, 1)
    assert 30 <= work["dispatch"].oldest_due_age_seconds < 90
    assert work["archive"] == Backlog(due=0, running=0, oldest_due_age_seconds=0.0)


def test_worker_ids_are_unique() -> None:
    assert len({new_worker_id() for _ in range(100)}) == 100


def test_the_retry_policy_follows_its_schedule_then_gives_up() -> None:
    policy = RetryPolicy([5, 300, 1800], max_attempts=4)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 9)] == [5, 300, 1800, 1800, 1800]
    assert [policy.gives_up(n) for n in (3, 4)] == [False, True]
    assert not RetryPolicy([1]).gives_up(10**6)


def test_doubling_reaches_its_longest_and_stays() -> None:
    policy = RetryPolicy.doubling(2, 60, max_attempts=None)
    assert [policy.delay(n) for n in range(1, 9)] == [2, 4, 8, 16, 32, 60, 60, 60]


def test_jitter_stays_within_its_share() -> None:
    policy = RetryPolicy([100], jitter=0.2)
    delays = {policy.delay(1) for _ in range(200)}
    assert all(80 <= d <= 120 for d in delays)
    assert len(delays) > 1


def test_retry_after_is_honoured_as_is_or_within_one_to_two_scheduled_delays() -> None:
    assert RetryPolicy([10]).delay(1, retry_after=3600) == 3600
    within = RetryPolicy([10], retry_after_within_schedule=True)
    assert [within.delay(1, retry_after=s) for s in (1, 15, 3600)] == [10, 15, 20]


def test_a_slow_down_waits_at_least_its_floor_or_the_longest_delay() -> None:
    assert RetryPolicy([5, 300], slow_down_floor=60).delay(1, slow_down=True) == 60
    assert RetryPolicy([5, 30], slow_down_floor=60).delay(1, slow_down=True) == 30


class _CutAtCommit(Kind[str, None]):
    """Claims one job, then loses its connection before the claim commits."""

    name = "cut"

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.claims = 0
        self.runs: list[str] = []

    async def claim(self, session: AsyncSession, *, worker: str, limit: int) -> list[str]:
        self.claims += 1
        pid = await session.scalar(text("SELECT pg_backend_pid()"))
        async with self.engine.connect() as other:
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        return ["job"]

    async def run(self, job: str) -> None:
        self.runs.append(job)

    async def record(self, session: AsyncSession, done: Sequence[tuple[str, None]]) -> None:
        return None


async def test_a_claim_whose_commit_fails_runs_nothing(
    sessionmaker: async_sessionmaker[AsyncSession], engine: AsyncEngine, settings: Settings
) -> None:
    kind = _CutAtCommit(engine)
    async with running(kind, sessionmaker):
        # Claimed, and lost at commit, three times.
        await eventually(lambda: kind.claims, what="three claims", until=lambda n: n >= 3)
    assert kind.runs == []


class _CommitUnconfirmed(Dispatch):
    """The claim that claims the call to `number` commits, then its connection drops before the
    commit is confirmed (as when PostgreSQL restarts at that moment): the runner sees its claim
    fail; once. Every claim commits on a connection of its own, so that it is the claim that
    took the call that is cut, whichever it is (the runner claims every 10 ms: one may be under
    way as the call is queued)."""

    def __init__(self, engine: AsyncEngine, *, number: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.engine = engine
        self.number = number
        self.cut = False

    async def claim(self, session: AsyncSession, *, worker: str, limit: int) -> Any:
        async with self._sessionmaker() as own, own.begin():
            claimed = await super().claim(own, worker=worker, limit=limit)
        took = not isinstance(claimed, Wait) and any(job.number == self.number for job in claimed)
        if took and not self.cut:
            self.cut = True
            pid = await session.scalar(text("SELECT pg_backend_pid()"))
            async with self.engine.connect() as other:
                await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        return claimed


async def test_a_call_claimed_by_a_commit_gone_unconfirmed_is_sent_once_not_lost(
    sessionmaker: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    settings: Settings,
    exotel: ExotelDouble,
) -> None:
    """The claim committed, unbeknown to the runner: its call, claimed by a worker alive and
    never sent, once stayed `queued` until the process stopped (or, its heartbeat lapsed, was
    taken for lost mid-send: `unknown`, then `rejected` as never dialled). It is sent, once;
    and a call being sent meanwhile by the same runner is not given back with it."""
    sending = asyncio.Event()
    answer = asyncio.Event()

    async def first_held(request: httpx.Request) -> httpx.Response:
        if not sending.is_set():
            sending.set()
            await answer.wait()
        return accepted()

    exotel.on_connect = first_held

    async def queued(number: str) -> uuid.UUID:
        async with sessionmaker() as session, session.begin():
            request = CallRequest(number, app_id="926", caller_id=FAKE_CALLER_ID)
            ((call, _),) = await queue_calls(session, requests=[request], settings=settings.exotel)
        return call.id

    def sent(call_id: uuid.UUID) -> Callable[[], Awaitable[Call | None]]:
        async def stored() -> Call | None:
            async with sessionmaker() as session:
                call = await session.get(Call, call_id)
            return call if call and call.status != CallStatus.QUEUED else None

        return stored

    async with exotel_client_of(exotel.handle) as client:
        kind = _CommitUnconfirmed(
            engine,
            number="+919052161111",
            sessionmaker=sessionmaker,
            exotel=client,
            settings=settings.dispatch,
            budget=budget_of(settings.exotel),
            connect=functools.partial(
                connect_request, exotel=settings.exotel, callbacks=settings.callbacks
            ),
            lookups=settings.reconcile,
        )
        being_sent = await queued("+919052161110")
        async with running(kind, sessionmaker):
            await sending.wait()
            unconfirmed = await queued(kind.number)
            kind.wake()
            second = await eventually(sent(unconfirmed), what="the unconfirmed claim's call sent")
            answer.set()
            first = await eventually(sent(being_sent), what="the call being sent, answered")
    assert kind.cut
    for call in (first, second):
        assert call is not None
        assert (call.status, call.claimed_by) == (CallStatus.IN_PROGRESS, None)
        assert (len(call.attempts), call.send_tries) == (1, 1)
    dialled = Counter(form_of(request)["From"] for request in exotel.connects)
    assert sorted(dialled.values()) == [1, 1], dialled


class _SlowClaim(Kind[str, str]):
    """Claims one job, once, slowly: the claim is under way until the test lets it commit."""

    name = "slow claim"

    def __init__(self) -> None:
        self.claiming = asyncio.Event()
        self.commit = asyncio.Event()
        self.running = asyncio.Event()
        self.finish = asyncio.Event()
        self.outcomes: list[tuple[str, str]] = []

    async def claim(self, session: AsyncSession, *, worker: str, limit: int) -> list[str]:
        if self.claiming.is_set():
            return []
        self.claiming.set()
        await self.commit.wait()
        return ["job"]

    async def run(self, job: str) -> str:
        self.running.set()
        await self.finish.wait()
        return f"{job} done"

    async def record(self, session: AsyncSession, done: Sequence[tuple[str, str]]) -> None:
        self.outcomes += done


async def test_a_claim_under_way_when_the_runner_stops_is_run_and_recorded(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """SIGTERM stops claiming, but a claim already under way may still commit: its jobs get
    their grace and are recorded before the runner's stop returns (they once ran unwatched,
    their outcome dropped and their claims left to the sweep of another process)."""
    kind = _SlowClaim()
    async with running(kind, sessionmaker, grace=30) as runner:
        try:
            await kind.claiming.wait()
            runner.stop_claiming()  # SIGTERM
            stopping = asyncio.create_task(runner.stop())  # the app's shutdown
            kind.commit.set()
            await kind.running.wait()
            kind.finish.set()  # within its grace
            await stopping
            assert kind.outcomes == [("job", "job done")]  # when the stop returns
        finally:
            kind.commit.set()
            kind.finish.set()
