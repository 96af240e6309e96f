"""Benchmarks: they print figures, never pass or fail. Run them with `make bench`."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from app.db import migrate
from app.db.session import create_engine

SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"
DATABASE = "exocall_bench"


async def fresh_database() -> str:
    """An empty `exocall_bench` database on the local PostgreSQL, migrated; its URL."""
    admin = create_engine(f"{SERVER}/postgres", isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
        await connection.execute(text(f"CREATE DATABASE {DATABASE}"))
    await admin.dispose()
    url = f"{SERVER}/{DATABASE}"
    await asyncio.to_thread(migrate.upgrade, url)
    return url
