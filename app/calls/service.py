"""Calls and their status callbacks: creating, finding, listing, and recording what Exotel says.

Functions here take the caller's session and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.calls.errors import BatchNotFound, CallNotFound, IdempotencyConflict, InvalidField
from app.calls.phone import mask
from app.calls.ratelimit import THROTTLE
from app.calls.schemas import CallCreate
from app.calls.state import StatusUpdate, apply_update
from app.config import Settings
from app.db.clock import clock
from app.db.models import (
    Batch,
    Call,
    CallEvent,
    CallStatus,
    EventOutcome,
    ExotelRequest,
    Throttle,
    utcnow,
)
from app.db.session import insert_for
from app.exotel.wire import StatusCallback, parse_status_callback
from app.logs import about

log = logging.getLogger(__name__)

# Statuses a callback can carry; an `answered` event says `in-progress`.
_CALLBACK_STATUSES = {
    status.value: status
    for status in (
        CallStatus.IN_PROGRESS,
        CallStatus.COMPLETED,
        CallStatus.FAILED,
        CallStatus.BUSY,
        CallStatus.NO_ANSWER,
        CallStatus.CANCELED,
    )
}
_KNOWN_EVENT_TYPES = {None, "terminal", "answered"}
# Our ids, and Exotel's SIDs (opaque, about 32 characters).
_PLAUSIBLE_REF = re.compile(r"[\w-]{1,64}")


@dataclass(frozen=True)
class NewCall:
    request: CallCreate
    idempotency_key: str | None = None


def fingerprint(request: CallCreate) -> str:
    """Identifies a request's content, once normalised (`09052161119` and `+919052161119` are
    the same number), so a repeat can be told from a conflicting reuse of its key."""
    content = request.model_dump(mode="json", by_alias=True, exclude={"idempotency_key"})
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


async def queue_calls(
    session: AsyncSession,
    *,
    new_calls: Sequence[NewCall],
    settings: Settings,
    batch_id: uuid.UUID | None = None,
) -> list[tuple[Call, bool]]:
    """Store calls as `queued`, in the caller's transaction: the intent is recorded before
    Exotel is asked to dial. Returns each call, and whether it is new: a call whose
    idempotency key is already known is the stored call, never a second one.

    Concurrent requests with one key, on any replica, meet at the unique index: exactly one
    insert wins, and the others read the winner.
    """
    rows: list[dict[str, Any]] = []
    seen: dict[str, tuple[str, uuid.UUID]] = {}  # key -> (fingerprint, id), within this request
    ids: list[uuid.UUID] = []
    for index, new_call in enumerate(new_calls):
        key, print_ = new_call.idempotency_key, fingerprint(new_call.request)
        if key is not None and key in seen:
            if seen[key][0] != print_:
                raise IdempotencyConflict(key, call_id=None, index=index)
            ids.append(seen[key][1])
            continue
        row = _row(new_call.request, settings) | {
            "idempotency_key": key,
            "request_fingerprint": print_ if key else None,
            "batch_id": batch_id,
        }
        rows.append(row)
        ids.append(row["id"])
        if key is not None:
            seen[key] = (print_, row["id"])

    statement = insert_for(session)(Call).on_conflict_do_nothing(
        index_elements=[Call.idempotency_key]
    )
    inserted = set(await session.scalars(statement.returning(Call.id), rows)) if rows else set()
    # Keys that were already taken: the stored call stands in for the new one.
    taken = {row["idempotency_key"]: row["id"] for row in rows if row["id"] not in inserted}
    found = select(Call).where(or_(Call.id.in_(inserted), Call.idempotency_key.in_(list(taken))))
    calls = {call.id: call for call in await session.scalars(found)}
    for key, wanted_id in taken.items():
        stored = next(call for call in calls.values() if call.idempotency_key == key)
        if stored.request_fingerprint != seen[key][0]:
            raise IdempotencyConflict(key, call_id=stored.id, index=ids.index(wanted_id))
        ids = [stored.id if call_id == wanted_id else call_id for call_id in ids]
    for call_id in inserted:
        log.info(
            "call %s queued to %s",
            call_id,
            mask(calls[call_id].from_number),
            extra=about(call_id),
        )
    return [(calls[call_id], call_id in inserted) for call_id in ids]


def _row(request: CallCreate, settings: Settings) -> dict[str, Any]:
    caller_id = request.caller_id or settings.exotel_caller_id
    if not caller_id:
        raise InvalidField("caller_id", "required when EXOTEL_CALLER_ID is not configured")
    flow_url = str(request.flow_url) if request.flow_url else None
    if flow_url is None:
        flow_url = settings.exotel_flow_url_template.format(
            account_sid=settings.account_sid, app_id=request.app_id
        )
    now = utcnow()
    return {
        "id": uuid.uuid4(),
        "status": CallStatus.QUEUED,
        "from_number": request.from_number,
        "caller_id": caller_id,
        "app_id": request.app_id,
        "flow_url": flow_url,
        "custom_field": request.custom_field,
        "time_limit": request.time_limit,
        "time_out": request.time_out,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }


async def create_batch(
    session: AsyncSession, *, new_calls: Sequence[NewCall], settings: Settings
) -> tuple[Batch, list[tuple[Call, bool]]]:
    batch = Batch(id=uuid.uuid4(), size=len(new_calls))
    session.add(batch)
    await session.flush()
    return batch, await queue_calls(
        session, new_calls=new_calls, settings=settings, batch_id=batch.id
    )


async def batch_summary(session: AsyncSession, batch_id: uuid.UUID) -> tuple[Batch, dict[str, int]]:
    batch = await session.get(Batch, batch_id)
    if batch is None:
        raise BatchNotFound(batch_id)
    counts = await session.execute(
        select(Call.status, func.count()).where(Call.batch_id == batch_id).group_by(Call.status)
    )
    return batch, {str(status): count for status, count in counts}


@dataclass(frozen=True)
class Overview:
    """Every call at a glance: what operators watch."""

    calls_by_status: dict[str, int]
    queue_depth: int
    oldest_queued_at: datetime | None


async def overview(session: AsyncSession) -> Overview:
    counts = await session.execute(select(Call.status, func.count()).group_by(Call.status))
    by_status = {str(status): count for status, count in counts}
    oldest = await session.scalar(
        select(func.min(Call.created_at)).where(Call.status == CallStatus.QUEUED)
    )
    return Overview(
        calls_by_status=by_status,
        queue_depth=by_status.get(CallStatus.QUEUED, 0),
        oldest_queued_at=oldest,
    )


async def find_call(session: AsyncSession, ref: str) -> Call:
    """A call by our id or by Exotel's SID."""
    if not _PLAUSIBLE_REF.fullmatch(ref):
        raise CallNotFound(ref)  # and the database never sees it (PostgreSQL refuses NULs)
    condition = Call.sid == ref
    with contextlib.suppress(ValueError):  # not a UUID: only a SID can match
        condition = or_(Call.id == uuid.UUID(ref), condition)
    call = (await session.scalars(select(Call).where(condition))).first()
    if call is None:
        raise CallNotFound(ref)
    return call


