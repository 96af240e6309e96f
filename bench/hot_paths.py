"""Hot paths on a big database against the same paths on an empty one, in one run.

Each database (an empty one, and each `--filled` one that someone already filled, e.g. with
`bench.history`) gets its own `exocall serve`, all beside one Exotel simulator; then each path
is measured on every database in turn, three times, each database first once (ABC BCA CAB), so
that the machine's noise and the place in a round fall on them alike, each time once what the
paths before it left (calls to send, events to deliver) is done; a figure is the runs' median,
and a latency's percentile is that of every run's requests together. The paths: `POST /calls`
and `POST /calls/batch` (the dispatch claim and the shared budget run, the limit high enough
never to hold back), status callbacks and Passthru requests under the ingestion benchmark's wrk
load (on calls in progress the bench places), `GET /calls` with each filter and a deep cursor,
one call and its events, `GET /events` from the oldest and from the newest, the time new events
take to reach a webhook subscriber, `/ui` and `/metrics`, then (by calling the app's functions)
a reconciliation round and the recording archive's claim. Last, on each database (they lose the
oldest tenth of their events), the retention runs: what they delete a second, and the status
callbacks' rate while they run against without.

Prints each path's figure on the empty database, on each filled one, and the ratio to empty;
then, from pg_stat_statements (reset after setting up), each database's slowest statements by
mean time (with the WAL each wrote), the relations the paths read most from outside
shared_buffers (blocks, beside the baseline's: pg_statio), and its size (tables and indexes)
per million calls. Needs `wrk` (`apt-get install wrk`) and pg_stat_statements in the server's
shared_preload_libraries (the embedded server is started with it).

    .venv/bin/python -m bench.hot_paths --filled postgresql+asyncpg://postgres@127.0.0.1:5432/big
    .venv/bin/python -m bench.hot_paths --empty URL --filled URL --filled URL --duration 10 --warm
    .venv/bin/python -m bench.hot_paths --calls 1000000,3000000    # filled by bench.history first
    .venv/bin/python -m bench.hot_paths --filled URL --only Passthru --only retention
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.calls import cursors
from app.calls.dispatch import budget_of
from app.calls.reconcile import reconcile_once
from app.calls.retention import forget_unmatched_receipts
from app.config import Settings
from app.db.clock import db_now
from app.db.models import Call, CallStatus, Delivery, DeliveryState, Event, WebhookEndpoint
from app.db.session import create_engine, create_sessionmaker
from app.db.statements import written_in
from app.events.retention import forget_old_events
from app.main import exotel_client
from app.metrics import Metrics
from app.recordings.archive import Archive
from app.recordings.retention import forget_old_recordings
from app.recordings.store import RecordingStore
from bench import fresh_database
from bench.callback_ingest import (
    CONNECTIONS,
    load,
    placed_calls,
    serve,
    server_env,
    whole_callback,
    wrk_script,
)
from bench.history import fill
from bench.passthru import APP_ID, in_flows, passthru_script, wrk
from bench.webhooks import SUBSCRIBER_APP, send_callbacks
from tests.support.processes import free_ports

API_KEY = "bench-fake-internal-key"
# The baseline: five hours of one account's calls, whose newest 3,000 are live (bench.history's
# LIVE, as in every filled database). What the live calls cost (a reconciliation round looks
# them up; deliveries owed to the history's endpoints, which are down, wait for their retry) is
# then alike on every database, and what differs is the history's size.
DAY_ONE = 60_000
REPEATS = 3  # each path on every database in turn, this many times: a figure is the runs' median
SETTLE_SECONDS = 120.0
EXOTEL_RATE_LIMIT = "100000"  # per minute: the shared budget runs, and never holds back


@dataclass(frozen=True)
class Counts:
    """How much of each path one measurement makes."""

    requests: int = 500  # each GET path's, the archive's claims
    posts: int = 200  # POST /calls, one at a time
    batches: int = 40  # POST /calls/batch, of `batch` calls each
    batch: int = 50
    placed: int = 2000  # calls in progress for the callback and Passthru loads, each
    delivered: int = 200  # new events for the webhook subscriber


@dataclass
class Database:
    """One database under test, its server, and what the bench placed in it."""

    label: str
    url: str
    work: Path
    counts: Counts
    api: str = ""
    port: int = 0
    process: Any = None
    callbacks: Path = Path()
    passthrus: Path = Path()
    endpoint: str = ""
    simulator: str = ""
    probes: dict[str, str] = field(default_factory=dict)  # the GET paths, filled in per history
    began: datetime | None = None  # the database's time before the bench wrote anything
    read_before: dict[str, int] = field(default_factory=dict)  # blocks read, by relation


Figures = dict[str, float]
Samples = list[float]  # seconds, one a request
# A path's run: its figures, or each request's latency (whose percentiles are those of every
# run's requests together).
Measure = Callable[[Database], Awaitable[Figures | Samples]]


@dataclass(frozen=True)
class Row:
    path: str
    figure: str
    values: list[float]  # per database, the empty one first


# ---- what each path's figures are ---------------------------------------------------------


def percentiles(samples: list[float]) -> Figures:
    ordered = sorted(samples)
    return {
        "p50 ms": statistics.median(ordered) * 1000,
        "p99 ms": ordered[min(len(ordered) - 1, math.ceil(len(ordered) * 0.99) - 1)] * 1000,
    }


async def latencies(api: str, method: str, path: str, *, count: int, body: Any = None) -> Samples:
    """`count` requests in a row; how long each took."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    samples = []
    async with httpx.AsyncClient(base_url=api, headers=headers, timeout=60) as http:
        for n in range(count):
            payload = body(n) if callable(body) else body
            started = time.perf_counter()
            response = await http.request(method, path, json=payload)
            samples.append(time.perf_counter() - started)
            if response.is_error:
                raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
    return samples


