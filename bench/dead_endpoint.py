"""A webhook endpoint that is down: what retrying it costs the deliverer.

A history of `--calls` calls (`bench.history`; 60,000 by default, the hot-paths bench's day one)
owes deliveries to its endpoints, whose ports nothing listens on. Every owed delivery is made
due, each endpoint is marked failing for two minutes already, and `exocall deliver` runs for
`--seconds` against the database. Printed: the attempts made to them, and the
deliverer's CPU seconds meanwhile (PostgreSQL's are not counted).

    .venv/bin/python -m bench.dead_endpoint [--calls 60000] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select, text

from app.db.models import Delivery, DeliveryAttempt, DeliveryState
from app.db.session import create_engine
from app.db.statements import written_in
from bench import fresh_database
from bench.callback_ingest import cpu_seconds, serve, server_env
from bench.history import fill
from tests.support.processes import free_ports


async def owed_and_tried(url: str) -> tuple[int, int, int]:
    """Deliveries owed, the endpoints they are owed to, and attempts made so far."""
    engine = create_engine(url)
    try:
        async with engine.connect() as db:
            pending = written_in(Delivery.state, DeliveryState.PENDING)
            owed, endpoints = (
                await db.execute(
                    select(func.count(), func.count(Delivery.endpoint_id.distinct())).where(pending)
                )
            ).one()
            tried = await db.scalar(select(func.count()).select_from(DeliveryAttempt))
    finally:
        await engine.dispose()
    return owed, endpoints, tried or 0


async def run(calls: int, seconds: int) -> None:
    url = await fresh_database()
    await fill(url, calls=calls)
    engine = create_engine(url)
    async with engine.begin() as db:
        await db.execute(
            text("UPDATE delivery SET next_attempt_at = now() WHERE state = 'pending'")
        )
        await db.execute(text("UPDATE webhook_endpoint SET failing_since = now() - interval '2m'"))
    await engine.dispose()
    owed, endpoints, tried_before = await owed_and_tried(url)
    (port,) = free_ports(1)
    with tempfile.TemporaryDirectory() as work:
        argv = [str(Path(sys.executable).parent / "exocall"), "deliver", "--port", str(port)]
        env = server_env(url, Path(work))
        process = serve(argv, env, port, Path(work) / "deliver.log", ready_path="/healthz")
        try:
            began, cpu_before = time.monotonic(), cpu_seconds([process.pid])
            await asyncio.sleep(seconds)  # the measurement's span, not a wait for something
            elapsed, cpu_after = time.monotonic() - began, cpu_seconds([process.pid])
        finally:
            process.terminate()
            process.wait()
    *_, tried_after = await owed_and_tried(url)
    tried = tried_after - tried_before
    cpu = cpu_after[process.pid] - cpu_before[process.pid]
    print(
        f"{owed:,} deliveries owed to {endpoints} endpoint(s) that are down; exocall deliver for "
        f"{elapsed:.0f} s: {tried:,} attempts ({tried / elapsed * 60:,.1f} a minute), "
        f"{cpu:.1f} CPU seconds ({cpu / elapsed:.0%} of a core)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=60_000, help="the history's calls")
    parser.add_argument("--seconds", type=int, default=60, help="how long the deliverer runs")
    args = parser.parse_args()
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, python "
        f"{platform.python_version()}; PostgreSQL on the same host"
    )
    asyncio.run(run(args.calls, args.seconds))


if __name__ == "__main__":
    main()
