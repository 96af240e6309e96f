"""bench.hot_paths's code, on two tiny databases, with a few requests of each path (the benchmark
itself is run by hand: it times things; here nothing is timed)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.db import migrate
from app.db.session import create_engine
from bench.callback_ingest import placed_calls
from bench.hot_paths import Counts, measure, summary, table

pytestmark = pytest.mark.anyio


@pytest.fixture
async def databases(database_url: str) -> AsyncIterator[list[tuple[str, str]]]:
    """An empty database and one with a few calls in progress, migrated, beside the tests'."""
    server = make_url(database_url)
    names = ["hot_paths_empty", "hot_paths_tiny"]
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    urls = []
    for name in names:
        async with admin.connect() as db:
            await db.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await db.execute(text(f'CREATE DATABASE "{name}"'))
        url = server.set(database=name).render_as_string(hide_password=False)
        await asyncio.to_thread(migrate.upgrade, url)
        urls.append(url)
    await placed_calls(urls[1], count=5)
    yield [("empty", urls[0]), ("5 calls", urls[1])]
    for name in names:
        async with admin.connect() as db:
            await db.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


async def test_every_path_gives_its_figures_on_each_database(
    databases: list[tuple[str, str]],
) -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("wrk is not installed (.ci/run installs it)")
        pytest.skip("wrk is not installed; .ci/run installs it and runs this test")
    tiny = Counts(requests=2, posts=2, batches=1, batch=2, placed=5, delivered=2)

    rows, notes = await measure(databases, duration=1, repeats=1, counts=tiny, warm=True)

    paths = {row.path for row in rows}
    assert {"POST /calls (2, one at a time)", "GET /calls?cursor=deep", "GET /metrics"} <= paths
    assert any(path.startswith("retention: events") for path in paths)
    assert all(len(row.values) == 2 for row in rows)
    assert "GET /calls/{id}/events" in table(["empty", "5 calls"], rows)
    # The tests' server keeps no statement statistics; the sizes are read all the same.
    assert any("pg_stat_statements is not loaded" in note for note in notes)
    assert any(note.startswith("size of 5 calls") for note in notes)
    # Each database's indexes on random keys were read into shared_buffers first.
    warmed = [note for note in notes if "indexes on random keys read into shared_buffers" in note]
    assert [note.split(":")[0] for note in warmed] == ["empty", "5 calls"], warmed
    # Each relation the paths read most, with its blocks here and on the baseline.
    (read,) = [note for note in notes if note.startswith("blocks read on 5 calls")]
    _, *relations = read.splitlines()
    assert len(relations) == 10, read
    assert all(re.fullmatch(r" +[\d,]+ +[\d,]+  \w+( \(toast\))?", one) for one in relations), read


def test_latencies_are_pooled_over_runs_and_other_figures_take_the_median_run() -> None:
    fast, slow = [0.001 * n for n in range(1, 101)], [0.5] * 100

    pooled = summary([fast, slow, fast])
    wrk_runs = summary([{"per s": 900.0}, {"per s": 1000.0}, {"per s": 100.0}])

    # Of the 300 requests, 200 were fast (1 to 100 ms, twice): the p50 is between their 150th
    # and 151st (75 and 76 ms), the p99 a slow one.
    assert pooled == pytest.approx({"p50 ms": 75.5, "p99 ms": 500.0})
    assert wrk_runs == {"per s": 900.0}