def get(path_of: str) -> Measure:
    async def measure(db: Database) -> Samples:
        return await latencies(db.api, "GET", db.probes[path_of], count=db.counts.requests)

    return measure


async def post_calls(db: Database) -> Samples:
    def call(n: int) -> dict[str, Any]:
        return {"from": _number(), "app_id": "926"}

    since = await database_now(db.url)
    samples = await latencies(db.api, "POST", "/calls", count=db.counts.posts, body=call)
    await settled(db, ended_since=since)
    return samples


async def post_batches(db: Database) -> Samples:
    def batch(n: int) -> dict[str, Any]:
        return {"calls": [{"from": _number(), "app_id": "926"} for _ in range(db.counts.batch)]}

    since = await database_now(db.url)
    samples = await latencies(db.api, "POST", "/calls/batch", count=db.counts.batches, body=batch)
    await settled(db, ended_since=since)
    return samples


def _number() -> str:
    # A Chennai landline's: the history's numbers are mobiles (6 to 9), some of them opted out,
    # which would refuse a call. 0 at the end: answered and completed.
    return f"+9144{uuid.uuid4().int % 10**7:07d}0"


def status_callbacks(duration: int) -> Measure:
    async def measure(db: Database) -> Figures:
        run = await asyncio.to_thread(load, db.port, db.callbacks, duration, db.process)
        return {"per s": run.requests_per_second, "p99 ms": run.p99_ms}

    return measure


def passthrus(duration: int) -> Measure:
    async def measure(db: Database) -> Figures:
        run = await asyncio.to_thread(wrk, db.port, db.passthrus, CONNECTIONS, duration)
        return {"per s": run["rate"], "p99 ms": run["p99_ms"]}

    return measure


async def webhook_delivery(db: Database) -> Figures:
    """Seconds from the first of the callbacks (each a call's first: an event each) until the
    subscriber has every event."""
    calls = await placed_calls(db.url, count=db.counts.delivered)
    ids = [call_id for call_id, _ in calls]
    started = time.monotonic()
    await send_callbacks(db.api, calls)
    engine = create_engine(db.url)
    try:
        while time.monotonic() - started < SETTLE_SECONDS:
            async with engine.connect() as connection:
                delivered = await connection.scalar(
                    select(func.count()).where(
                        Delivery.call_id.in_(ids),
                        Delivery.endpoint_id == uuid.UUID(db.endpoint),
                        Delivery.state == DeliveryState.DELIVERED,
                    )
                )
            if delivered == len(calls):
                break
            await asyncio.sleep(0.05)
    finally:
        await engine.dispose()
    elapsed = time.monotonic() - started
    return {"s": elapsed, "per s": len(calls) / elapsed}


async def reconciliation(db: Database) -> Figures:
    """A round with every call in progress due, so that each database's round looks up as
    many by SID (a round's worth): the history's live calls are as old as its fill, the
    baseline's fresh. `unknown` calls wait: the simulator knows none of them, and a round
    that looks them up rejects them, and the next run's history has none."""
    settings = bench_settings(db.url, db.simulator)
    engine = create_engine(db.url)
    try:
        async with engine.begin() as connection:
            later = await db_now(connection) + timedelta(days=1)
            for status, due in ((CallStatus.IN_PROGRESS, None), (CallStatus.UNKNOWN, later)):
                waiting = update(Call).where(Call.status == status)
                await connection.execute(waiting.values(next_lookup_at=due))
        async with httpx.AsyncClient() as http:
            started = time.perf_counter()
            await reconcile_once(
                sessionmaker=create_sessionmaker(engine),
                exotel=exotel_client(settings, http),
                settings=settings.reconcile,
                budget=budget_of(settings.exotel),
            )
            return {"ms": (time.perf_counter() - started) * 1000}
    finally:
        await engine.dispose()


