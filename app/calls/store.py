"""The one write path: every change to a call's state, and everything received about a call
stored (Exotel's callbacks and Passthru requests, and its answers to our requests).

Dispatch results, status callbacks, reconciliation, the spool replay and lost claims all go
through a `CallStore`, one per transaction, set-based whatever the number of calls:

1. `lock()` reads the calls' state (`CallState`) and locks their rows, in one statement and in
   one lock order for every writer (no deadlocks between replicas);
2. the caller changes that state through the state machine, in memory: `add_callback()` for a
   callback, `apply_update()` and `CallState.fail()` for the rest, `learn_sid()` for a SID;
   `add_answer()` keeps Exotel's answer that told it (to `Calls/connect`, or call details)
   beside the callbacks, so that every way a status was learnt is among the call's records;
3. `flush()` writes it all back in a few statements: the callbacks that came for a SID before
   any call had it are attached to the call that has it now, the new events are inserted, and
   every call that changed is updated.

Every statement is built once from the table metadata. `flush()` also writes the
events the changes are for subscribers (`app.calls.outbox`), in the same transaction.
"""

from __future__ import annotations

import functools
import logging
import operator
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import any_, bindparam, delete, func, insert, select, union_all, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as upsert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.calls import outbox
from app.calls.received import Ignored, ReceivedAnswer, ReceivedCallback, Unreadable, fitting
from app.calls.state import (
    CallState,
    InputUpdate,
    apply_input,
    apply_to_attempt,
    apply_update,
    attempt_of,
    is_latest_live,
    record_attempt,
)
from app.db.clock import db_now
from app.db.models import (
    Call,
    Dial,
    EventOutcome,
    Receipt,
    RecordingJob,
    RecordingStatus,
    RequestKind,
)
from app.db.statements import among, one_of, table_of
from app.logs import about

log = logging.getLogger(__name__)


_CALLS, _EVENTS, _JOBS = table_of(Call), table_of(Receipt), table_of(RecordingJob)
_DIALS = table_of(Dial)
_EVENT_COLUMNS = [column.name for column in _EVENTS.c if column.name != "id"]
STATE_COLUMNS = [f.name for f in fields(CallState)]
# What never changes once the call is stored.
_FIXED = ("id", "created_at", "expires_at", "retry", "window")
_CHANGING = [name for name in STATE_COLUMNS if name not in _FIXED]
# Reconciliation's schedules are written, but are not a change of the call (its `updated_at`).
_OF_THE_CALL = [
    name
    for name in _CHANGING
    if name not in ("next_lookup_at", "price_wait_from", "updated_at", "event_sequence")
]
_values_of = operator.attrgetter(*STATE_COLUMNS)  # a call's state as a tuple, in field order


@dataclass(frozen=True)
class Change:
    """A call's state before and after this transaction."""

    before: CallState
    after: CallState

    @property
    def of_the_call(self) -> bool:
        """Whether the call itself changed, not only reconciliation's schedule for it."""
        return any(getattr(self.before, name) != getattr(self.after, name) for name in _OF_THE_CALL)


