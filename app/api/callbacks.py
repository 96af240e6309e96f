"""`POST /status-callback`: Exotel's StatusCallback webhook."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from app.api.deps import CallbackCallId, ServicesDep, SessionDep
from app.api.errors import ApiError
from app.calls import service
from app.calls.service import ReceivedCallback
from app.db.models import EventOutcome
from app.db.session import is_database_down
from app.services import Services

log = logging.getLogger(__name__)

router = APIRouter(tags=["status callbacks"])

_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class CallbackAck(BaseModel):
    receipt_id: uuid.UUID
    event_id: int | None = Field(description="Null when the callback was spooled.")
    outcome: EventOutcome | None = Field(description="What it did; null when spooled.")
    spooled: bool = Field(
        False, description="The database was unreachable: kept on disk, stored once it is back."
    )


@router.post(
    "/status-callback",
    summary="Exotel's StatusCallback (multipart, urlencoded or JSON)",
    description=(
        "Authenticated by the `call_id` and `token` of the URL exocall gave Exotel. Every "
        "accepted callback is stored before the 200 is sent, whatever it did to its call."
    ),
)
async def status_callback(
    request: Request, call_id: CallbackCallId, session: SessionDep, services: ServicesDep
) -> CallbackAck:
    media_type, payload = await _read_payload(request)
    _check_payload(payload)
    if not payload.get("CallSid") and call_id is None:
        raise _invalid("CallSid", "required", "missing")
    received = ReceivedCallback(call_id=call_id, content_type=media_type, payload=payload)
    try:
        event = await service.record_status_callback(session, received)
        await session.commit()
    except Exception as exc:
        if not is_database_down(exc):
            raise
        await _spool(services, received)
        return CallbackAck(
            receipt_id=received.receipt_id, event_id=None, outcome=None, spooled=True
        )
    return CallbackAck(receipt_id=received.receipt_id, event_id=event.id, outcome=event.outcome)


async def _spool(services: Services, received: ReceivedCallback) -> None:
    log.warning("database unreachable: callback %s spooled", received.receipt_id)
    try:
        await services.spool.put(received)
    except OSError:
        log.exception("callback %s could not be spooled either", received.receipt_id)
        # Nothing kept it: Exotel must send it again.
        raise ApiError(503, "unavailable", "cannot store the callback now; retry") from None


async def _read_payload(request: Request) -> tuple[str, dict[str, Any]]:
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type in _FORM_TYPES:
        form = await request.form()
        # Exotel sends plain fields only; a file part would not be one of its fields.
        return media_type, {
            key: value for key, value in form.multi_items() if isinstance(value, str)
        }
    if media_type == "application/json":
        try:
            payload = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise ApiError(422, "validation_error", "body: must be a JSON object")
        return media_type, payload
    raise ApiError(
        415,
        "unsupported_media_type",
        "send multipart/form-data, application/x-www-form-urlencoded or application/json",
    )


# Exotel's values are short; anything longer is not Exotel (and would not fit the columns).
_MAX_LENGTHS = {"CallSid": 64, "Status": 32, "EventType": 32, "DateUpdated": 32}


def _check_payload(payload: dict[str, Any]) -> None:
    for field, limit in _MAX_LENGTHS.items():
        value = payload.get(field)
        if value is not None and len(str(value)) > limit:
            raise _invalid(field, f"at most {limit} characters", "string_too_long")
    try:
        has_nul = _has_nul(payload)
    except RecursionError:
        raise _invalid("body", "nested too deeply", "value_error") from None
    if has_nul:
        # PostgreSQL stores no NUL character in text or JSON; Exotel never sends one.
        raise _invalid("body", "NUL characters are not accepted", "value_error")


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def _invalid(field: str, message: str, kind: str) -> ApiError:
    details = [{"field": field, "message": message, "type": kind}]
    return ApiError(422, "validation_error", f"{field}: {message}", details=details)