async def lock_call(session: AsyncSession, call_id: uuid.UUID) -> Call | None:
    """The call, locked for this transaction (PostgreSQL; SQLite's BEGIN IMMEDIATE locks all)."""
    query = select(Call).where(Call.id == call_id).with_for_update()
    return (await session.scalars(query)).first()


async def list_calls(
    session: AsyncSession,
    *,
    statuses: Sequence[CallStatus] = (),
    from_number: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    batch_id: uuid.UUID | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Call], str | None]:
    """A page of calls, newest first, and the cursor of the next page (None at the end)."""
    query = select(Call)
    if statuses:
        query = query.where(Call.status.in_(statuses))
    if from_number:
        query = query.where(Call.from_number == from_number)
    if created_after:
        query = query.where(Call.created_at >= created_after)
    if created_before:
        query = query.where(Call.created_at < created_before)
    if batch_id:
        query = query.where(Call.batch_id == batch_id)
    if cursor:
        after_created, after_id = _decode_cursor(cursor)
        query = query.where(
            or_(
                Call.created_at < after_created,
                and_(Call.created_at == after_created, Call.id < after_id),
            )
        )
    query = query.order_by(Call.created_at.desc(), Call.id.desc()).limit(limit + 1)
    calls = list(await session.scalars(query))
    if len(calls) <= limit:
        return calls, None
    last = calls[limit - 1]
    return calls[:limit], _encode_cursor(last)