async def archive_claim(db: Database) -> Samples:
    """The archive's claim of 10 due recordings, rolled back, once per request of `counts`."""
    settings = bench_settings(db.url)
    engine = create_engine(db.url)
    sessionmaker = create_sessionmaker(engine)
    samples = []
    try:
        async with httpx.AsyncClient() as http:
            archive = Archive(
                sessionmaker=sessionmaker,
                exotel=exotel_client(settings, http),
                store=RecordingStore.from_settings(settings.recordings),
                settings=settings.recordings,
                budget=budget_of(settings.exotel),
                held_dir=db.work / "held",
                metrics=Metrics(),
            )
            for _ in range(db.counts.requests):
                async with sessionmaker() as session, session.begin():
                    started = time.perf_counter()
                    await archive.claim(session, worker="bench", limit=10)
                    samples.append(time.perf_counter() - started)
                    await session.rollback()
    finally:
        await engine.dispose()
    return samples


def paths(duration: int, counts: Counts) -> list[tuple[str, Measure]]:
    return [
        (f"POST /calls ({counts.posts}, one at a time)", post_calls),
        (f"POST /calls/batch ({counts.batches} of {counts.batch})", post_batches),
        ("status callbacks (wrk)", status_callbacks(duration)),
        ("Passthru (wrk)", passthrus(duration)),
        *((f"GET {name}", get(name)) for name in PROBES),
        (f"webhooks: {counts.delivered} new events delivered", webhook_delivery),
        ("reconciliation round", reconciliation),
        ("archive claim (10)", archive_claim),
    ]


PROBES = [
    "/calls",
    "/calls?status=completed",
    "/calls?status=queued",
    "/calls?from=",
    "/calls?created_after&before",
    "/calls?batch_id=",
    "/calls?digits=5",
    "/calls?cursor=deep",
    "/calls/{id}",
    "/calls/{id}/events",
    "/events (from the oldest)",
    "/events?after=now",
    "/ui",
    "/metrics",
]


