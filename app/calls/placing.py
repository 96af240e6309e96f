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

from app.calls.errors import IdempotencyConflict, InvalidField
from app.config import ExotelSettings
from app.db.clock import db_now
from app.db.models import Batch, Call, CallStatus
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


def fingerprint(request: CallRequest) -> str:
    """Identifies a request's content, once normalised (`09052161119` and `+919052161119` are
    the same number), so a repeat can be told from a conflicting reuse of its key. (The same
    digest as before the domain had its own request type: stored keys stay valid.)"""
    content = {
        "from": request.from_number,
        "app_id": request.app_id,
        "flow_url": request.flow_url,
        "caller_id": request.caller_id,
        "time_limit": request.time_limit,
        "time_out": request.time_out,
        "custom_field": request.custom_field,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


async def queue_calls(
    session: AsyncSession,
    *,
    requests: Sequence[CallRequest],
    settings: ExotelSettings,
    batch_id: uuid.UUID | None = None,
) -> list[tuple[Call, bool]]:
    """Store calls as `queued`, in the caller's transaction: the intent is recorded before
    Exotel is asked to dial. Returns each call, and whether it is new: a call whose
    idempotency key is already known is the stored call, never a second one.

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
        row = _row(request, settings, now) | {
            "request_fingerprint": print_ if key else None,
            "batch_id": batch_id,
        }
        rows.append(row)
        ids.append(row["id"])
        if key is not None:
            seen[key] = (print_, row["id"])

    statement = insert(Call).on_conflict_do_nothing(index_elements=[Call.idempotency_key])
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


def _row(request: CallRequest, settings: ExotelSettings, now: datetime) -> dict[str, Any]:
    caller_id = request.caller_id or settings.caller_id
    if not caller_id:
        raise InvalidField("caller_id", "required when EXOTEL_CALLER_ID is not configured")
    flow_url = request.flow_url or settings.flow_url_template.format(
        account_sid=settings.account, app_id=request.app_id
    )
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
        "idempotency_key": request.idempotency_key,
        "send_tries": 0,
        "event_sequence": 0,
        # Calls queued together share their time; the queue takes them oldest first.
        "created_at": now,
        "updated_at": now,
    }


async def create_batch(
    session: AsyncSession, *, requests: Sequence[CallRequest], settings: ExotelSettings
) -> tuple[Batch, list[tuple[Call, bool]]]:
    batch = Batch(id=uuid.uuid4(), size=len(requests), created_at=await db_now(session))
    session.add(batch)
    await session.flush()
    return batch, await queue_calls(
        session, requests=requests, settings=settings, batch_id=batch.id
    )
