"""Test fixtures: a real database built by the real migrations, the app, and an Exotel double.

The database is PostgreSQL: an embedded server started for the test session (in a temporary
directory, on a loopback port), unless TEST_DATABASE_URL names one, whose database is then
emptied and migrated. Each test starts from empty tables.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from playwright.async_api import Browser, async_playwright
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.calls.callback_auth import status_callback_url
from app.config import Settings
from app.db import migrate
from app.db.base import Base
from app.db.embedded import embedded_server
from app.db.session import create_engine, create_sessionmaker
from app.main import create_app
from tests.support.exotel_double import ExotelDouble
from tests.support.pg_proxy import PgProxy
from tests.support.processes import STRAY_ENV, Deployment, free_ports

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")
# A throwaway server need not survive a crash of the machine.
_THROWAWAY = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}

# Obviously fake credentials: nothing in the tests is real.
FAKE_ACCOUNT_SID = "fake-account"
FAKE_API_KEY = "fake-api-key"
FAKE_API_TOKEN = "fake-api-token"
FAKE_CALLBACK_SECRET = "fake-callback-secret"
FAKE_CALLER_ID = "08030752400"
FAKE_INTERNAL_API_KEY = "fake-internal-api-key"
AUTH = {"Authorization": f"Bearer {FAKE_INTERNAL_API_KEY}"}
HOW_TO_GET_CHROMIUM = "install Debian's chromium (apt-get install chromium)"
# Where the status page's browser test saves its screenshot; `make screenshot` points it at
# docs/ui.png.
SCREENSHOT_PATH = "UI_SCREENSHOT"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Refuse a run that would skip tests silently under pytest-xdist, which schedules tests by
    id: two tests with one id run once, and a test of an xdist_group whose id does not name the
    group runs on any worker. Both happened with pytest 9, whose ids these plugins do not yet
    set (pyproject.toml holds pytest below 9 until they do)."""
    ids = Counter(item.nodeid for item in session.items)
    if twice := [nodeid for nodeid, count in ids.items() if count > 1]:
        raise pytest.UsageError(f"tests with the same id, which xdist would run once: {twice}")
    if getattr(session.config, "workerinput", None) and session.config.option.dist == "loadgroup":
        ungrouped = [
            item.nodeid
            for item in session.items
            if item.get_closest_marker("xdist_group") and "@" not in item.nodeid
        ]
        if ungrouped:
            raise pytest.UsageError(f"xdist did not group these: {ungrouped[:3]}")


def _reset_postgres(url: str) -> None:
    async def reset() -> None:
        engine = create_engine(url)
        async with engine.begin() as connection:
            await connection.execute(text("DROP SCHEMA public CASCADE"))
            await connection.execute(text("CREATE SCHEMA public"))
        await engine.dispose()

    asyncio.run(reset())


