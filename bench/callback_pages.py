"""Where status callbacks write on a filled database, and what they read from disk for it.

Places 2,000 calls in progress in the database `--database-url` names (one that `bench.history`
filled, say), runs `exocall serve` on it (beside the Exotel simulator, which takes the history's
queued calls first; no webhooks sent), and sends the calls' whole callbacks, which end them,
under the ingestion benchmark's wrk load; with `--passthru`, their flows' Passthru requests
instead, as `bench.passthru` sends them (each one applied: a receipt and a `call.input` event);
with `--beside N`, both: the Passthru requests on N connections while the callbacks run, as a
live account's calls send them. Prints `call`'s storage settings (its fillfactor), the rate and
p99, how many calls left the page they were written on, the pages of `call`, `call_event` (the
receipts) and `event` the calls and what they were sent ended on, the blocks each relation read
from outside shared_buffers meanwhile (`pg_statio`) and the WAL the server wrote: a page's first
change after a checkpoint writes the whole page to it. The calls stay.

    .venv/bin/python -m bench.callback_pages --database-url URL [--duration 10]
        [--passthru | --beside 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from app.db.session import create_engine
from bench.callback_ingest import (
    CONNECTIONS,
    load,
    placed_calls,
    serve,
    server_env,
    whole_callback,
    wrk_script,
)
from bench.hot_paths import Counts, Database, blocks_read, helpers, server_values, settled
from bench.passthru import APP_ID, in_flows, passthru_script, wrk
from tests.support.processes import free_ports

PAGE = "(ctid::text::point)[0]::int"


@dataclass(frozen=True)
class Written:
    """Where the calls are, and what was stored for them: rows, and the pages they are on."""

    pages: dict[uuid.UUID, int]  # each call's
    receipts: tuple[int, int]
    events: tuple[int, int]


async def written(url: str, ids: list[uuid.UUID]) -> Written:
    engine = create_engine(url)
    async with engine.connect() as db:
        given = {"ids": [str(call_id) for call_id in ids]}
        calls = await db.execute(
            text(f"SELECT id, {PAGE} FROM call WHERE id = ANY(CAST(:ids AS uuid[]))"), given
        )
        stored = {}
        for table in ("call_event", "event"):
            rows = await db.execute(
                text(
                    f"SELECT count(*), count(DISTINCT {PAGE}) FROM {table}"
                    " WHERE call_id = ANY(CAST(:ids AS uuid[]))"
                ),
                given,
            )
            stored[table] = tuple(rows.one())
    await engine.dispose()
    return Written(dict(calls.all()), stored["call_event"], stored["event"])


async def wal(url: str) -> tuple[int, int]:
    """The server's WAL so far: full-page images, and bytes."""
    engine = create_engine(url)
    async with engine.connect() as db:
        images, written = (
            await db.execute(text("SELECT wal_fpi, wal_bytes FROM pg_stat_wal"))
        ).one()
    await engine.dispose()
    return int(images), int(written)


async def storage(url: str) -> str:
    engine = create_engine(url)
    async with engine.connect() as db:
        options = await db.scalar(text("SELECT reloptions FROM pg_class WHERE relname = 'call'"))
    await engine.dispose()
    return ", ".join(options or ["defaults"])


async def run(url: str, duration: int, *, passthru: bool, beside: int) -> None:
    print(f"call's storage: {await storage(url)}")
    with tempfile.TemporaryDirectory() as workdir, helpers(Path(workdir)) as (simulator, _):
        work = Path(workdir)
        calls = await placed_calls(url)
        ids = [call_id for call_id, _ in calls]
        before = await written(url, ids)
        callbacks, flows = work / "callbacks.lua", work / "passthru.lua"
        values = server_values(url, simulator)
        if passthru or beside:
            await in_flows(url, ids)
            passthru_script(calls, flows)
            values["PASSTHRU_REDIRECT_DIGITS"] = json.dumps({APP_ID: ["2"]})
        wrk_script(calls, callbacks, whole_callback)
        (port,) = free_ports(1)
        argv = [str(Path(sys.executable).parent / "exocall"), "serve", "--no-access-log"]
        env = server_env(
            url,
            work,
            **values,
            PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
            WEBHOOK_DELIVERY_IN_SERVE="false",
        )
        server = serve([*argv, "--port", str(port)], env, port, work / "exocall.log")
        try:
            await settled(Database("filled", url, work, Counts()))
            read_before, wal_before = await blocks_read(url), await wal(url)
            among: dict[str, float] | None = None
            if passthru:
                figures = await asyncio.to_thread(wrk, port, flows, CONNECTIONS, duration)
                rate, p99, other = figures["rate"], figures["p99_ms"], int(figures["errors"])
            else:
                ingest = asyncio.to_thread(load, port, callbacks, duration, server)
                if beside:
                    flowing = asyncio.to_thread(wrk, port, flows, beside, duration)
                    measured, among = await asyncio.gather(ingest, flowing)
                else:
                    measured = await ingest
                rate, p99, other = measured.requests_per_second, measured.p99_ms, measured.other
        finally:
            server.terminate()
            server.wait()
    after = await blocks_read(url)  # once the server's processes have sent their last counts
    wal_after = await wal(url)
    images, written_bytes = wal_after[0] - wal_before[0], wal_after[1] - wal_before[1]
    now = await written(url, ids)
    moved = sum(now.pages[call_id] != page for call_id, page in before.pages.items())
    sent, refused = ("Passthru requests", "2xx/3xx") if passthru else ("callbacks", "200")
    print(
        f"{rate:,.1f} {sent} a second, p99 {p99:.1f} ms, {other:,} answers other than {refused}; "
        f"{moved:,} of the {len(ids):,} calls left their page: on {len(set(now.pages.values())):,} "
        f"pages of call (written on {len(set(before.pages.values())):,}), their "
        f"{now.receipts[0]:,} receipts on {now.receipts[1]:,} pages of call_event, their "
        f"{now.events[0]:,} events on {now.events[1]:,} of event"
    )
    if among:
        print(
            f"meanwhile, on {beside} connections: {among['rate']:,.1f} Passthru requests a second,"
            f" p99 {among['p99_ms']:.1f} ms, {among['errors']:,.0f} answers other than 2xx/3xx"
        )
    read = {name: blocks - read_before.get(name, 0) for name, blocks in after.items()}
    print(f"blocks read from outside shared_buffers: {sum(read.values()):,}, most by")
    for name, blocks in sorted(read.items(), key=lambda item: -item[1])[:10]:
        print(f"  {blocks:>8,}  {name}")
    print(f"WAL written: {written_bytes / 1e6:,.1f} MB, {images:,} full-page images")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="a filled, migrated database")
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk load")
    requests = parser.add_mutually_exclusive_group()
    requests.add_argument(
        "--passthru", action="store_true", help="the calls' Passthru requests, not callbacks"
    )
    requests.add_argument(
        "--beside",
        type=int,
        default=0,
        metavar="N",
        help="also the calls' Passthru requests, on N connections beside the callbacks",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    await run(args.database_url, args.duration, passthru=args.passthru, beside=args.beside)


if __name__ == "__main__":
    asyncio.run(main())
