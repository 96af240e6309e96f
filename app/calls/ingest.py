"""Status callback ingestion with group commit.

Callbacks arrive in bursts (a campaign ending, Exotel retrying after an outage), and each must
be durable before it is answered. Committing each on its own costs a commit (and its fsync) per
callback; here concurrent callbacks share one: every request hands its callback to the writer
and waits, the writer stores whatever has gathered in one transaction, in a handful of
statements whatever the number, and then answers every waiting request. Each request still gets
its answer only after its own callback is committed.

The common case, a callback for a call whose SID we know, takes the lean path: the calls are
locked and read in one statement, the state machine runs in memory, and the events and the
calls' changes are written in one statement (two on SQLite). A batch with anything unusual (a
SID not yet known, another call's SID) goes through `record_status_callback` instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Protocol

import asyncpg
from sqlalchemy import Table, bindparam, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from app.calls.service import ReceivedCallback, record_status_callback, update_from_callback
from app.calls.state import apply_update
from app.db.models import Call, CallEvent, CallStatus, EventOutcome, utcnow
from app.db.session import create_sessionmaker
from app.exotel.wire import StatusCallback, parse_status_callback

log = logging.getLogger(__name__)

MAX_BATCH = 256


@dataclass(frozen=True)
class Stored:
    event_id: int
    outcome: EventOutcome


@dataclass
class _CallRow:
    """The columns of a call that callbacks change."""

    id: uuid.UUID
    sid: str | None
    status: CallStatus
    date_updated: datetime | None
    date_updated_raw: str | None
    recording_url: str | None
    duration: int | None
    conversation_duration: int | None
    changed: bool = False


_STATE_COLUMNS = [f.name for f in fields(_CallRow) if f.name not in ("id", "sid", "changed")]


@dataclass
class _Pending:
    received: ReceivedCallback
    callback: StatusCallback
    done: asyncio.Future[Stored] = field(default_factory=asyncio.Future)


class CallbackWriter:
    """`writers` transactions in flight at once: while one commits, the next batch gathers.

    On PostgreSQL each writer holds a connection of its own and speaks to asyncpg directly: for
    batches of a few dozen rows, SQLAlchemy's per-statement work costs more than the statements.
    """

    def __init__(self, engine: AsyncEngine, *, writers: int) -> None:
        self._engine = engine
        self._sessionmaker = create_sessionmaker(engine)
        self._writers = writers
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"callback writer {n}")
            for n in range(self._writers)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def store(self, received: ReceivedCallback) -> Stored:
        """Store `received` durably; returns once it is committed. Raises what storing it
        raised (the database unreachable, say)."""
        pending = _Pending(received, parse_status_callback(received.payload))
        self._queue.put_nowait(pending)
        return await pending.done

    async def _run(self) -> None:
        held = _HeldConnection(self._engine) if self._engine.dialect.name == "postgresql" else None
        try:
            while True:
                batch = [await self._queue.get()]
                while len(batch) < MAX_BATCH and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                await self._write(batch, held)
        finally:
            if held is not None:
                await asyncio.shield(held.close())

    async def _write(self, batch: list[_Pending], held: _HeldConnection | None) -> None:
        try:
            results = await self._store(batch, held)
        except Exception as exc:  # every waiting request learns what went wrong
            if held is not None:  # whatever state the failure left it in, start afresh
                await held.discard()
            for pending in batch:
                if not pending.done.done():
                    pending.done.set_exception(exc)
            return
        for pending, result in zip(batch, results, strict=True):
            if not pending.done.done():  # its request may have been cancelled meanwhile
                pending.done.set_result(result)

    async def _store(self, batch: list[_Pending], held: _HeldConnection | None) -> list[Stored]:
        if held is not None:
            connection = await held.driver_connection()
            async with connection.transaction():
                results = await _store_lean(_Asyncpg(connection), batch)
        else:
            async with self._sessionmaker() as session, session.begin():
                results = await _store_lean(_Core(session), batch)
        if results is not None:
            return results
        # Something unusual (a SID to learn or to attach later, another call's SID): the
        # lean attempt wrote nothing, and the batch goes through the general path.
        async with self._sessionmaker() as session, session.begin():
            return [await _store_one(session, pending.received) for pending in batch]


async def _store_lean(db: _Statements, batch: list[_Pending]) -> list[Stored] | None:
    """Store a batch of callbacks for calls whose SID we know, in three statements; None, having
    written nothing, if some callback is not of that kind."""
    call_ids = list({p.received.call_id for p in batch if p.received.call_id})
    sids = list({p.callback.call_sid for p in batch if p.callback.call_sid})
    calls = await db.lock_calls(call_ids, sids)
    by_id = {call.id: call for call in calls}
    by_sid = {call.sid: call for call in calls if call.sid}
    targets = [_target(p, by_id, by_sid) for p in batch]
    if any(target is None for target in targets):
        return None
    events = []
    for pending, call in zip(batch, targets, strict=True):
        assert call is not None
        update_ = update_from_callback(pending.callback)
        outcome = apply_update(call, update_) if update_ else EventOutcome.IGNORED
        call.changed |= outcome == EventOutcome.APPLIED
        events.append(_event_row(pending, call.id, outcome))
    now = utcnow()
    changed = [
        {"call_id": c.id, "updated_at": now} | {n: getattr(c, n) for n in _STATE_COLUMNS}
        for c in calls
        if c.changed
    ]
    ids = await db.write(events, changed)
    log.debug("stored %d callbacks, %d calls changed", len(batch), len(changed))
    return [Stored(i, e["outcome"]) for i, e in zip(ids, events, strict=True)]


def _target(
    pending: _Pending, by_id: dict[uuid.UUID, _CallRow], by_sid: dict[str, _CallRow]
) -> _CallRow | None:
    """The call the callback is for, when the lean path can apply it."""
    sid = pending.callback.call_sid
    call_id = pending.received.call_id
    call = by_id.get(call_id) if call_id else by_sid.get(sid or "")
    if call is None or (sid and call.sid != sid):
        return None
    return call


def _event_row(pending: _Pending, call_id: uuid.UUID, outcome: EventOutcome) -> dict[str, Any]:
    callback, received = pending.callback, pending.received
    return {
        "receipt_id": received.receipt_id,
        "received_at": received.received_at,
        "call_id": call_id,
        "sid": callback.call_sid,
        "content_type": received.content_type,
        "payload": received.payload,
        "status": callback.status,
        "event_type": callback.event_type,
        "recording_url": callback.recording_url,
        "date_updated": callback.date_updated,
        "date_updated_raw": callback.date_updated_raw,
        "outcome": outcome,
    }


async def _store_one(session: AsyncSession, received: ReceivedCallback) -> Stored:
    event = await record_status_callback(session, received)
    return Stored(event.id, event.outcome)


class _Statements(Protocol):
    """The lean path's three statements, inside the caller's transaction."""

    async def lock_calls(self, call_ids: list[uuid.UUID], sids: list[str]) -> list[_CallRow]:
        """The calls with these ids or SIDs, locked, in one lock order for every writer (no
        deadlocks between workers)."""

    async def write(self, events: list[dict[str, Any]], calls: list[dict[str, Any]]) -> list[int]:
        """Insert the `call_event` rows `events` and write the state columns (and `updated_at`)
        of `calls`, by `call_id`; the events' ids, in their order."""


