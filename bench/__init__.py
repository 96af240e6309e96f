"""Benchmarks: they print figures, never pass or fail. Run them with `make bench`."""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path

from sqlalchemy import text

from app.db import migrate
from app.db.embedded import embedded_server
from app.db.session import create_engine
from tests.support.processes import free_ports

DATABASE = "exocall_bench"


@functools.cache
def server(*, statement_stats: bool = False) -> str:
    """The PostgreSQL server the benchmarks run on: BENCH_DATABASE_SERVER's
    (`postgresql+asyncpg://postgres@127.0.0.1:5432`), or an embedded one on a loopback port,
    with production's settings, stopped when the benchmark ends. `statement_stats`: the
    embedded one loads pg_stat_statements (a named server must have it preloaded already)."""
    if named := os.environ.get("BENCH_DATABASE_SERVER"):
        return named
    directory = Path(tempfile.mkdtemp(prefix="exocall-bench-"))
    directory.chmod(0o755)  # under root the server runs as another user
    stack = ExitStack()
    atexit.register(stack.close)
    stack.callback(shutil.rmtree, directory, ignore_errors=True)
    (port,) = free_ports(1)
    options = {"shared_preload_libraries": "pg_stat_statements"} if statement_stats else {}
    url = stack.enter_context(embedded_server(directory / "pgdata", port=port, options=options))
    return url.rsplit("/", 1)[0]  # the server: its databases are named after it


async def fresh_database(*, statement_stats: bool = False, name: str = DATABASE) -> str:
    """An empty database `name` on the benchmarks' server, migrated; its URL."""
    admin = create_engine(
        f"{server(statement_stats=statement_stats)}/postgres", isolation_level="AUTOCOMMIT"
    )
    async with admin.connect() as connection:
        await connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        await connection.execute(text(f"CREATE DATABASE {name}"))
    await admin.dispose()
    url = f"{server(statement_stats=statement_stats)}/{name}"
    await asyncio.to_thread(migrate.upgrade, url)
    return url
