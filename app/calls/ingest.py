"""Status callback ingestion with group commit.

Callbacks arrive in bursts (a campaign ending, Exotel retrying after an outage), and each must
be durable before it is answered. Committing each on its own costs a commit (and its fsync) per
callback; here concurrent callbacks share one: every request hands its callback to the writer
and waits, the writer stores whatever has gathered in one transaction, in a handful of
statements whatever the number, and then answers every waiting request. Each request still gets
its answer only after its own callback is committed.

The common case, a callback for a call whose SID we know, takes the lean path: the calls are
locked and read in one statement, the state machine runs in memory, and the events and the
calls' changes are written in one statement each. A batch with anything unusual (a SID not yet
known, another call's SID) goes through `record_status_callback` instead, still in one commit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Select, Table, any_, bindparam, insert, or_, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.calls.service import ReceivedCallback, record_status_callback, update_from_callback
from app.calls.state import apply_update
from app.db.models import Call, CallEvent, CallStatus, EventOutcome, utcnow
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
    """`writers` transactions in flight at once: while one commits, the next batch gathers."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, writers: int) -> None:
        self._sessionmaker = sessionmaker
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
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write(batch)

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            async with self._sessionmaker() as session, session.begin():
                results = await _store_batch(session, batch)
        except Exception as exc:  # every waiting request learns what went wrong
            for pending in batch:
                if not pending.done.done():
                    pending.done.set_exception(exc)
            return
        for pending, result in zip(batch, results, strict=True):
            if not pending.done.done():  # its request may have been cancelled meanwhile
                pending.done.set_result(result)


async def _store_batch(session: AsyncSession, batch: list[_Pending]) -> list[Stored]:
    calls = await _lock_calls(session, batch)
    by_id = {call.id: call for call in calls}
    by_sid = {call.sid: call for call in calls if call.sid}
    targets = [_target(p, by_id, by_sid) for p in batch]
    if any(target is None for target in targets):
        # Something unusual: a SID to learn or to attach later, another call's SID.
        return [await _store_one(session, pending.received) for pending in batch]
    events = []
    for pending, call in zip(batch, targets, strict=True):
        assert call is not None
        update_ = update_from_callback(pending.callback)
        outcome = apply_update(call, update_) if update_ else EventOutcome.IGNORED
        call.changed |= outcome == EventOutcome.APPLIED
        events.append(_event_row(pending, call.id, outcome))
    ids = list((await session.execute(_INSERT_EVENTS, events)).scalars())
    changed = [call for call in calls if call.changed]
    if changed:
        now = utcnow()
        rows = [
            {"call_id": c.id, "updated_at": now} | {n: getattr(c, n) for n in _STATE_COLUMNS}
            for c in changed
        ]
        await session.execute(_UPDATE_CALLS, rows)
    log.debug("stored %d callbacks, %d calls changed", len(batch), len(changed))
    return [Stored(i, e["outcome"]) for i, e in zip(ids, events, strict=True)]


async def _lock_calls(session: AsyncSession, batch: list[_Pending]) -> list[_CallRow]:
    call_ids = list({p.received.call_id for p in batch if p.received.call_id})
    sids = list({p.callback.call_sid for p in batch if p.callback.call_sid})
    statement = _lock_statement(session.get_bind().dialect.name)
    rows = await session.execute(statement, {"ids": call_ids, "sids": sids})
    return [_CallRow(*row) for row in rows]


# The statements are built once: building one costs more than running it for a few rows.
_EVENTS = CallEvent.__table__
_CALLS = Call.__table__
assert isinstance(_EVENTS, Table)
assert isinstance(_CALLS, Table)
# Core statements on the tables: one multi-row INSERT, one executemany UPDATE.
_INSERT_EVENTS = insert(_EVENTS).returning(_EVENTS.c.id, sort_by_parameter_order=True)
_UPDATE_CALLS = (
    update(_CALLS)
    .where(_CALLS.c.id == bindparam("call_id"))
    .values({name: bindparam(name) for name in [*_STATE_COLUMNS, "updated_at"]})
)


@functools.cache
def _lock_statement(dialect: str) -> Select[Any]:
    if dialect == "postgresql":
        # = ANY(array): one parameter, so one prepared statement whatever the batch's size.
        ids = any_(bindparam("ids", type_=postgresql.ARRAY(Call.id.type)))
        sids = any_(bindparam("sids", type_=postgresql.ARRAY(Call.sid.type)))
        condition = or_(Call.id == ids, Call.sid == sids)
    else:
        condition = or_(
            Call.id.in_(bindparam("ids", expanding=True)),
            Call.sid.in_(bindparam("sids", expanding=True)),
        )
    columns = [getattr(Call, name) for name in ("id", "sid", *_STATE_COLUMNS)]
    # One lock order for every writer: no deadlocks between workers.
    return select(*columns).where(condition).order_by(Call.id).with_for_update()


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