def _encode_cursor(call: Call) -> str:
    position = json.dumps([call.created_at.isoformat(), str(call.id)])
    return base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    invalid = InvalidField("cursor", "not a cursor this service gave out")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, call_id = json.loads(raw)
        position = datetime.fromisoformat(created_at), uuid.UUID(call_id)
    except (binascii.Error, ValueError, TypeError, RecursionError) as exc:
        raise invalid from exc
    if position[0].tzinfo is None:
        raise invalid
    return position


async def list_events(session: AsyncSession, *, call_id: uuid.UUID) -> list[CallEvent]:
    query = select(CallEvent).where(CallEvent.call_id == call_id).order_by(CallEvent.id)
    return list(await session.scalars(query))


# --- status callbacks ---------------------------------------------------------------------


def update_from_callback(callback: StatusCallback) -> StatusUpdate | None:
    """The status update a callback carries, or None if it carries none we act on."""
    status = status_from_exotel(callback.status)
    if status is None or callback.event_type not in _KNOWN_EVENT_TYPES:
        return None
    return StatusUpdate(
        status=status,
        date_updated=callback.date_updated,
        date_updated_raw=callback.date_updated_raw,
        recording_url=callback.recording_url,
        conversation_duration=callback.conversation_duration,
    )


@dataclass(frozen=True)
class ReceivedCallback:
    """A status callback as it was received, before it is stored."""

    call_id: uuid.UUID | None  # from the callback URL, vouched for by its token
    content_type: str
    payload: dict[str, Any]
    receipt_id: uuid.UUID = field(default_factory=uuid.uuid4)
    received_at: datetime = field(default_factory=utcnow)


async def record_status_callback(session: AsyncSession, received: ReceivedCallback) -> CallEvent:
    """Store one received callback and apply it to its call, if the call is known. Storing the
    same receipt again (a replay from the spool) returns the event already stored.

    The call is found by the id in the callback URL, else by `CallSid`. A callback can arrive
    before Exotel's answer to `Calls/connect`: then it is what tells us the call's SID.
    """
    stored = await session.scalar(
        select(CallEvent).where(CallEvent.receipt_id == received.receipt_id)
    )
    if stored is not None:
        return stored
    callback = parse_status_callback(received.payload)
    call = await lock_call(session, received.call_id) if received.call_id else None
    if call is None and callback.call_sid:
        sid_query = select(Call).where(Call.sid == callback.call_sid).with_for_update()
        call = (await session.scalars(sid_query)).first()
    event = CallEvent(
        receipt_id=received.receipt_id,
        received_at=received.received_at,
        sid=callback.call_sid,
        content_type=received.content_type,
        payload=received.payload,
        status=callback.status,
        event_type=callback.event_type,
        recording_url=callback.recording_url,
        date_updated=callback.date_updated,
        date_updated_raw=callback.date_updated_raw,
        outcome=EventOutcome.UNKNOWN_SID,
    )
    if call is not None:
        event.call_id = call.id
        event.outcome = await _apply_callback(session, call, callback)
    session.add(event)
    await session.flush()
    log.info(
        "status callback for call %s sid %s: %s -> %s",
        event.call_id,
        callback.call_sid,
        callback.status,
        event.outcome,
        extra=about(event.call_id, callback.call_sid),
    )
    return event


