"""Engine and session factory. Nothing connects until a session is used."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from sqlalchemy import event, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

CONNECT_TIMEOUT_SECONDS = 5
# Waiting for a pooled connection: a request gives up (503) rather than hang for SQLAlchemy's 30 s.
POOL_TIMEOUT_SECONDS = 10


def create_engine(url: str, *, pgbouncer: bool = False, **kwargs: Any) -> AsyncEngine:
    """`pgbouncer`: PostgreSQL is reached through PgBouncer in transaction pooling, which hands
    each transaction to whichever server connection is free, so nothing may outlive one: no
    statement is cached (asyncpg's cache and SQLAlchemy's are off) and every prepared statement
    gets a name of its own (SQLAlchemy's recipe for its asyncpg dialect). Nothing else here
    keeps session state (no SET, LISTEN or advisory locks)."""
    connect_args: dict[str, Any] = {}
    if make_url(url).get_backend_name() == "postgresql":
        # A server that drops packets fails a connection in seconds, not asyncpg's 60.
        connect_args["timeout"] = CONNECT_TIMEOUT_SECONDS
    if pgbouncer:
        connect_args |= {
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": _statement_name,
        }
    connect_args |= kwargs.pop("connect_args", {})
    # pre_ping: after the database restarts, pooled connections are dead; test before use.
    engine = create_async_engine(
        url,
        pool_pre_ping=True,
        pool_timeout=POOL_TIMEOUT_SECONDS,
        connect_args=connect_args,
        **kwargs,
    )
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    return engine


def _statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4().hex}__"


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
    refused or dropped connections, time-outs, a server shutting down or starting up. SQLAlchemy
    wraps the driver's errors (`DBAPIError` from asyncpg's `CannotConnectNowError`, say): the
    whole chain of causes is read."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, _DOWN):
            return True
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__
    return False


_DOWN = (
    OSError,  # refused or reset connections, time-outs; asyncpg's connect raises them unwrapped
    PoolTimeout,  # every pooled connection busy or hanging
    OperationalError,
    InterfaceError,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.InterfaceError,  # the connection is closed, or was lost
    # SQLSTATE 57P01-57P03: shutting down, crashed, starting up (not 57014, a cancelled query)
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
)