def _database_of_this_worker(url: str) -> str:
    """`url`; under pytest-xdist, a database of the worker's own on the same server, made
    afresh (`exocall_gw0` beside `exocall`): each worker empties every table after each test."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return url
    given = make_url(url)
    name = f"{given.database}_{worker}"

    async def create() -> None:
        engine = create_engine(url).execution_options(isolation_level="AUTOCOMMIT")
        async with engine.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        await engine.dispose()

    asyncio.run(create())
    return given.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """An empty database, brought to the newest schema by the migrations: on a server of this
    session's own, or on TEST_DATABASE_URL's."""
    if TEST_DATABASE_URL:
        url = _database_of_this_worker(TEST_DATABASE_URL)
        _reset_postgres(url)
        migrate.upgrade(url)
        yield url
        return
    # Not under pytest's own temporary directory, which only its owner may enter: under root
    # the server runs as another user.
    directory = Path(tempfile.mkdtemp(prefix="exocall-test-"))
    directory.chmod(0o755)
    try:
        (port,) = free_ports(1)
        with embedded_server(directory / "pgdata", port=port, options=_THROWAWAY) as url:
            migrate.upgrade(url)
            yield url
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def empty_database(url: str) -> None:
    """Every table of the models emptied: each test starts from nothing, whatever it wrote."""
    engine = create_engine(url)
    async with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):  # children before their parents
            await connection.execute(table.delete())
    await engine.dispose()


@pytest.fixture
async def db_url(database_url: str) -> AsyncIterator[str]:
    """The migrated database, emptied after the test."""
    yield database_url
    await empty_database(database_url)


# How long `POST /calls` waits for Exotel's answer (201) before it answers 202: long, so that a
# test that places a call gets 201 however busy the machine, unless dispatch hangs. A test of the
# 202 sets its own, or holds Exotel's answer; a test that wants the call queued asks wait=false.
DISPATCH_WAIT_SECONDS = 20

# A database nobody can reach (nothing listens on port 9): for an app whose schema alone is
# read, or one that must find its database down.
UNUSED_DATABASE = "postgresql+asyncpg://postgres@127.0.0.1:9/unused"

# What every process of an end-to-end test is configured with.
FAKE_ENV = {
    "EXOTEL_ACCOUNT_SID": FAKE_ACCOUNT_SID,
    "EXOTEL_API_KEY": FAKE_API_KEY,
    "EXOTEL_API_TOKEN": FAKE_API_TOKEN,
    "CALLBACK_SECRETS": FAKE_CALLBACK_SECRET,
    "EXOTEL_CALLER_ID": FAKE_CALLER_ID,
    "API_KEYS": FAKE_INTERNAL_API_KEY,
    "DISPATCH_WAIT_SECONDS": str(DISPATCH_WAIT_SECONDS),
}


@pytest.fixture
def deployment(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """Real processes on the test database, stopped before `db_url` empties the tables; their
    output is printed if the test failed."""
    deployment = Deployment(database_url=db_url, workdir=tmp_path, env=FAKE_ENV)
    failed_before = request.session.testsfailed
    yield deployment
    deployment.stop()
    if request.session.testsfailed > failed_before:
        print(deployment.outputs())


@pytest.fixture
def proxy(database_url: str) -> Iterator[PgProxy]:
    """A way to the test database that can be cut (tests/support/pg_proxy.py). Request it before
    `deployment`, so that the processes are stopped before the proxy is."""
    upstream = make_url(database_url)
    with PgProxy(upstream.port or 5432, upstream.host or "127.0.0.1") as proxy:
        yield proxy
    assert not proxy.alive


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "exotel_account_sid": FAKE_ACCOUNT_SID,
        "exotel_api_key": FAKE_API_KEY,
        "exotel_api_token": FAKE_API_TOKEN,
        "exotel_api_base_url": "https://exotel.test",
        "callback_secrets": FAKE_CALLBACK_SECRET,
        "public_base_url": "http://exocall.test",
        "api_keys": FAKE_INTERNAL_API_KEY,
        "dispatch_wait_seconds": DISPATCH_WAIT_SECONDS,
        "jobs_poll_seconds": 0.05,
        # The app's own archive would race a test's callbacks with events of its own, once
        # its poll comes round: tests/recordings/test_recordings.py runs an Archive itself.
        "recording_archive": False,
    }
    return Settings.load(env_file=None, **(values | overrides))


@pytest.fixture
def settings(db_url: str) -> Settings:
    return make_settings(db_url)


@pytest.fixture
def exotel() -> ExotelDouble:
    return ExotelDouble()


async def no_dns(host: str, port: int) -> list[str]:
    """The resolver the tests give the service: `localhost` is this machine, and no other name
    resolves, so that no test asks a DNS server (webhook targets are IP literals)."""
    if host == "localhost":
        return ["127.0.0.1"]
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.fixture
def app(settings: Settings, exotel: ExotelDouble) -> FastAPI:
    return create_app(
        settings, exotel_transport=httpx.MockTransport(exotel.handle), resolver=no_dns
    )


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, and a client of it that sends the API key."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://exocall.test", headers=AUTH
        ) as c,
    ):
        yield c


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(app) as c:
        yield c


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


def callback_path(call_id: uuid.UUID | str | None, secret: str = FAKE_CALLBACK_SECRET) -> str:
    """The path and query of the StatusCallback URL exocall gives Exotel for `call_id`."""
    parsed = uuid.UUID(str(call_id)) if call_id else None
    return status_callback_url("", secret.encode(), parsed)


def place_body(number: str = "+919052161110", **fields: Any) -> dict[str, Any]:
    return {"from": number, "app_id": "926", "caller_id": FAKE_CALLER_ID} | fields


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Settings read the environment; a developer's shell must not change what tests see.
    for name in os.environ:
        if name.startswith(STRAY_ENV):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("RECORDING_STORE", str(tmp_path / "recordings"))


def _chromium(playwrights_own: str) -> Path:
    """Debian's Chromium (on PATH, as .ci/run installs it), else Playwright's own download where
    `playwright install` could fetch it (not on this project's machines: their network refuses
    it). Without either the browser tests are skipped, except where they must run: under
    CI=true (CI installs Chromium) and for `make screenshot` they fail."""
    for candidate in (shutil.which("chromium"), playwrights_own):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    missing = f"no Chromium: {HOW_TO_GET_CHROMIUM}"
    if os.environ.get("CI") == "true" or os.environ.get(SCREENSHOT_PATH):
        pytest.fail(missing)
    pytest.skip(missing)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=_chromium(playwright.chromium.executable_path),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield browser
        finally:
            await browser.close()
