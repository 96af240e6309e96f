"""Placing calls: what a caller asks for, stored as `queued` before anything is sent.

Functions here take the caller's session and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.calls.errors import CallEnded, IdempotencyConflict, InvalidField
from app.calls.opt_outs import opted_out
from app.calls.policy import Retry, Window
from app.calls.state import OPTED_OUT, hold, stop
from app.calls.state import cancel as cancel_call
from app.calls.store import CallStore
from app.config import ExotelSettings
from app.db.clock import db_now
from app.db.models import Batch, Call, CallStatus
from app.ids import new_id
from app.logs import about, mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallRequest:
    """Whom to phone, and which Exotel flow to connect them to (validated, normalised)."""

    from_number: str  # E.164
    app_id: str | None = None
    flow_url: str | None = None
    caller_id: str | None = None
    time_limit: int | None = None
    time_out: int | None = None
    custom_field: str | None = None
    idempotency_key: str | None = None
    # The policy (`app.calls.policy`): none, one attempt at once, at any hour.
    not_before: datetime | None = None
    expires_at: datetime | None = None
    retry: Retry | None = None
    window: Window | None = None


def fingerprint(request: CallRequest) -> str:
    """Identifies a request's content, once normalised (`09052161119` and `+919052161119` are
    the same number), so a repeat can be told from a conflicting reuse of its key. (The same
    digest as before the domain had its own request type: stored keys stay valid.)"""
    content: dict[str, Any] = {
        "from": request.from_number,
        "app_id": request.app_id,
        "flow_url": request.flow_url,
        "caller_id": request.caller_id,
        "time_limit": request.time_limit,
        "time_out": request.time_out,
        "custom_field": request.custom_field,
    }
    policy: dict[str, Any] = {
        "not_before": request.not_before.isoformat() if request.not_before else None,
        "expires_at": request.expires_at.isoformat() if request.expires_at else None,
        "retry": request.retry.as_json() if request.retry else None,
        "window": request.window.as_json() if request.window else None,
    }
    content |= {name: value for name, value in policy.items() if value is not None}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


async def queue_calls(
    session: AsyncSession,
    *,
    requests: Sequence[CallRequest],
    settings: ExotelSettings,
    window: Window | None = None,
    batch_id: uuid.UUID | None = None,
) -> list[tuple[Call, bool]]:
    """Store calls as `queued`, in the caller's transaction: the intent is recorded before
    Exotel is asked to dial. Returns each call, and whether it is new: a call whose
    idempotency key is already known is the stored call, never a second one. A call to be
    dialled later waits, `scheduled` (`window`: for calls that name none); one to an opted-out
    number is `rejected`, never dialled.

    Concurrent requests with one key, on any replica, meet at the unique index: exactly one
    insert wins, and the others read the winner.
    """
    now = await db_now(session)
    rows: list[dict[str, Any]] = []
    seen: dict[str, tuple[str, uuid.UUID]] = {}  # key -> (fingerprint, id), within this request
    ids: list[uuid.UUID] = []
    for index, request in enumerate(requests):
        key, print_ = request.idempotency_key, fingerprint(request)
        if key is not None and key in seen:
            if seen[key][0] != print_:
                raise IdempotencyConflict(key, call_id=None, index=index)
            ids.append(seen[key][1])
            continue
        row = _row(request, settings, now, window) | {
            "request_fingerprint": print_ if key else None,
            "batch_id": batch_id,
        }
        rows.append(row)
        ids.append(row["id"])
        if key is not None:
            seen[key] = (print_, row["id"])

    statement = insert(Call).on_conflict_do_nothing(
        index_elements=[Call.idempotency_key], index_where=Call.idempotency_key.is_not(None)
    )
    inserted = set(await session.scalars(statement.returning(Call.id), rows)) if rows else set()
    await _hold_back([row for row in rows if row["id"] in inserted], session=session, now=now)
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


async def _hold_back(rows: list[dict[str, Any]], *, session: AsyncSession, now: datetime) -> None:
    """The new calls that may not be dialled now: to opted-out numbers (`rejected`), not before
    a time or outside their window (`scheduled`), or never in time (`expired`). Through the
    one write path, which tells subscribers."""
    refused_numbers = await opted_out(session, [row["from_number"] for row in rows])
    later = [row for row in rows if row["window"] or (row["not_before"] or now) > now]
    refused = [row for row in rows if row["from_number"] in refused_numbers]
    if not later and not refused:
        return
    store = await CallStore.of(session)
    await store.lock(ids=[row["id"] for row in later + refused])
    for row in later + refused:
        call = store.get(row["id"])
        assert call is not None
        if row["from_number"] in refused_numbers:
            stop(call, CallStatus.REJECTED, at=now, failure=OPTED_OUT)
        elif call.status == CallStatus.QUEUED:
            hold(call, now=now, earliest=max(now, row["not_before"] or now))
    await store.flush()


def _row(
    request: CallRequest, settings: ExotelSettings, now: datetime, default_window: Window | None
) -> dict[str, Any]:
    caller_id = request.caller_id or settings.caller_id
    if not caller_id:
        raise InvalidField("caller_id", "required when EXOTEL_CALLER_ID is not configured")
    flow_url = request.flow_url or settings.flow_url_template.format(
        account_sid=settings.account, app_id=request.app_id
    )
    return {
        "id": new_id(),
        "status": CallStatus.QUEUED,
        "from_number": request.from_number,
        "caller_id": caller_id,
        "app_id": request.app_id,
        "flow_url": flow_url,
        "custom_field": request.custom_field,
        "time_limit": request.time_limit,
        "time_out": request.time_out,
        "idempotency_key": request.idempotency_key,
        "not_before": request.not_before,
        "expires_at": request.expires_at,
        "retry": request.retry.as_json() if request.retry else None,
        "window": window.as_json() if (window := request.window or default_window) else None,
        "max_attempts": request.retry.max_attempts if request.retry else 1,
        "attempts": [],
        "send_tries": 0,
        "event_sequence": 0,
        # Calls queued together share their time; the queue takes them oldest first.
        "created_at": now,
        "updated_at": now,
    }


async def cancel(session: AsyncSession, call: Call) -> Call:
    """Cancel `call`: no attempt is made after now (`app.calls.state.cancel`). The call as it
    is then; CallEnded if it had ended."""
    store = await CallStore.of(session)
    await store.lock(ids=[call.id])
    state = store.get(call.id)
    assert state is not None
    if not cancel_call(state, at=await store.now()):
        raise CallEnded(call)
    await store.flush()
    return await session.get_one(Call, call.id, populate_existing=True)


async def create_batch(
    session: AsyncSession,
    *,
    requests: Sequence[CallRequest],
    settings: ExotelSettings,
    window: Window | None = None,
) -> tuple[Batch, list[tuple[Call, bool]]]:
    batch = Batch(id=new_id(), size=len(requests), created_at=await db_now(session))
    session.add(batch)
    await session.flush()
    return batch, await queue_calls(
        session, requests=requests, settings=settings, window=window, batch_id=batch.id
    )