class _Core:
    """The statements through SQLAlchemy Core (SQLite)."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def lock_calls(self, call_ids: list[uuid.UUID], sids: list[str]) -> list[_CallRow]:
        rows = await self._session.execute(_LOCK_CALLS, {"ids": call_ids, "sids": sids})
        return [_CallRow(*row) for row in rows]

    async def write(self, events: list[dict[str, Any]], calls: list[dict[str, Any]]) -> list[int]:
        ids = list((await self._session.execute(_INSERT_EVENTS, events)).scalars())
        if calls:
            await self._session.execute(_UPDATE_CALLS, calls)
        return ids


_EVENTS = CallEvent.__table__
_CALLS = Call.__table__
assert isinstance(_EVENTS, Table)
assert isinstance(_CALLS, Table)
# Built once: building a statement costs more than running it for a few rows.
_LOCK_CALLS = (
    select(*(_CALLS.c[name] for name in ("id", "sid", *_STATE_COLUMNS)))
    .where(
        or_(
            _CALLS.c.id.in_(bindparam("ids", expanding=True)),
            _CALLS.c.sid.in_(bindparam("sids", expanding=True)),
        )
    )
    .order_by(_CALLS.c.id)
    .with_for_update()
)
_INSERT_EVENTS = insert(_EVENTS).returning(_EVENTS.c.id, sort_by_parameter_order=True)
_UPDATE_CALLS = (
    update(_CALLS)
    .where(_CALLS.c.id == bindparam("call_id"))
    .values({name: bindparam(name) for name in [*_STATE_COLUMNS, "updated_at"]})
)


class _Asyncpg:
    """The statements on asyncpg directly (PostgreSQL). Each takes whole columns as arrays, so
    each is one prepared statement whatever the batch's size."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    async def lock_calls(self, call_ids: list[uuid.UUID], sids: list[str]) -> list[_CallRow]:
        rows = await self._connection.fetch(_PG_LOCK_CALLS, call_ids, sids)
        return [_CallRow(row[0], row[1], CallStatus(row[2]), *row[3:]) for row in rows]

    async def write(self, events: list[dict[str, Any]], calls: list[dict[str, Any]]) -> list[int]:
        columns = [[row[name] for row in events] for name in _PG_EVENT_COLUMNS]
        columns[_PG_EVENT_COLUMNS.index("payload")] = [json.dumps(e["payload"]) for e in events]
        columns += [[row[name] for row in calls] for name in _PG_CALL_COLUMNS]
        stored = await self._connection.fetch(_PG_WRITE, *columns)
        # An INSERT ... SELECT promises no order for RETURNING: match the ids up by receipt.
        ids = {receipt_id: event_id for event_id, receipt_id in stored}
        return [ids[event["receipt_id"]] for event in events]


