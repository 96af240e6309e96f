"""What a status callback costs, in CPU instructions (valgrind's callgrind counts them: the same
count run after run, whatever else the machine is doing, unlike seconds on a shared 2-core VM).

Each figure is measured by running a small driver twice under callgrind, with and without the
work, and dividing the difference by the amount of work:

- `parse`: reading Exotel's four-field multipart body with the lean parser (app/api/forms.py),
  against python-multipart through Starlette's `Request.form()`;
- `store`: storing duplicate callbacks (the steady state of the ingestion benchmark) through the
  one write path in transactions of 1 and of 8 callbacks, on PostgreSQL;
- `transaction`: one transaction of BEGIN, the store's locking SELECT of 8 calls and COMMIT,
  through SQLAlchemy and on asyncpg directly with the same statement compiled: what SQLAlchemy's
  execution costs;
- `entrance`: one status callback through the whole app as uvicorn hands it over (its
  middleware, routing, the handler and its answer), with the store a stub that answers at once:
  what the HTTP entrance costs, apart from the database.

    .venv/bin/python -m bench.callback_cost        # needs valgrind: apt-get install valgrind
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from app.calls.callback_auth import sign
from bench import fresh_database
from bench.callback_ingest import BOUNDARY, four_fields, multipart_body, placed_calls

FIELDS = four_fields("492205107c5fb48f4ac25d1f77759339")
BODY = multipart_body(FIELDS).encode()
CALLS = 200  # of the benchmark's placed calls, used here


# --- the drivers, run under callgrind ---------------------------------------------------


async def _form(body: bytes) -> dict[str, object]:
    from starlette.requests import Request

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    content_type = f"multipart/form-data; boundary={BOUNDARY}".encode()
    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", content_type)]}
    form = await Request(scope, receive).form()
    return dict(form)


async def drive_parse(parser: str, n: int) -> None:
    from app.api.forms import boundary_of, parse_text_fields

    boundary = boundary_of(f"multipart/form-data; boundary={BOUNDARY}")
    assert boundary is not None
    for _ in range(n):
        if parser == "lean":
            assert parse_text_fields(BODY, boundary) == FIELDS
        else:
            assert await _form(BODY) == FIELDS


async def drive_store(url: str, calls_file: str, size: int, n: int) -> None:
    from app.calls.ingest import store_callbacks
    from app.calls.received import ReceivedCallback
    from app.db.session import create_engine

    calls = _read_calls(calls_file)[:CALLS]
    engine = create_engine(url)

    def batch(k: int) -> list[ReceivedCallback]:
        chosen = [calls[(k * size + i) % len(calls)] for i in range(size)]
        return [
            ReceivedCallback(call_id, "POST", "multipart/form-data", four_fields(sid))
            for call_id, sid in chosen
        ]

    async with engine.connect() as connection:
        for k in range(CALLS // size + 1):  # every call completed: duplicates from here on
            await store_callbacks(connection, batch(k))
        for k in range(n):
            await store_callbacks(connection, batch(k))
    await engine.dispose()


async def drive_transaction(url: str, calls_file: str, how: str, n: int) -> None:
    from app.calls.store import _statements
    from app.db.session import create_engine

    calls = _read_calls(calls_file)[:8]
    ids, sids = [c[0] for c in calls], [c[1] for c in calls]
    engine = create_engine(url)
    lock = _statements().lock
    async with engine.connect() as connection:
        driver = (await connection.get_raw_connection()).driver_connection
        sql = lock.compile(dialect=engine.dialect).string
        for _ in range(20 + n):
            if how == "sqlalchemy":
                async with connection.begin():
                    assert len(list(await connection.execute(lock, {"ids": ids, "sids": sids})))
            else:
                async with driver.transaction():
                    assert len(await driver.fetch(sql, ids, sids))
    await engine.dispose()


async def drive_entrance(n: int) -> None:
    import types

    from app.calls.ingest import Stored
    from app.config import Settings
    from app.db.models import EventOutcome
    from app.main import create_app
    from app.metrics import Metrics

    class Writer:
        async def store(self, received: object) -> Stored:
            return Stored(EventOutcome.DUPLICATE)

    secret = "bench-fake-callback-secret"
    settings = Settings.load(
        env_file=None,
        DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1:9/unused",  # never connected
        EXOTEL_ACCOUNT_SID="bench-account",
        EXOTEL_API_KEY="bench-fake-key",
        EXOTEL_API_TOKEN="bench-fake-token",
        CALLBACK_SECRETS=secret,
    )
    app = create_app(settings)
    # What the lifespan would build, as far as the callback route uses it.
    app.state.runtime = types.SimpleNamespace(metrics=Metrics(), callbacks=Writer(), spool=None)
    call_id = uuid.uuid4()
    query = f"call_id={call_id}&token={sign(secret.encode(), call_id)}".encode()
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
        (b"content-length", str(len(BODY)).encode()),
    ]
    statuses = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    for _ in range(20 + n):
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/status-callback",
            "raw_path": b"/status-callback",
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        await app(scope, receive, send)  # type: ignore[arg-type]
    assert statuses == [200] * (20 + n), statuses[:3]


# --- measuring --------------------------------------------------------------------------


def instructions(argv: list[str]) -> int:
    """The instructions callgrind counts for running `argv` (a Python driver)."""
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(re.search(r"Collected : (\d+)", result.stderr)[1])  # type: ignore[index]


async def per_unit(driver: Callable[[], Awaitable[list[str]]], n: int, units_per_n: int) -> int:
    """Instructions per unit of work: the driver with `n` repetitions minus with none, each
    from a state of its own (`driver` prepares it, and names the driver's arguments)."""
    counts = []
    for repetitions in (n, 0):
        argv = [sys.executable, "-m", "bench.callback_cost", "--drive", *await driver()]
        counts.append(await asyncio.to_thread(instructions, [*argv, str(repetitions)]))
    return (counts[0] - counts[1]) // (n * units_per_n)


async def placed(calls_file: Path) -> str:
    """A fresh database with the benchmark's calls in progress; its URL."""
    url = await fresh_database()
    _write_calls(calls_file, await placed_calls(url))
    return url


def _read_calls(path: str) -> list[tuple[uuid.UUID, str]]:
    calls: list[tuple[uuid.UUID, str]] = pickle.loads(Path(path).read_bytes())
    return calls


def _write_calls(path: Path, calls: list[tuple[uuid.UUID, str]]) -> None:
    path.write_bytes(pickle.dumps(calls))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drive", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        kind, *rest = args.drive
        if kind == "parse":
            await drive_parse(rest[0], int(rest[1]))
        elif kind == "entrance":
            await drive_entrance(int(rest[0]))
        elif kind == "store":
            await drive_store(rest[0], rest[1], int(rest[2]), int(rest[3]))
        else:
            await drive_transaction(rest[0], rest[1], rest[2], int(rest[3]))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed: apt-get install valgrind")
    print("CPU instructions (callgrind), each the difference of two runs:")
    for name in ("lean", "python-multipart"):

        async def parse(name: str = name) -> list[str]:
            return ["parse", name]

        cost = await per_unit(parse, 200, 1)
        print(f"parse Exotel's four-field multipart body, {name}: {cost:,}")

    async def entrance() -> list[str]:
        return ["entrance"]

    cost = await per_unit(entrance, 200, 1)
    print(f"one callback through the app, the store a stub: {cost:,}")
    with tempfile.TemporaryDirectory() as work:
        calls_file = Path(work) / "calls.pickle"
        for size, repeats in ((1, 100), (8, 40)):

            async def store(size: int = size) -> list[str]:
                return ["store", await placed(calls_file), str(calls_file), str(size)]

            cost = await per_unit(store, repeats, size)
            print(f"store a duplicate callback, {size} a transaction: {cost:,}")
        for how in ("sqlalchemy", "asyncpg"):

            async def transaction(how: str = how) -> list[str]:
                return ["transaction", await placed(calls_file), str(calls_file), how]

            cost = await per_unit(transaction, 200, 1)
            print(f"BEGIN, lock 8 calls, COMMIT, through {how}: {cost:,}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")  # the same work, run after run
    asyncio.run(main())