async def _apply_callback(
    session: AsyncSession, call: Call, callback: StatusCallback
) -> EventOutcome:
    sid = callback.call_sid
    if (
        sid
        and call.sid != sid
        and (call.sid is not None or not await assign_sid(session, call, sid))
    ):
        log.warning(
            "callback for call %s carries another call's SID", call.id, extra=about(call.id)
        )
        return EventOutcome.SID_MISMATCH
    update = update_from_callback(callback)
    return apply_update(call, update) if update else EventOutcome.IGNORED


async def assign_sid(session: AsyncSession, call: Call, sid: str) -> bool:
    """Record Exotel's SID for `call`, then apply callbacks that arrived for it before we knew
    it. False if another call already has that SID."""
    taken = await session.scalar(select(Call.id).where(Call.sid == sid, Call.id != call.id))
    if taken is not None:
        return False
    call.sid = sid
    await attach_orphans(session, call)
    return True


async def attach_orphans(session: AsyncSession, call: Call) -> int:
    """Apply, oldest first, the stored callbacks for the call's SID that no call had yet."""
    orphans = select(CallEvent).where(CallEvent.sid == call.sid, CallEvent.call_id.is_(None))
    attached = 0
    for event in await session.scalars(orphans.order_by(CallEvent.id).with_for_update()):
        update = update_from_callback(parse_status_callback(event.payload))
        event.call_id = call.id
        event.outcome = apply_update(call, update) if update else EventOutcome.IGNORED
        attached += 1
    return attached


def status_from_exotel(status: str | None) -> CallStatus | None:
    """Our status for a status as Exotel names it, in a callback or in call details."""
    status = (status or "").lower()
    # Call details say `queued` or `ringing` while Exotel is still dialling.
    return _CALLBACK_STATUSES.get(
        CallStatus.IN_PROGRESS.value if status in ("queued", "ringing") else status
    )


# --- the status page: read only -----------------------------------------------------------


async def count_calls_by_status(
    session: AsyncSession, *, created_after: datetime
) -> dict[str, int]:
    """Calls created since `created_after`, by status."""
    counts = await session.execute(
        select(Call.status, func.count())
        .where(Call.created_at >= created_after)
        .group_by(Call.status)
    )
    return {str(status): count for status, count in counts}


async def exotel_requests_granted(
    session: AsyncSession, *, within_seconds: float
) -> dict[str, int]:
    """Requests granted from the account's budget in the last `within_seconds`, by kind
    (`connect`, `lookup`), on the database's clock: the one the grants are logged at."""
    counts = await session.execute(
        select(ExotelRequest.kind, func.count())
        .where(ExotelRequest.at > clock(session) - within_seconds)
        .group_by(ExotelRequest.kind)
    )
    return {str(kind): count for kind, count in counts}


async def rate_limit_paused_for(session: AsyncSession) -> float:
    """How many more seconds every replica is held back after Exotel answered 429 (0: none)."""
    remaining = await session.scalar(
        select(Throttle.paused_until - clock(session)).where(Throttle.name == THROTTLE)
    )
    return max(float(remaining or 0.0), 0.0)


async def recent_batches(
    session: AsyncSession, *, limit: int
) -> list[tuple[Batch, dict[str, int]]]:
    """The newest batches, newest first, each with its calls counted by status."""
    query = select(Batch).order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit)
    batches = list(await session.scalars(query))
    counts: dict[uuid.UUID | None, dict[str, int]] = {batch.id: {} for batch in batches}
    if batches:
        rows = await session.execute(
            select(Call.batch_id, Call.status, func.count())
            .where(Call.batch_id.in_(list(counts)))
            .group_by(Call.batch_id, Call.status)
        )
        for batch_id, status, count in rows:
            counts[batch_id][str(status)] = count
    return [(batch, counts[batch.id]) for batch in batches]