class CallStore:
    def __init__(self, connection: AsyncConnection) -> None:
        self._db = connection
        self._statements = _statements()
        self._calls: dict[uuid.UUID, CallState] = {}
        # Read with the calls, never changed: each one's app id, its own `custom_field`, and
        # the number it phones.
        self._fixed: dict[uuid.UUID, tuple[str | None, str | None, str]] = {}
        self._as_locked: dict[uuid.UUID, tuple[Any, ...]] = {}
        self._by_sid: dict[str, CallState] = {}
        self._locked_sids: set[str] = set()
        self._events: list[dict[str, Any]] = []
        self._adopting: dict[str, CallState] = {}  # SIDs whose earlier callbacks to attach
        self._learnt: list[dict[str, Any]] = []  # SIDs learnt, for their attempts' dials
        self._now: datetime | None = None
        self.attached = 0  # stored callbacks attached to their call by the last flush

    @classmethod
    async def of(cls, session: AsyncSession) -> CallStore:
        """A store writing in the session's transaction."""
        return cls(await session.connection())

    async def now(self) -> datetime:
        """The database's time, read once per transaction (when it is needed)."""
        if self._now is None:
            self._now = await db_now(self._db)
        return self._now

    async def lock(self, *, ids: Iterable[uuid.UUID] = (), sids: Iterable[str] = ()) -> None:
        """Lock and read the calls with these ids or SIDs (those that exist)."""
        wanted_ids = [i for i in set(ids) if i not in self._calls]
        wanted_sids = [s for s in set(sids) if s not in self._locked_sids]
        self._locked_sids.update(wanted_sids)
        if not wanted_ids and not wanted_sids:
            return
        rows = await self._db.execute(
            self._statements.lock, {"ids": wanted_ids, "sids": wanted_sids}
        )
        for *state, app_id, custom_field, number in rows:  # STATE_COLUMNS, then the fixed
            if state[0] not in self._calls:
                call = CallState(*state)
                self._calls[call.id] = call
                self._fixed[call.id] = (app_id, custom_field, number)
                self._as_locked[call.id] = _values_of(call)
                for sid in {call.sid, *(attempt["sid"] for attempt in call.attempts)} - {None}:
                    self._by_sid[sid] = call

    def get(self, call_id: uuid.UUID) -> CallState | None:
        """A locked call."""
        return self._calls.get(call_id)

    def app_id(self, call_id: uuid.UUID | None) -> str | None:
        """The Exotel app (flow) id of a locked call."""
        return self._fixed[call_id][0] if call_id in self._fixed else None

    def number(self, call_id: uuid.UUID) -> str:
        """The number a locked call phones (E.164)."""
        return self._fixed[call_id][2]

    def holding(self, sid: str) -> CallState | None:
        """The locked call that has this SID, as any of its attempts'."""
        assert sid in self._locked_sids, "lock(sids=...) first"
        return self._by_sid.get(sid)

    def learn_sid(self, call: CallState, sid: str) -> bool:
        """Record Exotel's SID for `call`; the callbacks that came for it before we knew it are
        applied to the call at `flush()`. False if another call already has that SID."""
        holder = self.holding(sid)
        if holder is not None:
            return holder is call
        assert call.sid is None, "an attempt's SID never changes"
        call.sid = sid
        self._by_sid[sid] = call
        self._learnt.append({"dial_call": call.id, "dial_n": len(call.attempts), "dial_sid": sid})
        self.adopt_orphans(call)
        return True

    def adopt_orphans(self, call: CallState, sid: str | None = None) -> None:
        """Apply, at `flush()`, the stored callbacks that no call had yet for `sid`, one of the
        call's attempts' SIDs (the latest's when None)."""
        sid = sid or call.sid
        assert sid is not None
        assert self._by_sid.get(sid) is call, "lock the call first"
        self._adopting[sid] = call
        for event in self._events:  # received in this very transaction
            if event["sid"] == sid and event["call_id"] is None:
                self._attach(event, call, self._received_of(event))

    def add_callback(self, received: ReceivedCallback) -> dict[str, Any]:
        """Apply a received callback to its call (if there is one yet) and store it at
        `flush()`. The call is found by the id in the callback URL, else by `CallSid`: lock
        both first. Returns the event as it will be stored; its outcome is final after
        `flush()`."""
        callback = received.callback
        sid = callback.call_sid
        if received.kind == RequestKind.PASSTHRU:
            call = self._passthru_call(received)
        elif received.call_id is not None:
            call = self.get(received.call_id)
        else:
            call = self.holding(sid) if sid else None
        # One for no call is kept trimmed: anybody with the account-wide URL can send them.
        event = _event_row(received if call is not None else received.without_call())
        if call is None:
            reading = received.reading
            if isinstance(reading, Unreadable):
                event["outcome"], event["problem"] = EventOutcome.UNREADABLE, reading.reason
            else:
                event["outcome"] = EventOutcome.UNKNOWN_SID
        elif (
            sid
            and sid != call.sid
            and attempt_of(call, sid) == len(call.attempts)  # no earlier attempt's either
            and (call.sid is not None or not self.learn_sid(call, sid))
        ):
            log.warning(
                "callback for call %s carries another call's SID", call.id, extra=about(call.id)
            )
            event["call_id"], event["outcome"] = call.id, EventOutcome.SID_MISMATCH
        else:
            self._attach(event, call, received)
        self._events.append(event)
        return event

    async def add_answer(
        self,
        call: CallState,
        answer: ReceivedAnswer,
        outcome: EventOutcome,
        *,
        attempt: int | None = None,
    ) -> None:
        """Store, at `flush()`, Exotel's answer to our request about `call` (locked), with
        what applying it did (the caller applied it): received now, by the database's clock.
        It is about the call's latest attempt unless `attempt` names another."""
        details = answer.call
        attempt = attempt or len(call.attempts)
        row = dict.fromkeys(_EVENT_COLUMNS) | {
            "kind": answer.kind,
            "received_at": await self.now(),
            "call_id": call.id,
            "sid": call.sid if attempt == len(call.attempts) else call.attempts[attempt - 1]["sid"],
            "attempt": attempt or None,
            "method": answer.method,
            "payload": answer.payload,
            "outcome": outcome,
            "problem": answer.problem,
        }
        if details is not None:
            raw_time = fitting(details.date_updated_raw, _EVENTS.c.date_updated_raw)
            row |= {
                "status": fitting((details.status or "").lower() or None, _EVENTS.c.status),
                "recording_url": details.recording_url,
                "date_updated": details.date_updated if raw_time else None,
                "date_updated_raw": raw_time,
            }
        self._events.append(row)

    def add_unreadable(self, received: ReceivedCallback, problem: str) -> None:
        """Store `received` as it came, `unreadable` for `problem`, and apply it to nothing:
        what becomes of a callback that cannot be stored as read. It joins the call its URL
        names (lock it first), if there is one."""
        call = self.get(received.call_id) if received.call_id else None
        event = _event_row(received if call is not None else received.without_call(), read=False)
        event["call_id"] = call.id if call else None
        event["outcome"], event["problem"] = EventOutcome.UNREADABLE, problem
        self._events.append(event)

    def _passthru_call(self, received: ReceivedCallback) -> CallState | None:
        """A Passthru's call: by its SID; else by our id in `CustomField`, which is ours only
        for a call placed without a `custom_field` of its own (we sent the id then)."""
        if received.call_id is not None:  # a URL of the call's own, vouched for by its token
            return self.get(received.call_id)
        sid = received.callback.call_sid
        if sid and (call := self.holding(sid)):
            return call
        call_id = received.named_call_id
        call = self.get(call_id) if call_id else None
        if call is not None and self._fixed[call.id][1] is None:
            return call
        return None

    def _attach(self, event: dict[str, Any], call: CallState, received: ReceivedCallback) -> None:
        """Apply what was received to its attempt of `call`: the call's latest, unless its
        SID is an earlier attempt's (or the call waits for its next)."""
        attempt = attempt_of(call, event["sid"])
        reading = received.reading
        if isinstance(reading, Unreadable):
            outcome = EventOutcome.UNREADABLE
            event["problem"] = reading.reason
        elif isinstance(reading, Ignored):
            outcome = EventOutcome.IGNORED
        elif isinstance(reading, InputUpdate):
            outcome = apply_input(call, reading)  # the flow is the call's, whichever attempt
        elif is_latest_live(call, attempt):
            outcome = apply_update(call, reading)
        else:
            outcome = apply_to_attempt(call, attempt, reading)
        event["call_id"], event["outcome"] = call.id, outcome
        event["attempt"] = attempt or None

    @staticmethod
    def _received_of(event: dict[str, Any]) -> ReceivedCallback:
        return ReceivedCallback(
            call_id=None,
            method=event["method"],
            content_type=event["content_type"],
            payload=event["payload"],
            receipt_id=event["receipt_id"],
            received_at=event["received_at"],
            kind=event["kind"],
        )

    async def stored_receipts(self, receipt_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these callbacks are stored already (a spool replay after its commit)."""
        rows = await self._db.execute(self._statements.receipts, {"ids": list(receipt_ids)})
        return set(rows.scalars())

    def changes(self) -> list[Change]:
        """The calls this transaction changed."""
        return [
            Change(CallState(*self._as_locked[call.id]), call)
            for call in self._calls.values()
            if _values_of(call) != self._as_locked[call.id]
        ]

    async def flush(self) -> None:
        """Write everything: stored callbacks attached, new callbacks, the calls' changes and
        the events they are."""
        await self._attach_stored_orphans()
        if self._events:
            await self._db.execute(self._statements.insert_events, self._events)
        if self._learnt:
            await self._db.execute(self._statements.dial_sids, self._learnt)
            self._learnt = []
        if self._calls:
            now = await self.now()
            for call in self._calls.values():
                record_attempt(call, at=now)
        changes = self.changes()
        if changes:
            now = await self.now()
            for change in changes:
                if change.of_the_call:
                    change.after.updated_at = now
            news = outbox.number_events(changes)
            rows = [_call_row(change.after) for change in changes]
            await self._db.execute(self._statements.update_calls, rows)
            await self._queue_recordings(changes, now=now)
            if news:
                await outbox.write_events(self._db, news, now=now)
            for change in changes:
                self._as_locked[change.after.id] = _values_of(change.after)
                _log_change(change)
        self._events = []

    async def _queue_recordings(self, changes: Sequence[Change], *, now: datetime) -> None:
        """The archive's queue follows the recordings' status: a recording that became
        `pending` is due now, one that left it is no longer queued."""
        pending = RecordingStatus.PENDING
        moved = [c for c in changes if c.before.recording_status != c.after.recording_status]
        queued = [
            {"call_id": c.after.id, "due_at": now}
            for c in moved
            if c.after.recording_status == pending
        ]
        done = [c.after.id for c in moved if c.before.recording_status == pending]
        if queued:
            await self._db.execute(self._statements.queue_recordings, queued)
        if done:
            await self._db.execute(self._statements.unqueue_recordings, {"ids": done})

    async def _attach_stored_orphans(self) -> None:
        adopting, self._adopting = self._adopting, {}
        if not adopting:
            return
        rows = await self._db.execute(self._statements.orphans, {"sids": list(adopting)})
        attached = []
        for row in rows.mappings():
            event = dict(row)
            self._attach(event, adopting[event["sid"]], self._received_of(event))
            attached.append(
                {
                    "event_id": event["id"],
                    "call_id": event["call_id"],
                    "outcome": event["outcome"],
                    "attempt": event["attempt"],
                }
            )
        if attached:
            await self._db.execute(self._statements.attach_events, attached)
        self.attached += len(attached)


def _event_row(received: ReceivedCallback, *, read: bool = True) -> dict[str, Any]:
    """The callback's row, with what was read from it unless not `read`."""
    row = {
        "kind": received.kind,
        "receipt_id": received.receipt_id,
        "received_at": received.received_at,
        "call_id": None,
        "sid": None,
        "method": received.method,
        "content_type": received.content_type,
        "payload": received.payload,
        "status": None,
        "event_type": None,
        "recording_url": None,
        "date_updated": None,
        "date_updated_raw": None,
        "outcome": None,
        "problem": None,
        "attempt": None,
    }
    if not read:
        return row
    callback = received.callback
    row["sid"] = callback.call_sid
    if received.kind == RequestKind.STATUS_CALLBACK:  # what it said, parsed
        row |= {
            "status": callback.status,
            "event_type": callback.event_type,
            "recording_url": callback.recording_url,
            "date_updated": callback.date_updated,
            "date_updated_raw": callback.date_updated_raw,
        }
    return row


def _call_row(call: CallState) -> dict[str, Any]:
    row = {name: getattr(call, name) for name in _CHANGING}
    return row | {"call_id": call.id}


def _log_change(change: Change) -> None:
    before, after = change.before, change.after
    if before.status != after.status:
        log.info(
            "call %s: %s -> %s",
            after.id,
            before.status,
            after.status,
            extra=about(after.id, after.sid),
        )


@dataclass(frozen=True)
class _Statements:
    lock: Any
    receipts: Any
    orphans: Any
    insert_events: Any
    attach_events: Any
    update_calls: Any
    dial_sids: Any
    queue_recordings: Any
    unqueue_recordings: Any


@functools.cache
def _statements() -> _Statements:
    """Built once: building a statement costs more than running it for a few rows."""
    calls, events, dials = _CALLS.c, _EVENTS.c, _DIALS.c
    event_columns = [events[name] for name in _EVENT_COLUMNS]
    # By id, by the latest attempt's SID, or by an earlier attempt's (in `dial`): a union, each
    # part read from its own index (an OR with a subquery would read the whole table). `dial`
    # is searched only for the SIDs no call has as its latest: most callbacks are about the
    # latest attempt, and each search of an index of Exotel's random SIDs reads a page of its
    # own (an empty array searches none).
    latest = select(calls.id, calls.sid).where(one_of(calls.sid, "sids")).cte("latest")
    sids = bindparam("sids", type_=ARRAY(calls.sid.type))
    earlier = select(func.unnest(sids)).except_(select(latest.c.sid)).scalar_subquery()
    wanted = union_all(
        select(func.unnest(bindparam("ids", type_=ARRAY(calls.id.type)))),
        select(latest.c.id),
        select(dials.call_id).where(dials.sid == any_(func.array(earlier))),
    )
    return _Statements(
        lock=select(
            *(calls[name] for name in STATE_COLUMNS),
            calls.app_id,
            calls.custom_field,
            calls.from_number,
        )
        .where(among(calls.id, wanted))
        .order_by(calls.id)
        .with_for_update(),
        receipts=select(events.receipt_id).where(one_of(events.receipt_id, "ids")),
        orphans=select(events.id, *event_columns)
        .where(one_of(events.sid, "sids"), events.call_id.is_(None))
        .order_by(events.id)
        .with_for_update(),
        insert_events=insert(_EVENTS),
        attach_events=update(_EVENTS)
        .where(events.id == bindparam("event_id"))
        .values(
            call_id=bindparam("call_id"),
            outcome=bindparam("outcome"),
            attempt=bindparam("attempt"),
        ),
        update_calls=update(_CALLS)
        .where(calls.id == bindparam("call_id"))
        .values({name: bindparam(name) for name in _CHANGING}),
        dial_sids=update(_DIALS)
        .where(dials.call_id == bindparam("dial_call"), dials.n == bindparam("dial_n"))
        .values(sid=bindparam("dial_sid")),
        queue_recordings=upsert(_JOBS).on_conflict_do_nothing(),
        unqueue_recordings=delete(_JOBS).where(one_of(_JOBS.c.call_id, "ids")),
    )
