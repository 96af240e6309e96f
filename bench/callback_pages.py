"""Where status callbacks write on a filled database, and what they read from disk for it.

Places 2,000 calls in progress in the database `--database-url` names (one that
`bench.history` filled, say), runs `exocall serve` on it (beside the Exotel simulator, which
takes the history's queued calls first; no webhooks sent), and sends the calls' whole
callbacks, which end them, under the ingestion benchmark's wrk load. Prints `call`'s storage
settings (its fillfactor), the rate and p99, how many calls left the page they were written
on, the pages of `call` and `event` the calls and their events ended on, and the blocks each
relation read from outside shared_buffers meanwhile (`pg_statio`). The calls stay.

    .venv/bin/python -m bench.callback_pages --database-url URL [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import text

from app.db.session import create_engine
from bench.callback_ingest import load, placed_calls, serve, server_env, whole_callback, wrk_script
from bench.hot_paths import Counts, Database, blocks_read, helpers, server_values, settled
from tests.support.processes import free_ports

PAGE = "(ctid::text::point)[0]::int"


async def pages(url: str, ids: list[uuid.UUID]) -> tuple[dict[uuid.UUID, int], int, int]:
    """Each call's page, and how many events the calls have on how many pages of `event`."""
    engine = create_engine(url)
    async with engine.connect() as db:
        given = {"ids": [str(call_id) for call_id in ids]}
        calls = await db.execute(
            text(f"SELECT id, {PAGE} FROM call WHERE id = ANY(CAST(:ids AS uuid[]))"), given
        )
        events, event_pages = (
            await db.execute(
                text(
                    f"SELECT count(*), count(DISTINCT {PAGE}) FROM event"
                    " WHERE call_id = ANY(CAST(:ids AS uuid[]))"
                ),
                given,
            )
        ).one()
    await engine.dispose()
    return dict(calls.all()), events, event_pages


async def storage(url: str) -> str:
    engine = create_engine(url)
    async with engine.connect() as db:
        options = await db.scalar(text("SELECT reloptions FROM pg_class WHERE relname = 'call'"))
    await engine.dispose()
    return ", ".join(options or ["defaults"])


async def run(url: str, duration: int) -> None:
    print(f"call's storage: {await storage(url)}")
    with tempfile.TemporaryDirectory() as workdir, helpers(Path(workdir)) as (simulator, _):
        work = Path(workdir)
        calls = await placed_calls(url)
        ids = [call_id for call_id, _ in calls]
        written, _, _ = await pages(url, ids)
        script = work / "callbacks.lua"
        wrk_script(calls, script, whole_callback)
        (port,) = free_ports(1)
        argv = [str(Path(sys.executable).parent / "exocall"), "serve", "--no-access-log"]
        env = server_env(
            url,
            work,
            **server_values(url, simulator),
            PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
            WEBHOOK_DELIVERY_IN_SERVE="false",
        )
        server = serve([*argv, "--port", str(port)], env, port, work / "exocall.log")
        try:
            await settled(Database("filled", url, work, Counts()))
            before = await blocks_read(url)
            measured = await asyncio.to_thread(load, port, script, duration, server)
        finally:
            server.terminate()
            server.wait()
    after = await blocks_read(url)  # once the server's processes have sent their last counts
    now, events, event_pages = await pages(url, ids)
    moved = sum(now[call_id] != page for call_id, page in written.items())
    print(
        f"{measured.requests_per_second:,.1f} callbacks a second, p99 {measured.p99_ms:.1f} ms, "
        f"{measured.other:,} answers other than 200; {moved:,} of the {len(ids):,} calls left "
        f"their page: on {len(set(now.values())):,} pages of call (written on "
        f"{len(set(written.values())):,}), their {events:,} events on {event_pages:,} of event"
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
