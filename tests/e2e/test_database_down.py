"""While the database cannot be reached, every endpoint says so (`503 database_unavailable`, with
`Retry-After`), never 500; so does one not migrated (`503 schema_not_current`); and a call
committed before it went away is never answered as failed.

PostgreSQL is reached through a proxy the tests cut (tests/support/pg_proxy.py); the server itself
keeps running for everyone else.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError

from app.db.session import create_engine, is_database_down, is_schema_behind
from app.main import create_app
from tests.conftest import make_settings, place_body, serving
from tests.support.eventually import eventually
from tests.support.exotel_double import ExotelDouble, accepted, form_of
from tests.support.pg_proxy import PgProxy

pytestmark = [pytest.mark.anyio]

SOME_ID = uuid.UUID("5a1e0000-0000-4000-8000-000000000001")

# Every endpoint that needs the database. Status callbacks are spooled instead (test_outage.py),
# and /metrics serves this process's own counts: both answer 200 by design.
ENDPOINTS: list[tuple[str, str, Any]] = [
    ("POST", "/calls", place_body()),
    ("POST", "/calls?wait=false", place_body()),
    ("POST", "/calls/batch", {"calls": [place_body()]}),
    ("GET", "/calls", None),
    ("GET", f"/calls/{SOME_ID}", None),
    ("GET", f"/calls/{SOME_ID}/events", None),
    ("GET", f"/batches/{SOME_ID}", None),
    ("GET", "/readyz", None),
    ("GET", "/ui", None),
    ("GET", f"/ui/calls/{SOME_ID}", None),
]


@pytest.fixture
async def client(
    db_url: str, proxy: PgProxy, exotel: ExotelDouble
) -> AsyncIterator[httpx.AsyncClient]:
    """The app on the test database, through the proxy."""
    settings = make_settings(proxy.url_for(db_url), dispatch_wait_seconds=10)
    app = create_app(settings, exotel_transport=httpx.MockTransport(exotel.handle))
    async with serving(app) as client:
        yield client


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_every_endpoint_answers_503_while_the_database_is_unreachable(
    client: httpx.AsyncClient, proxy: PgProxy, method: str, path: str, body: Any
) -> None:
    await asyncio.to_thread(proxy.cut)
    response = await client.request(method, path, json=body)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "database_unavailable"
    assert int(response.headers["Retry-After"]) > 0

    await asyncio.to_thread(proxy.restore)
    assert (await client.get("/readyz")).status_code == 200  # and it recovers by itself


@pytest.fixture
async def unmigrated_url(database_url: str) -> AsyncIterator[str]:
    """A database of its own on the test server, never migrated."""
    name = f"unmigrated_{uuid.uuid4().hex}"
    admin = create_engine(database_url).execution_options(isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.dispose()


async def every_endpoint_answers(client: httpx.AsyncClient, code: str) -> None:
    for method, path, body in ENDPOINTS:
        response = await client.request(method, path, json=body)
        assert response.status_code == 503, (method, path, response.text)
        assert response.json()["error"]["code"] == code, (method, path, response.text)
        assert int(response.headers["Retry-After"]) > 0


async def test_every_endpoint_answers_503_while_the_database_is_not_migrated(
    unmigrated_url: str, exotel: ExotelDouble
) -> None:
    settings = make_settings(unmigrated_url)
    app = create_app(settings, exotel_transport=httpx.MockTransport(exotel.handle))
    async with serving(app) as client:
        await every_endpoint_answers(client, "schema_not_current")
    assert exotel.connects == []


async def test_every_endpoint_answers_503_while_the_database_named_is_not_there(
    database_url: str, exotel: ExotelDouble
) -> None:
    missing = make_url(database_url).set(database=f"missing_{uuid.uuid4().hex}")
    settings = make_settings(missing.render_as_string(hide_password=False))
    app = create_app(settings, exotel_transport=httpx.MockTransport(exotel.handle))
    async with serving(app) as client:
        await every_endpoint_answers(client, "database_unavailable")
    assert exotel.connects == []


async def test_a_call_committed_before_the_database_went_away_is_answered_202(
    client: httpx.AsyncClient, proxy: PgProxy, exotel: ExotelDouble, db_url: str
) -> None:
    # Exotel dials, and while it answers the database goes away: neither Exotel's answer can be
    # recorded, nor can the request waiting for it read the call again.
    async def cut_then_accept(_: httpx.Request) -> httpx.Response:
        await asyncio.to_thread(proxy.cut)
        return accepted()

    exotel.on_connect = cut_then_accept
    response = await client.post("/calls", json=place_body())

    assert response.status_code == 202, response.text  # placed, not failed: do not retry it
    call = response.json()
    assert call["status"] == "queued"
    assert len(exotel.connects) == 1

    await asyncio.to_thread(proxy.restore)
    stored = await client.get(f"/calls/{call['id']}")
    assert stored.status_code == 200
    # Sent once; its claim stays until reconciliation resolves it, and it is never sent again:
    # a call placed after it is sent, alone (the oldest claimable call is claimed first).
    exotel.accept_connects()
    later = await client.post("/calls", json=place_body("9052161111"))
    assert later.status_code == 201, later.text
    assert [form_of(r)["From"] for r in exotel.connects] == ["09052161110", "09052161111"]


async def test_the_workers_say_when_the_database_goes_and_comes_back(
    client: httpx.AsyncClient, proxy: PgProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.calls.availability")

    def said() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "app.calls.availability" and r.getMessage().startswith("dispatch:")
        ]

    async def failures() -> float:
        metrics = (await client.get("/metrics")).text  # this process's counts, no database
        found = re.search(r'exocall_database_unreachable_total\{worker="dispatch"\} (\S+)', metrics)
        return float(found[1]) if found else 0

    await asyncio.to_thread(proxy.cut)
    # The dispatcher polls every 0.05 s: many of its polls fail ...
    await eventually(failures, what="five failed polls", until=lambda count: count >= 5)
    assert len(said()) == 1  # ... and it said so once
    await asyncio.to_thread(proxy.restore)
    await eventually(lambda: len(said()) == 2, what="the dispatcher saying it is back")
    # After which it sends a call, and says nothing more.
    placed = await client.post("/calls", json=place_body())
    assert placed.status_code == 201, placed.text

    # Once when it went, once when it came back: not once a poll.
    went, back = said()
    assert "unreachable" in went
    assert "reachable again" in back


@pytest.mark.parametrize(
    "cause",
    [
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        ConnectionRefusedError(111, "Connect call failed"),
    ],
    ids=type,
)
def test_a_database_going_away_is_recognised_however_sqlalchemy_wraps_it(
    cause: Exception,
) -> None:
    assert is_database_down(_as_sqlalchemy_raises(cause))


def test_a_cancelled_statement_is_not_the_database_going_away() -> None:
    cause = asyncpg.QueryCanceledError("canceling statement due to statement timeout")
    assert not is_database_down(_as_sqlalchemy_raises(cause))
    assert not is_schema_behind(_as_sqlalchemy_raises(cause))


def _as_sqlalchemy_raises(cause: Exception) -> BaseException:
    """`cause` as SQLAlchemy's asyncpg dialect raises it: a DBAPIError, from the dialect's own
    adapted error, from asyncpg's."""
    try:
        try:
            raise cause
        except Exception as error:
            raise RuntimeError(str(error)) from error  # the dialect's adapted error
    except RuntimeError as adapted:
        try:
            raise DBAPIError("SELECT 1", None, adapted) from adapted
        except DBAPIError as wrapped:
            return wrapped
