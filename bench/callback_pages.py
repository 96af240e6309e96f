"""Where status callbacks write on a filled database, and what they read from disk for it.

Places 2,000 calls in progress in the database `--database-url` names (one that
`bench.history` filled, say), runs `exocall serve` on it, and sends their whole callbacks under
the ingestion benchmark's wrk load. Prints the rate and p99, the blocks each relation read
from outside shared_buffers meanwhile (`pg_statio`), and how many pages of `call` the calls'
rows and of `event` their events ended on: a call's new versions on its own page, or one page
each wherever the free space map pointed. The calls stay in the database.

    .venv/bin/python -m bench.callback_pages --database-url URL [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from sqlalchemy import text

from app.db.session import create_engine
from bench.callback_ingest import load, placed_calls, serve, server_env, whole_callback, wrk_script
from bench.hot_paths import blocks_read, server_values
from tests.support.processes import free_ports

# The pages a set of calls' rows, and their events, are on.
PAGES = text(
    "SELECT (SELECT count(DISTINCT (ctid::text::point)[0]) FROM call"
    "        WHERE id = ANY(CAST(:ids AS uuid[]))),"
    "  (SELECT count(*) FROM event WHERE call_id = ANY(CAST(:ids AS uuid[]))),"
    "  (SELECT count(DISTINCT (ctid::text::point)[0]) FROM event"
    "        WHERE call_id = ANY(CAST(:ids AS uuid[])))"
)


async def run(url: str, duration: int) -> None:
    calls = await placed_calls(url)
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        script = work / "callbacks.lua"
        wrk_script(calls, script, whole_callback)
        (port,) = free_ports(1)
        argv = [str(Path(sys.executable).parent / "exocall"), "serve", "--no-access-log"]
        env = server_env(url, work, **server_values(url))
        server = serve([*argv, "--port", str(port)], env, port, work / "exocall.log")
        try:
            before = await blocks_read(url)
            measured = await asyncio.to_thread(load, port, script, duration, server)
            after = await blocks_read(url)
        finally:
            server.terminate()
            server.wait()
    engine = create_engine(url)
    async with engine.connect() as db:
        ids = [str(call_id) for call_id, _ in calls]
        call_pages, events, event_pages = (await db.execute(PAGES, {"ids": ids})).one()
    await engine.dispose()
    print(
        f"{measured.requests_per_second:,.1f} callbacks a second, p99 {measured.p99_ms:.1f} ms; "
        f"the {len(calls):,} calls on {call_pages:,} pages of call, their {events:,} events on "
        f"{event_pages:,} pages of event"
    )
    read = {name: blocks - before.get(name, 0) for name, blocks in after.items()}
    print(f"blocks read from outside shared_buffers: {sum(read.values()):,}, most by")
    for name, blocks in sorted(read.items(), key=lambda item: -item[1])[:10]:
        print(f"  {blocks:>8,}  {name}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="a filled, migrated database")
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk load")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    await run(args.database_url, args.duration)


if __name__ == "__main__":
    asyncio.run(main())
