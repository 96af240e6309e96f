"""Engine and session factory. Nothing connects until a session is used."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
from sqlalchemy import event
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


def create_engine(url: str | None, *, pgbouncer: bool = False, **kwargs: Any) -> AsyncEngine:
    """`url`: None only by mistake, where no command started the embedded server.

    `pgbouncer`: PostgreSQL is reached through PgBouncer in transaction pooling, which hands each
    transaction to whichever server connection is free, so nothing may outlive one: no
    statement is cached (asyncpg's cache and SQLAlchemy's are off) and every prepared statement
    gets a name of its own (SQLAlchemy's recipe for its asyncpg dialect). Nothing else here
    keeps session state (no SET, LISTEN or advisory locks)."""
    if url is None:
        raise RuntimeError("DATABASE_URL is unset, and no embedded server was started for it")
    # A server that drops packets fails a connection in seconds, not asyncpg's 60.
    connect_args: dict[str, Any] = {"timeout": CONNECT_TIMEOUT_SECONDS}
    if pgbouncer:
        connect_args |= {
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": _statement_name,
        }
    connect_args |= kwargs.pop("connect_args", {})
    # pre_ping: after the database restarts, pooled connections are dead; test before use.
    # hide_parameters: a database error's text, logged with its traceback, never holds the
    # values of its statement (numbers, tokens, a webhook endpoint's secret).
    return create_async_engine(
        url,
        pool_pre_ping=True,
        hide_parameters=True,
        pool_timeout=POOL_TIMEOUT_SECONDS,
        connect_args=connect_args,
        **kwargs,
    )


def _statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4().hex}__"


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def after_commit(session: AsyncSession, callback: Callable[[], None]) -> None:
    """Call `callback` once the session's transaction commits (work queued in it can then be
    claimed at once); not if it rolls back."""
    event.listen(session.sync_session, "after_commit", lambda _: callback(), once=True)


def is_database_down(error: BaseException) -> bool:
    """Whether `error` says the database cannot be reached (as opposed to refusing a statement):
    refused or dropped connections, time-outs, a server shutting down or starting up. SQLAlchemy
    wraps the driver's errors (`DBAPIError` from asyncpg's `CannotConnectNowError`, say): the
    whole chain of causes is read."""
    return any(
        isinstance(cause, _DOWN) or (isinstance(cause, DBAPIError) and cause.connection_invalidated)
        for cause in _causes(error)
    )


def is_schema_behind(error: BaseException) -> bool:
    """Whether `error` says the database lacks the schema this code needs: never migrated, or
    migrated to an older revision (a table, column, type or schema missing)."""
    return any(isinstance(cause, _SCHEMA_BEHIND) for cause in _causes(error))


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__


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
    # The database named is not there, or lets us not in: nothing here can be served either.
    asyncpg.InvalidCatalogNameError,  # 3D000
    asyncpg.InvalidAuthorizationSpecificationError,  # 28000, 28P01 (a wrong password)
)
# SQLSTATE 42P01, 42703, 42704, 3F000
_SCHEMA_BEHIND = (
    asyncpg.UndefinedTableError,
    asyncpg.UndefinedColumnError,
    asyncpg.UndefinedObjectError,
    asyncpg.InvalidSchemaNameError,
)
