"""Webhooks: what subscribing costs the callback path, and whether delivery keeps up.

In one run, on PostgreSQL, with the ingestion benchmark's load (`bench.callback_ingest`: wrk
replaying Exotel's multipart callbacks, each the first for its call, so each one is an applied
change and writes an event):
1. `exocall serve` with no endpoint: durable callbacks per second, p50/p99;
2. the same, with one endpoint subscribed (a local subscriber that answers 200 at once), and the
   deliveries made meanwhile; then how long the backlog left at the end takes to drain;
3. delivery alone: a backlog of events built with the endpoint disabled, then enabled, and the
   time until every one is delivered.
The queue's tables are analyzed every 5 seconds, as autovacuum would (it is off on this machine).
Who delivers is `--deliverer`: `exocall serve`'s own deliverer (the default), `exocall deliver`
beside an `exocall serve` without one, or nobody (what the outbox alone costs; steps 1-2 only).

    .venv/bin/python -m bench.webhooks
    .venv/bin/python -m bench.webhooks --duration 10 --deliverer separate
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import shutil
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import func, select, text

from app.calls.callback_auth import status_callback_url
from app.db.models import Delivery, DeliveryState, Event
from app.db.session import create_engine, create_sessionmaker
from bench import fresh_database
from bench.callback_ingest import (
    CONNECTIONS,
    SECRET,
    Load,
    cores_used,
    cpu_seconds,
    four_fields,
    load,
    placed_calls,
    serve,
    server_env,
    wrk_script,
)
from tests.support.processes import free_ports

API_KEY = "bench-fake-internal-key"
DELIVERERS = {
    "serve": "its own deliverer",
    "separate": "exocall deliver beside it",
    "none": "no deliverer anywhere",
}
# Answers 200 at once and counts what it got: the subscriber is not what is measured.
SUBSCRIBER_APP = textwrap.dedent(
    """
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    received = 0

    async def hook(request):
        global received
        await request.body()
        received += 1
        return Response("ok")

    async def count(request):
        return JSONResponse({"received": received})

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"]), Route("/count", count)])
    """
)


async def owed(url: str) -> tuple[int, int, int]:
    """Events, deliveries delivered, deliveries still owed."""
    engine = create_engine(url)
    async with create_sessionmaker(engine)() as session:
        events = await session.scalar(select(func.count()).select_from(Event)) or 0
        delivered = await session.scalar(
            select(func.count()).where(Delivery.state == DeliveryState.DELIVERED)
        )
        pending = await session.scalar(
            select(func.count()).where(
                Delivery.state.in_((DeliveryState.PENDING, DeliveryState.SENDING))
            )
        )
    await engine.dispose()
    return events, delivered or 0, pending or 0


async def autovacuum(url: str, stop: asyncio.Event, every: float = 5) -> None:
    """What autovacuum does on its own, every `every` seconds until `stop`: this machine's
    PostgreSQL runs with autovacuum off. The migrations have it analyze the delivery queue
    after 1% of it changes; a claim planned on the statistics of an empty queue is quadratic in
    its backlog (it scans the queue once per row), until the next ANALYZE."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    while not stop.is_set():
        async with engine.connect() as db:
            await db.execute(text("ANALYZE delivery, event, webhook_endpoint"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
    await engine.dispose()


async def drained_after(url: str, *, since: float, limit: float = 600) -> float:
    """Seconds from `since` until nothing is owed."""
    while time.monotonic() - since < limit:
        if (await owed(url))[2] == 0:
            return time.monotonic() - since
        await asyncio.sleep(0.2)
    return float("nan")


def describe(name: str, run: Load) -> str:
    return (
        f"{name}: {run.requests_per_second:,.0f} durable callbacks/s, p50 {run.p50_ms:.1f} ms, "
        f"p99 {run.p99_ms:.1f} ms, non-200 {run.other}, exocall CPU {run.server_cpu:.2f} cores, "
        f"PostgreSQL {run.postgres_cpu:.2f}"
    )


async def run(duration: int, backlog: int, *, deliverer: str) -> None:
    url = await fresh_database()
    rate_guess = 3000  # callbacks a second at most: enough calls that none is sent twice
    per_run = rate_guess * duration
    calls = await placed_calls(url, count=2 * per_run + backlog)
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        (work / "subscriber.py").write_text(SUBSCRIBER_APP)
        plain, subscribed = work / "plain.lua", work / "subscribed.lua"
        wrk_script(calls[:per_run], plain)
        wrk_script(calls[per_run : 2 * per_run], subscribed)
        env = server_env(url, work, API_KEYS=API_KEY)
        sub_port, port = free_ports(2)
        subscriber = serve(
            [
                *(str(bin_dir / "uvicorn"), "subscriber:app", "--log-level", "warning"),
                *("--no-access-log", "--port", str(sub_port)),
            ],
            env | {"PYTHONPATH": str(work)},
            sub_port,
            work / "subscriber.log",
            ready_path="/count",
        )
        processes = [subscriber]
        if deliverer != "serve":  # the API without a deliverer
            env["WEBHOOK_DELIVERY_IN_SERVE"] = "false"
        if deliverer == "separate":  # and `exocall deliver` beside it
            (deliver_port,) = free_ports(1)
            processes.append(
                serve(
                    [str(bin_dir / "exocall"), "deliver", "--port", str(deliver_port)],
                    env,
                    deliver_port,
                    work / "deliverer.log",
                    ready_path="/healthz",
                )
            )
        server = serve(
            [str(bin_dir / "exocall"), "serve", "--no-access-log", "--port", str(port)],
            env,
            port,
            work / "exocall.log",
        )
        processes.append(server)
        api = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=30,
        )
        stop_analyzing = asyncio.Event()
        analyzer = asyncio.create_task(autovacuum(url, stop_analyzing))
        try:
            none = await asyncio.to_thread(load, port, plain, duration, server)
            created = await api.post(
                "/webhook-endpoints", json={"url": f"http://127.0.0.1:{sub_port}/hook"}
            )
            endpoint = created.json()["id"]
            events_before, before, _ = await owed(url)
            # The subscriber's CPU and, when it runs apart, the deliverer's.
            watched = [
                [subscriber.pid],
                [p.pid for p in processes if p not in (server, subscriber)],
            ]
            cpu_before = [cpu_seconds(pids) for pids in watched]
            started = time.monotonic()
            one = await asyncio.to_thread(load, port, subscribed, duration, server)
            ended = time.monotonic()
            subscriber_cpu, deliverer_cpu = (
                cores_used(before, cpu_seconds(pids), ended - started)
                for pids, before in zip(watched, cpu_before, strict=True)
            )
            events_after, during, left = await owed(url)
            if deliverer == "none":  # nothing delivers: nothing drains
                _report(none, one, subscriber_cpu, deliverer_cpu, deliverer)
                return
            drain = await drained_after(url, since=ended)

            # Delivery alone: a backlog built while the endpoint is disabled (the callbacks are
            # sent by this process, one request each, outside any measurement).
            await api.patch(f"/webhook-endpoints/{endpoint}", json={"enabled": False})
            await send_callbacks(f"http://127.0.0.1:{port}", calls[2 * per_run :])
            await api.post(
                f"/webhook-endpoints/{endpoint}/recover", json={"since": "2000-01-01T00:00:00Z"}
            )
            _, _, waiting = await owed(url)
            opened = time.monotonic()
            await api.patch(f"/webhook-endpoints/{endpoint}", json={"enabled": True})
            alone = await drained_after(url, since=opened)
        finally:
            stop_analyzing.set()
            await analyzer
            await api.aclose()
            for process in processes:
                process.terminate()
                process.wait()
    made = during - before
    ingested = events_after - events_before  # a callback repeated by wrk is no event
    _report(none, one, subscriber_cpu, deliverer_cpu, deliverer)
    per_delivery = (ended - started) / made * 1e6 if made else math.nan  # µs per core busy
    print(
        "CPU per event delivered during the load: "
        + (
            f"exocall deliver {deliverer_cpu * per_delivery:,.0f} µs, "
            if deliverer == "separate"
            else ""
        )
        + f"the subscriber {subscriber_cpu * per_delivery:,.0f} µs, PostgreSQL's extra "
        f"{(one.postgres_cpu - none.postgres_cpu) * per_delivery:,.0f} µs"
    )
    print(
        f"delivery during the load: {made:,} delivered of {ingested:,} events in "
        f"{ended - started:.1f} s ({made / (ended - started):,.0f}/s against "
        f"{ingested / (ended - started):,.0f} ingested/s); {left:,} owed at the end, "
        f"drained {drain:.1f} s later"
    )
    print(
        f"delivery alone: a backlog of {waiting:,} delivered in {alone:.1f} s "
        f"({waiting / alone:,.0f}/s)"
    )


def _report(
    none: Load, one: Load, subscriber_cpu: float, deliverer_cpu: float, deliverer: str
) -> None:
    print(describe("no endpoint          ", none))
    print(describe("one endpoint         ", one))
    apart = f"exocall deliver {deliverer_cpu:.2f}, " if deliverer == "separate" else ""
    print(f"  meanwhile, CPU in cores: {apart}the subscriber {subscriber_cpu:.2f}")
    print(
        "subscribing costs the callback path "
        f"{1 - one.requests_per_second / none.requests_per_second:.1%} of its throughput; "
        f"p99 {one.p99_ms - none.p99_ms:+.1f} ms"
    )
    alone_cost, subscribed_cost = (run.server_cpu / run.requests_per_second for run in (none, one))
    print(
        f"exocall serve's CPU per durable callback: {alone_cost * 1e6:,.0f} µs with no endpoint, "
        f"{subscribed_cost * 1e6:,.0f} µs with one ({subscribed_cost / alone_cost - 1:+.1%})"
    )


async def send_callbacks(base_url: str, calls: list[tuple[uuid.UUID, str]]) -> None:
    """Each call's completed callback, one request each, CONNECTIONS at a time."""
    limit = asyncio.Semaphore(CONNECTIONS)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:

        async def send(call_id: uuid.UUID, sid: str) -> None:
            async with limit:
                path = status_callback_url("", SECRET.encode(), call_id)
                response = await http.post(path, data=four_fields(sid))
                response.raise_for_status()

        await asyncio.gather(*(send(call_id, sid) for call_id, sid in calls))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds of load per run")
    parser.add_argument("--backlog", type=int, default=5000, help="events for delivery alone")
    parser.add_argument(
        "--deliverer",
        choices=list(DELIVERERS),
        default="serve",
        help="who delivers: serve's own deliverer, `exocall deliver` beside it, or nobody (the "
        "outbox's cost alone)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, python "
        f"{platform.python_version()}; PostgreSQL on the same host; wrk -t2 -c{CONNECTIONS} "
        f"-d{args.duration}s; exocall serve with 1 worker and {DELIVERERS[args.deliverer]}; "
        "the subscriber on the same host"
    )
    await run(args.duration, args.backlog, deliverer=args.deliverer)


if __name__ == "__main__":
    asyncio.run(main())