async def probes(url: str) -> dict[str, str]:
    """The GET paths of PROBES, on calls from far into this database's history (on an empty
    one, values that find nothing)."""
    engine = create_engine(url)
    async with engine.connect() as db:
        total = await db.scalar(select(func.count()).select_from(Call)) or 0
        oldest = select(Call).order_by(Call.created_at, Call.id)
        deep = (await db.execute(oldest.offset(total // 10).limit(1))).first()
        middle = (await db.execute(oldest.offset(total // 2).limit(1))).first()
        batched = await db.scalar(
            select(Call.batch_id).where(Call.batch_id.is_not(None)).order_by(Call.created_at)
        )
        # A number called often enough to fill a page on every database: the middle call's
        # was a number called once on one and a hundred times on another.
        frequent = await db.scalar(
            select(Call.from_number)
            .group_by(Call.from_number)
            .order_by(func.count().desc(), Call.from_number)
            .limit(1)
        )
    await engine.dispose()
    at = middle.created_at if middle else datetime.now(UTC)
    call = str(deep.id) if deep else str(uuid.uuid4())
    window = f"created_after={_instant(at)}&created_before={_instant(at + timedelta(hours=1))}"
    cursor = cursors.encode([deep.created_at.isoformat(), str(deep.id)]) if deep else None
    return {
        "/calls": "/calls",
        "/calls?status=completed": "/calls?status=completed",
        "/calls?status=queued": "/calls?status=queued",
        "/calls?from=": f"/calls?from={quote(frequent or '+919000000001')}",
        "/calls?created_after&before": f"/calls?{window}",
        "/calls?batch_id=": f"/calls?batch_id={batched or uuid.uuid4()}",
        "/calls?digits=5": "/calls?digits=5",
        "/calls?cursor=deep": f"/calls?cursor={cursor}" if cursor else "/calls",
        "/calls/{id}": f"/calls/{call}" if deep else "/calls",
        "/calls/{id}/events": f"/calls/{call}/events" if deep else "/calls",
        "/events (from the oldest)": "/events",
        "/events?after=now": "/events?after=now",
        "/ui": "/ui",
        "/metrics": "/metrics",
    }


def _instant(at: datetime) -> str:
    return quote(at.isoformat())


# ---- the databases, their servers, and the run ----------------------------------------------


def bench_settings(url: str, simulator: str = "http://127.0.0.1:9") -> Settings:
    """The settings `exocall serve` runs with here, for calling the app's functions."""
    return Settings.load(None, **server_values(url, simulator))


def server_values(url: str, simulator: str = "http://127.0.0.1:9") -> dict[str, str]:
    return {
        "DATABASE_URL": url,
        "EXOTEL_ACCOUNT_SID": "bench-account",
        "EXOTEL_API_KEY": "bench-fake-key",
        "EXOTEL_API_TOKEN": "bench-fake-token",
        "EXOTEL_API_BASE_URL": simulator,
        "EXOTEL_CALLER_ID": "08030752400",
        "EXOTEL_RATE_LIMIT": EXOTEL_RATE_LIMIT,
    }


async def settled(db: Database, *, ended_since: datetime | None = None) -> None:
    """Until no call waits to be dispatched (a filled history keeps some queued), nothing is
    owed to the bench's subscriber and, with `ended_since`, every call made since has ended:
    what a path leaves behind (the simulator's callbacks for its calls, the deliveries of the
    events a load made) is then done before the next path is measured, not while it is (on
    another database, whose figures it would slow)."""
    waiting = [select(func.count()).where(Call.status == CallStatus.QUEUED)]
    if db.endpoint:
        waiting.append(
            select(func.count()).where(
                Delivery.endpoint_id == uuid.UUID(db.endpoint),
                written_in(Delivery.state, DeliveryState.PENDING, DeliveryState.SENDING),
            )
        )
    if ended_since is not None:
        waiting.append(
            select(func.count()).where(
                Call.status == CallStatus.IN_PROGRESS, Call.created_at >= ended_since
            )
        )
    engine = create_engine(db.url)
    deadline = time.monotonic() + SETTLE_SECONDS
    try:
        while time.monotonic() < deadline:
            async with engine.connect() as connection:
                if not any([await connection.scalar(count) for count in waiting]):
                    return
            await asyncio.sleep(0.2)
    finally:
        await engine.dispose()


async def counted(url: str) -> int:
    engine = create_engine(url)
    async with engine.connect() as db:
        calls = await db.scalar(select(func.count()).select_from(Call)) or 0
    await engine.dispose()
    return calls


async def prepare(db: Database, simulator: str, subscriber: str) -> None:
    """Calls in progress for the loads, the server, a webhook endpoint, the GET paths."""
    db.simulator = simulator
    db.began = await database_now(db.url)
    callbacks = await placed_calls(db.url, count=db.counts.placed)
    flows = await placed_calls(db.url, count=db.counts.placed)
    await in_flows(db.url, [call_id for call_id, _ in flows])
    engine = create_engine(db.url, isolation_level="AUTOCOMMIT")
    async with engine.connect() as connection:
        # The history's endpoints, which nothing answers, start each run alike on every
        # database: known to have failed for an hour, next tried a day from now, and what
        # they are owed retried then too. A history filled for this run owes them its live
        # calls' events at once, and one that a run before has used owes them later, as their
        # retries fell. And an endpoint just found failing is tried two deliveries at a time
        # for its first minute: after the first load on the empty database, its server spent
        # 0.3 to 0.8 of a core on them while the next database's path was measured.
        await connection.execute(
            update(WebhookEndpoint).values(
                failing_since=func.now() - timedelta(hours=1),
                retry_at=func.now() + timedelta(days=1),
            )
        )
        await connection.execute(
            update(Delivery)
            .where(written_in(Delivery.state, DeliveryState.PENDING))
            .values(next_attempt_at=func.now() + timedelta(days=1))
        )
        if await statement_stats(connection):
            await connection.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
            # How long each statement waited for its reads (a superuser's setting).
            if await connection.scalar(text("SHOW is_superuser")) == "on":
                name = await connection.scalar(text("SELECT current_database()"))
                await connection.execute(text(f'ALTER DATABASE "{name}" SET track_io_timing = on'))
        await connection.execute(text("ANALYZE"))  # autovacuum may be off
    await engine.dispose()
    db.callbacks, db.passthrus = db.work / "callbacks.lua", db.work / "passthru.lua"
    wrk_script(callbacks, db.callbacks, whole_callback)
    passthru_script(flows, db.passthrus)
    db.probes = await probes(db.url)
    (db.port,) = free_ports(1)
    db.api = f"http://127.0.0.1:{db.port}"
    env = server_env(
        db.url,
        db.work,
        **server_values(db.url, simulator),
        API_KEYS=API_KEY,
        PUBLIC_BASE_URL=db.api,
        PASSTHRU_REDIRECT_DIGITS=json.dumps({APP_ID: ["2"]}),
        NUMBER_ATTEMPT_LIMIT="",
    )
    argv = [str(Path(sys.executable).parent / "exocall"), "serve", "--no-access-log"]
    db.process = serve([*argv, "--port", str(db.port)], env, db.port, db.work / "exocall.log")
    async with httpx.AsyncClient(
        base_url=db.api, headers={"Authorization": f"Bearer {API_KEY}"}
    ) as http:
        created = await http.post("/webhook-endpoints", json={"url": f"{subscriber}/hook"})
        created.raise_for_status()
        db.endpoint = created.json()["id"]
    await settled(db)


@contextlib.contextmanager
def helpers(work: Path) -> Iterator[tuple[str, str]]:
    """The Exotel simulator and a webhook subscriber, on loopback ports; their URLs."""
    bin_dir = Path(sys.executable).parent
    (work / "subscriber.py").write_text(SUBSCRIBER_APP)
    sim_port, sub_port = free_ports(2)
    env = server_env("", work, **server_values("")) | {"PYTHONPATH": str(work)}
    processes = [
        serve(
            [str(bin_dir / "exocall"), "simulator", "--port", str(sim_port)],
            env,
            sim_port,
            work / "simulator.log",
            ready_path="/_simulator/log",
        )
    ]
    try:
        processes.append(
            serve(
                [
                    *(str(bin_dir / "uvicorn"), "subscriber:app", "--log-level", "warning"),
                    *("--no-access-log", "--port", str(sub_port)),
                ],
                env,
                sub_port,
                work / "subscriber.log",
                ready_path="/count",
            )
        )
        yield f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{sub_port}"
    finally:
        for process in processes:
            process.terminate()
            process.wait()


async def measure(
    databases: list[tuple[str, str]],
    *,
    duration: int,
    repeats: int = REPEATS,
    counts: Counts = Counts(),
    warm: bool = False,
    only: tuple[str, ...] = (),
) -> tuple[list[Row], list[str]]:
    """The seam: every path on each (label, url), the first being the empty database, in
    turn, `repeats` times; the table's rows, and what pg_stat_statements and the sizes say.
    `warm`: each database's indexes on random keys read into shared_buffers first. `only`:
    just the paths whose names hold one of these (`retention` names the retention runs)."""
    rows: list[Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as workdir, helpers(Path(workdir)) as (sim, sub):
        dbs = [
            Database(label, url, Path(workdir) / str(n), counts)
            for n, (label, url) in enumerate(databases)
        ]
        began = time.monotonic()
        try:
            for db in dbs:
                db.work.mkdir()
                await prepare(db, sim, sub)
                if warm:
                    notes.append(await warmed(db))
            for db in dbs:
                await reset_statements(db.url)
                db.read_before = await blocks_read(db.url)
            for name, path in paths(duration, counts):
                if not chosen(name, only):
                    continue
                print(f"{time.monotonic() - began:6.0f} s: {name}", file=sys.stderr, flush=True)
                taken: list[list[Figures | Samples]] = [[] for _ in dbs]
                for repeat in range(repeats):
                    # Each database first in turn: whatever the place in a round costs (a
                    # day-one database always second to another had 1.43 its batches' p50)
                    # falls on each alike.
                    turn = repeat % len(dbs)
                    for n in [*range(turn, len(dbs)), *range(turn)]:
                        # Every server, not only the one measured: the one before may still
                        # be delivering what its load made, on the same two cores.
                        for each in dbs:
                            await settled(each)
                        taken[n].append(await path(dbs[n]))
                summaries = [summary(runs) for runs in taken]
                rows += [
                    Row(name, figure, [each[figure] for each in summaries])
                    for figure in summaries[0]
                ]
        finally:
            for db in dbs:
                if db.process is not None:
                    db.process.terminate()
                    db.process.wait()
        baseline = await kept_statements(dbs[0].url)
        notes += [await statements(db.label, db.url, baseline) for db in dbs[1:]]
        base_read = await read_since(dbs[0])
        notes += [relations_read(db.label, await read_since(db), base_read) for db in dbs[1:]]
        notes += [await sizes(db.label, db.url) for db in dbs[1:]]
        if chosen("retention", only):
            print(f"{time.monotonic() - began:6.0f} s: retention", file=sys.stderr, flush=True)
            retained, while_retained = await retention(dbs, duration)
            rows, notes = rows + retained, notes + while_retained
        for db in dbs:
            await forget_the_bench(db)
    return rows, notes


def summary(runs: list[Figures | Samples]) -> Figures:
    """A path's figures on one database over its runs: the percentiles of every run's requests
    together, or each figure's median over them."""
    samples = [sample for run in runs if isinstance(run, list) for sample in run]
    if samples:
        return percentiles(samples)
    figures = [run for run in runs if isinstance(run, dict)]
    return {figure: statistics.median(run[figure] for run in figures) for figure in figures[0]}


def chosen(name: str, only: tuple[str, ...]) -> bool:
    return not only or any(part in name for part in only)


async def database_now(url: str) -> datetime:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await db_now(connection)
    finally:
        await engine.dispose()


async def forget_the_bench(db: Database) -> None:
    """What the bench wrote goes: its calls (with their events and deliveries), the events
    the retention runs made of the history's calls (their recordings deleted: owed to the
    history's dead endpoints, they would be the next run's backlog), and its webhook endpoint,
    which nothing would answer at the next run (a dead endpoint more each run, each owed every
    new event)."""
    if db.began is None:
        return
    engine = create_engine(db.url)
    try:
        async with engine.begin() as connection:
            await connection.execute(delete(Call).where(Call.created_at >= db.began))
            await connection.execute(delete(Event).where(Event.created_at >= db.began))
            if db.endpoint:
                gone = delete(WebhookEndpoint).where(WebhookEndpoint.id == uuid.UUID(db.endpoint))
                await connection.execute(gone)
    finally:
        await engine.dispose()


async def retention(dbs: list[Database], duration: int) -> tuple[list[Row], list[str]]:
    """Last, on each database (a copy of a big one would not fit on most disks): the status
    callbacks' rate alone, then while the three retention runs delete the oldest tenth of the
    history; what they delete a second. And the slowest statements meanwhile."""
    taken: list[Figures] = []
    notes = []
    baseline = None
    for n, db in enumerate(dbs):
        await reset_statements(db.url)
        taken.append(await _retention_on(db, db.url, duration))
        if n:
            label = f"{db.label} while retention ran"
            notes.append(await statements(label, db.url, baseline, most=6))
        else:
            baseline = await kept_statements(db.url)
    rows = [
        Row(f"retention: {name}", figure, [figures[f"{name}|{figure}"] for figures in taken])
        for name, figure in (key.split("|") for key in taken[0])
    ]
    return rows, notes


async def _retention_on(db: Database, url: str, duration: int) -> Figures:
    (port,) = free_ports(1)
    env = server_env(url, db.work, **server_values(url), PUBLIC_BASE_URL=f"http://127.0.0.1:{port}")
    argv = [str(Path(sys.executable).parent / "exocall"), "serve", "--no-access-log"]
    process = serve([*argv, "--port", str(port)], env, port, db.work / "retention.log")
    figures: Figures = {}
    try:
        alone = await asyncio.to_thread(load, port, db.callbacks, duration, process)
        await settled(db)  # the events of those callbacks delivered, before the second load
        deleting = asyncio.create_task(_forget(url, figures))
        during = await asyncio.to_thread(load, port, db.callbacks, duration, process)
        await deleting
    finally:
        process.terminate()
        process.wait()
    figures["callbacks alone|per s"] = alone.requests_per_second
    figures["callbacks alone|p99 ms"] = alone.p99_ms
    figures["callbacks while deleting|per s"] = during.requests_per_second
    figures["callbacks while deleting|p99 ms"] = during.p99_ms
    return figures


async def _forget(url: str, figures: Figures) -> None:
    engine = create_engine(url)
    sessionmaker = create_sessionmaker(engine)
    async with engine.connect() as db:
        oldest = await db.scalar(select(func.min(Event.created_at)))
        now = await db.scalar(select(func.now()))
    # The oldest tenth of the history, or nothing on an empty database.
    days = (now - oldest).total_seconds() * 0.9 / 86400 if oldest else 1.0
    settings = bench_settings(url)
    store = RecordingStore.from_settings(settings.recordings)
    runs: list[tuple[str, Callable[[], Awaitable[int]]]] = [
        ("events", lambda: forget_old_events(sessionmaker, days=days)),
        ("unmatched receipts", lambda: forget_unmatched_receipts(sessionmaker, days=days)),
        ("recordings", lambda: forget_old_recordings(sessionmaker, store, days=days)),
    ]
    try:
        for name, run in runs:
            started = time.perf_counter()
            deleted = await run()
            elapsed = time.perf_counter() - started
            figures[f"{name}|deleted"] = deleted
            figures[f"{name}|per s"] = deleted / elapsed
    finally:
        await engine.dispose()


# ---- pg_stat_statements and sizes -----------------------------------------------------------


async def statement_stats(connection: AsyncConnection) -> bool:
    """Whether the server keeps pg_stat_statements (it must be preloaded)."""
    preloaded = await connection.scalar(text("SHOW shared_preload_libraries"))
    return "pg_stat_statements" in (preloaded or "")


# This database's statements only: the others' are measured meanwhile.
RESET = text(
    "SELECT pg_stat_statements_reset(0::oid, "
    "(SELECT oid FROM pg_database WHERE datname = current_database()), 0::bigint)"
)


# The indexes on random keys: Exotel's SIDs, the numbers, the idempotency keys. Each call
# written or updated, and each callback looked up, lands on any page of them. A server that
# has been taking calls for months holds them in shared_buffers where they fit; a database
# just filled (and vacuumed, which reads every table through) or a server just restarted
# does not, and its first hour reads them from disk a page at a time.
RANDOM_KEYED = (
    "uq_call_sid",
    "uq_dial_sid",
    "ix_call_from_number_created_at",
    "uq_call_idempotency_key",
    "ix_dial_number_sent_at",
)
WARM = text(
    "SELECT sum(pg_prewarm(CAST(name AS regclass))) FROM unnest(CAST(:names AS text[])) name"
)


async def warmed(db: Database) -> str:
    """Read the database's indexes on random keys into shared_buffers (pg_prewarm); says
    how much, and into how much."""
    engine = create_engine(db.url, isolation_level="AUTOCOMMIT")
    async with engine.connect() as connection:
        await connection.execute(text("CREATE EXTENSION IF NOT EXISTS pg_prewarm"))
        blocks = await connection.scalar(WARM, {"names": list(RANDOM_KEYED)})
        shared = await connection.scalar(text("SHOW shared_buffers"))
    await engine.dispose()
    return (
        f"{db.label}: {blocks * 8 / 1024:,.0f} MB of indexes on random keys read into "
        f"shared_buffers ({shared}) first: {', '.join(RANDOM_KEYED)}"
    )


async def reset_statements(url: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    async with engine.connect() as db:
        if await statement_stats(db):
            await db.execute(RESET)
    await engine.dispose()


# Every column of each row, as JSON: the read time's column is `blk_read_time` before
# PostgreSQL 17, `shared_blk_read_time` since.
KEPT = text(
    "SELECT to_jsonb(s) FROM pg_stat_statements s "
    "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND query NOT ILIKE '%pg_stat_statements%'"
)


@dataclass(frozen=True)
class Statement:
    calls: int
    mean_ms: float
    reads: float  # blocks read from outside shared_buffers, a call
    read_ms: float  # the time those took, a call (0 without track_io_timing)
    wal_kb: float  # WAL written, a call
    full_pages: float  # of which whole pages (each page's first change after a checkpoint)


async def kept_statements(url: str) -> dict[str, Statement] | None:
    """pg_stat_statements' figures of this database since the reset, by the statement's text
    (the same in every database, where its id is not); None where it is not loaded."""
    engine = create_engine(url)
    async with engine.connect() as db:
        kept = await statement_stats(db)
        rows = (await db.scalars(KEPT)).all() if kept else []
    await engine.dispose()
    if not kept:
        return None
    return {
        row["query"]: Statement(
            calls=row["calls"],
            mean_ms=row["mean_exec_time"],
            reads=row["shared_blks_read"] / max(row["calls"], 1),
            read_ms=row.get("shared_blk_read_time", row.get("blk_read_time", 0.0))
            / max(row["calls"], 1),
            wal_kb=float(row["wal_bytes"]) / 1024 / max(row["calls"], 1),
            full_pages=row["wal_fpi"] / max(row["calls"], 1),
        )
        for row in rows
    }


async def statements(
    label: str, url: str, baseline: dict[str, Statement] | None, *, most: int = 12
) -> str:
    """The database's slowest statements by mean time since the reset, each beside its mean
    on the baseline, and what it read from outside shared_buffers (blocks, and their time)."""
    kept = await kept_statements(url)
    if kept is None:
        return f"slowest statements on {label}: none kept (pg_stat_statements is not loaded)"
    baseline = baseline or {}
    lines = [
        f"slowest statements on {label} (by mean time): calls, mean ms, mean ms on the "
        "baseline, blocks read and their ms a call, WAL kB and whole pages a call, query"
    ]
    for query, figures in sorted(kept.items(), key=lambda item: -item[1].mean_ms)[:most]:
        base = baseline.get(query)
        lines.append(
            f"  {figures.calls:>7,} {figures.mean_ms:>9.2f} "
            + (f"{base.mean_ms:>9.2f}" if base else f"{'-':>9}")
            + f" {figures.reads:>8.1f} {figures.read_ms:>8.2f}"
            + f" {figures.wal_kb:>8.1f} {figures.full_pages:>6.1f}  {_shortened(query)}"
        )
    return "\n".join(lines)


# Blocks read from outside shared_buffers since the server's statistics began, by relation:
# each table, its TOAST (with its index) and each index. Read before and after the paths, not
# reset: a reset would clear the counts autovacuum goes by too.
READ = text(
    "SELECT relname, heap_blks_read FROM pg_statio_user_tables "
    "UNION ALL SELECT relname || ' (toast)', coalesce(toast_blks_read, 0) "
    "  + coalesce(tidx_blks_read, 0) FROM pg_statio_user_tables "
    "UNION ALL SELECT indexrelname, idx_blks_read FROM pg_statio_user_indexes"
)


async def blocks_read(url: str) -> dict[str, int]:
    engine = create_engine(url)
    async with engine.connect() as db:
        read = {relation: int(blocks) for relation, blocks in (await db.execute(READ)).all()}
    await engine.dispose()
    return read


async def read_since(db: Database) -> dict[str, int]:
    """Blocks read by relation on `db` since `read_before`."""
    now = await blocks_read(db.url)
    return {name: blocks - db.read_before.get(name, 0) for name, blocks in now.items()}


def relations_read(
    label: str, read: dict[str, int], base: dict[str, int], *, most: int = 10
) -> str:
    """The relations the paths read most from outside shared_buffers (blocks), beside the
    baseline's: which table or index a history makes the paths read."""
    lines = [f"blocks read on {label} while the paths ran, by relation (on the baseline)"]
    for name, blocks in sorted(read.items(), key=lambda item: -item[1])[:most]:
        lines.append(f"  {blocks:>10,} {base.get(name, 0):>10,}  {name}")
    return "\n".join(lines)


def _shortened(query: str, width: int = 150) -> str:
    flat = " ".join(query.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


async def sizes(label: str, url: str) -> str:
    engine = create_engine(url)
    async with engine.connect() as db:
        calls = await db.scalar(select(func.count()).select_from(Call)) or 0
        tables = (
            await db.execute(
                text(
                    "SELECT relname, pg_table_size(oid), pg_indexes_size(oid) FROM pg_class "
                    "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace "
                    "ORDER BY pg_total_relation_size(oid) DESC"
                )
            )
        ).all()
    await engine.dispose()
    per_million = 1e6 / calls / 2**20 if calls else math.nan  # MiB per million calls
    total_table = sum(t for _, t, _ in tables)
    total_index = sum(i for _, _, i in tables)
    lines = [
        f"size of {label}: {total_table / 2**20:,.0f} MiB of tables, {total_index / 2**20:,.0f} "
        f"MiB of indexes; per million calls {total_table * per_million:,.0f} MiB and "
        f"{total_index * per_million:,.0f} MiB"
    ]
    lines += [
        f"  {name:<20} tables {t * per_million:>8,.0f} MiB, indexes {i * per_million:>8,.0f} MiB"
        " per million calls"
        for name, t, i in tables
        if t + i > 2**20
    ]
    return "\n".join(lines)


# ---- the table ------------------------------------------------------------------------------


def table(labels: list[str], rows: list[Row]) -> str:
    head = f"{'path':<44} {'figure':<10}" + "".join(f" {label:>12}" for label in labels)
    head += "".join(f" {'x ' + label:>10}" for label in labels[1:])
    lines = [head]
    for row in rows:
        empty = row.values[0]
        ratios = [value / empty if empty else math.nan for value in row.values[1:]]
        lines.append(
            f"{row.path:<44} {row.figure:<10}"
            + "".join(f" {value:>12,.1f}" for value in row.values)
            + "".join(f" {ratio:>10.2f}" for ratio in ratios)
        )
    return "\n".join(lines)


async def run(
    empty: str | None,
    filled: list[str],
    calls: list[int],
    duration: int,
    repeats: int,
    warm: bool,
    counts: Counts,
    only: tuple[str, ...],
) -> None:
    if empty is None:
        empty = await fresh_database(statement_stats=True)
        await fill(empty, calls=DAY_ONE)
    for n in calls:  # filled here, each in a database of its own, left for the next run
        url = await fresh_database(statement_stats=True, name=f"exocall_bench_{n}")
        made = await fill(url, calls=n)
        print(f"filled {n:,} calls in {made.seconds:.0f} s")
        filled = [*filled, url]
    databases = [("empty", empty)]
    for url in filled:
        databases.append((f"{await counted(url):,} calls", url))
    rows, notes = await measure(
        databases, duration=duration, repeats=repeats, counts=counts, warm=warm, only=only
    )
    print(table([label for label, _ in databases], rows))
    for note in notes:
        print(note)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--empty", help="an empty, migrated database (default: a fresh one)")
    parser.add_argument("--filled", action="append", default=[], help="a filled database's URL")
    parser.add_argument(
        "--calls",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[],
        help="fill databases with this many calls first (bench.history), comma-separated",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds of each wrk load")
    parser.add_argument(
        "--requests",
        type=int,
        default=Counts.requests,
        help="requests to each GET path a run, and the archive's claims",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=REPEATS,
        help="runs of each path on every database in turn",
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="read each database's indexes on random keys into shared_buffers first, as a "
        "server taking calls for months holds them (pg_prewarm)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="measure only the paths whose names hold TEXT (`retention`: the retention runs); "
        "repeatable",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, python "
        f"{platform.python_version()}; PostgreSQL on the same host; exocall serve, 1 worker, "
        f"one per database; wrk -c{CONNECTIONS} -d{args.duration}s; {args.requests} requests "
        f"to each GET path; each path {args.repeats} times on every database in turn"
    )
    if not args.filled and not args.calls:
        parser.error("name a --filled database, or --calls to fill")
    counts = Counts(requests=args.requests)
    only = tuple(args.only)
    await run(
        args.empty, args.filled, args.calls, args.duration, args.repeats, args.warm, counts, only
    )


if __name__ == "__main__":
    asyncio.run(main())
