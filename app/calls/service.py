"""Calls and their status callbacks: creating, finding, listing, and recording what Exotel says.

Functions here take the caller's session and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.calls.errors import CallNotFound, InvalidField
from app.calls.phone import mask
from app.calls.schemas import CallCreate
from app.calls.state import StatusUpdate, apply_update
from app.config import Settings
from app.db.models import Call, CallEvent, CallStatus, EventOutcome
from app.exotel.wire import StatusCallback, parse_status_callback

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


async def create_call(session: AsyncSession, *, request: CallCreate, settings: Settings) -> Call:
    """Store a new call as `queued`: the intent is recorded before Exotel is asked to dial."""
    caller_id = request.caller_id or settings.exotel_caller_id
    if not caller_id:
        raise InvalidField("caller_id", "required when EXOTEL_CALLER_ID is not configured")
    flow_url = str(request.flow_url) if request.flow_url else None
    if flow_url is None:
        flow_url = settings.exotel_flow_url_template.format(
            account_sid=settings.account_sid, app_id=request.app_id
        )
    call = Call(
        id=uuid.uuid4(),
        status=CallStatus.QUEUED,
        from_number=request.from_number,
        caller_id=caller_id,
        app_id=request.app_id,
        flow_url=flow_url,
        custom_field=request.custom_field,
        time_limit=request.time_limit,
        time_out=request.time_out,
    )
    session.add(call)
    await session.flush()
    log.info("call %s queued to %s", call.id, mask(call.from_number))
    return call


async def find_call(session: AsyncSession, ref: str, *, for_update: bool = False) -> Call:
    """A call by our id or by Exotel's SID."""
    condition = Call.sid == ref
    with contextlib.suppress(ValueError):  # not a UUID: only a SID can match
        condition = or_(Call.id == uuid.UUID(ref), condition)
    query = select(Call).where(condition)
    call = (await session.scalars(query.with_for_update() if for_update else query)).first()
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
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, call_id = json.loads(raw)
        return datetime.fromisoformat(created_at), uuid.UUID(call_id)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidField("cursor", "not a cursor this service gave out") from exc


async def list_events(session: AsyncSession, *, call_id: uuid.UUID) -> list[CallEvent]:
    query = select(CallEvent).where(CallEvent.call_id == call_id).order_by(CallEvent.id)
    return list(await session.scalars(query))


# --- status callbacks ---------------------------------------------------------------------


def update_from_callback(callback: StatusCallback) -> StatusUpdate | None:
    """The status update a callback carries, or None if it carries none we act on."""
    status = _CALLBACK_STATUSES.get(callback.status or "")
    if status is None or callback.event_type not in _KNOWN_EVENT_TYPES:
        return None
    return StatusUpdate(
        status=status,
        date_updated=callback.date_updated,
        date_updated_raw=callback.date_updated_raw,
        recording_url=callback.recording_url,
        conversation_duration=callback.conversation_duration,
    )


async def record_status_callback(
    session: AsyncSession,
    *,
    call_id: uuid.UUID | None,
    content_type: str,
    payload: Mapping[str, Any],
) -> CallEvent:
    """Store one received callback and apply it to its call, if the call is known.

    The call is found by the id in the callback URL, else by `CallSid`. A callback can arrive
    before Exotel's answer to `Calls/connect`: then it is what tells us the call's SID.
    """
    callback = parse_status_callback(payload)
    call = await lock_call(session, call_id) if call_id else None
    if call is None and callback.call_sid:
        sid_query = select(Call).where(Call.sid == callback.call_sid).with_for_update()
        call = (await session.scalars(sid_query)).first()
    event = CallEvent(
        sid=callback.call_sid,
        content_type=content_type,
        payload=dict(payload),
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
        log.warning("callback for call %s carries another call's SID", call.id)
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
    orphans = select(CallEvent).where(CallEvent.sid == sid, CallEvent.call_id.is_(None))
    for event in await session.scalars(orphans.order_by(CallEvent.id).with_for_update()):
        update = update_from_callback(parse_status_callback(event.payload))
        event.call_id = call.id
        event.outcome = apply_update(call, update) if update else EventOutcome.IGNORED
    return True
