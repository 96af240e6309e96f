"""Engine and session factory. Nothing connects until a session is used."""

from __future__ import annotations

from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    # pre_ping: after the database restarts, pooled connections are dead; test before use.
    engine = create_async_engine(url, pool_pre_ping=True, **kwargs)
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: AsyncEngine) -> None:
    # Every transaction here reads a row and then writes it. SQLite's deferred BEGIN would let two
    # such transactions both read, and then fail one with "database is locked" without waiting;
    # BEGIN IMMEDIATE takes the write lock up front, so they queue behind busy_timeout instead.
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def insert_for(session: AsyncSession) -> Any:
    """The dialect's INSERT, which has ON CONFLICT DO NOTHING on both backends."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def is_database_down(error: BaseException) -> bool:
    """Whether `error` says the database cannot be reached (as opposed to refusing a statement):
    refused or dropped connections, time-outs."""
    if isinstance(error, OSError | TimeoutError):  # asyncpg's connect raises these unwrapped
        return True
    if isinstance(error, OperationalError | InterfaceError):
        return True
    # The same, raised by asyncpg itself where it is used directly (the callback writer).
    if isinstance(error, _ASYNCPG_DOWN):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


_ASYNCPG_DOWN = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.InterfaceError,  # the connection is closed, or was lost
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutting down, cannot connect now
)
