"""`POST /status-callback`: Exotel's StatusCallback webhook."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from app.api.deps import CallbackCallId, SessionDep
from app.api.errors import ApiError
from app.calls import service
from app.db.models import EventOutcome

router = APIRouter(tags=["status callbacks"])

_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class CallbackAck(BaseModel):
    event_id: int
    outcome: EventOutcome


@router.post(
    "/status-callback",
    summary="Exotel's StatusCallback (multipart, urlencoded or JSON)",
    description=(
        "Authenticated by the `call_id` and `token` of the URL exocall gave Exotel. Every "
        "accepted callback is stored before the 200 is sent, whatever it did to its call."
    ),
)
async def status_callback(
    request: Request, call_id: CallbackCallId, session: SessionDep
) -> CallbackAck:
    media_type, payload = await _read_payload(request)
    if not payload.get("CallSid") and call_id is None:
        raise ApiError(422, "validation_error", "CallSid: required", details=[_missing("CallSid")])
    event = await service.record_status_callback(
        session, call_id=call_id, content_type=media_type, payload=payload
    )
    await session.commit()
    return CallbackAck(event_id=event.id, outcome=event.outcome)


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
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise ApiError(422, "validation_error", "body: must be a JSON object")
        return media_type, payload
    raise ApiError(
        415,
        "unsupported_media_type",
        "send multipart/form-data, application/x-www-form-urlencoded or application/json",
    )


def _missing(field: str) -> dict[str, str]:
    return {"field": field, "message": "required", "type": "missing"}