# The columns in the order of `_CallRow`.
_PG_LOCK_CALLS = """
    SELECT id, sid, status, date_updated, date_updated_raw, recording_url, duration,
           conversation_duration
    FROM call WHERE id = ANY($1::uuid[]) OR sid = ANY($2::varchar[])
    ORDER BY id FOR UPDATE
"""
_PG_EVENT_COLUMNS = [
    "receipt_id", "received_at", "call_id", "sid", "content_type", "payload", "status",
    "event_type", "recording_url", "date_updated", "date_updated_raw", "outcome",
]  # fmt: skip
_PG_CALL_COLUMNS = ["call_id", *_STATE_COLUMNS, "updated_at"]
# One statement, one round trip: the calls' UPDATE runs as a data-modifying WITH.
_PG_WRITE = """
    WITH changed AS (
        UPDATE call SET status = c.status, date_updated = c.date_updated,
                        date_updated_raw = c.date_updated_raw, recording_url = c.recording_url,
                        duration = c.duration, conversation_duration = c.conversation_duration,
                        updated_at = c.updated_at
        FROM unnest($13::uuid[], $14::varchar[], $15::timestamptz[], $16::varchar[],
                    $17::text[], $18::int[], $19::int[], $20::timestamptz[])
             AS c(call_id, status, date_updated, date_updated_raw, recording_url, duration,
                  conversation_duration, updated_at)
        WHERE call.id = c.call_id
    )
    INSERT INTO call_event (receipt_id, received_at, call_id, sid, content_type, payload, status,
                            event_type, recording_url, date_updated, date_updated_raw, outcome)
    SELECT receipt_id, received_at, call_id, sid, content_type, payload::jsonb, status,
           event_type, recording_url, date_updated, date_updated_raw, outcome
    FROM unnest($1::uuid[], $2::timestamptz[], $3::uuid[], $4::varchar[], $5::varchar[],
                $6::text[], $7::varchar[], $8::varchar[], $9::text[], $10::timestamptz[],
                $11::varchar[], $12::varchar[])
         AS e(receipt_id, received_at, call_id, sid, content_type, payload, status, event_type,
              recording_url, date_updated, date_updated_raw, outcome)
    RETURNING id, receipt_id
"""


class _HeldConnection:
    """A writer's own connection from the engine's pool, kept across batches (no check-out and
    ping per batch), and given up when the database drops it."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._connection: AsyncConnection | None = None

    async def driver_connection(self) -> asyncpg.Connection:
        if self._connection is None:
            self._connection = await self._engine.connect()
        raw = await self._connection.get_raw_connection()
        return raw.driver_connection

    async def discard(self) -> None:
        """Give the connection up; never raises, so that its writer lives on."""
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                await connection.invalidate()
                await connection.close()
            except Exception:
                log.warning("callback writer: dropping its connection failed", exc_info=True)

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()
