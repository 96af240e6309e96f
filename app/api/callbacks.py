"""`POST /status-callback`: Exotel's StatusCallback webhook."""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import (
    ApiError,
    api_error_response,
    error_response,
    http_error_response,
    refusals,
)
from app.api.forms import boundary_of, parse_text_fields
from app.calls.callback_auth import verify
from app.calls.schemas import CALL_EXAMPLE
from app.calls.service import ReceivedCallback
from app.config import Settings
from app.db.models import EventOutcome
from app.db.session import is_database_down
from app.services import Services

log = logging.getLogger(__name__)

router = APIRouter(tags=["status callbacks"])

_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class CallbackAck(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "receipt_id": "2751a23d-306b-47ec-9735-9527b08858b8",
                    "event_id": 1,
                    "outcome": "applied",
                    "spooled": False,
                }
            ]
        }
    )

    receipt_id: uuid.UUID
    event_id: int | None = Field(description="Null when the callback was spooled.")
    outcome: EventOutcome | None = Field(description="What it did; null when spooled.")
    spooled: bool = Field(
        False, description="The database was unreachable: kept on disk, stored once it is back."
    )


PATH = "/status-callback"

# Exotel's fields (shared/exotel.md), documented for readers and for the fuzz: the handler
# reads the body itself, whatever its encoding, and keeps every field as received.
_CALLBACK_FIELDS = {
    "type": "object",
    "properties": {
        "CallSid": {"type": "string", "maxLength": 64},
        "Status": {"type": "string", "enum": ["completed", "failed", "busy", "no-answer"]},
        "RecordingUrl": {"type": "string"},
        "DateUpdated": {"type": "string", "description": "Exotel's clock (IST), no offset"},
        "EventType": {"type": "string", "enum": ["terminal", "answered"]},
    },
    "required": ["CallSid", "Status"],
    "additionalProperties": True,
}
_CALLBACK_EXAMPLE = {
    "CallSid": CALL_EXAMPLE["sid"],
    "Status": "completed",
    "RecordingUrl": CALL_EXAMPLE["recording_url"],
    "DateUpdated": "2024-09-16 15:51:00",
}
_CALLBACK_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            media_type: {"schema": _CALLBACK_FIELDS, "example": _CALLBACK_EXAMPLE}
            for media_type in (*_FORM_TYPES, "application/json")
        },
    }
}


@router.post(
    PATH,
    response_model=CallbackAck,
    summary="Exotel's StatusCallback (multipart, urlencoded or JSON)",
    description=(
        "Authenticated by the `call_id` and `token` of the URL exocall gave Exotel. Every "
        "accepted callback is stored before the 200 is sent, whatever it did to its call."
    ),
    responses=refusals(400, 401, 403, 413, 415, 422, 503),
    openapi_extra=_CALLBACK_BODY,
)
async def status_callback(
    request: Request,
    token: Annotated[str | None, Query(description="The HMAC token of the callback URL.")] = None,
    call_id: Annotated[str | None, Query(description="Our call id, signed by the token.")] = None,
) -> Response:
    # No dependencies here: resolving them costs more than this whole check (the hot path).
    services: Services = request.app.state.services
    call_uuid = authenticate_callback(request, services.settings, token=token, call_id=call_id)
    media_type, payload = await _read_payload(request)
    _check_payload(payload)
    if not payload.get("CallSid") and call_uuid is None:
        raise _invalid("CallSid", "required", "missing")
    received = ReceivedCallback(call_id=call_uuid, content_type=media_type, payload=payload)
    try:
        stored = await services.callbacks.store(received)  # committed, with its neighbours
    except Exception as exc:
        if not is_database_down(exc):
            raise
        await _spool(services, received)
        services.metrics.callbacks.labels("spooled").inc()
        ack = CallbackAck(receipt_id=received.receipt_id, event_id=None, outcome=None, spooled=True)
    else:
        services.metrics.callbacks.labels(stored.outcome).inc()
        ack = CallbackAck(
            receipt_id=received.receipt_id, event_id=stored.event_id, outcome=stored.outcome
        )
    # Serialised here, once, rather than validated again by FastAPI: this is the hot path.
    return Response(ack.model_dump_json(), media_type="application/json")


async def _spool(services: Services, received: ReceivedCallback) -> None:
    log.warning("database unreachable: callback %s spooled", received.receipt_id)
    try:
        await services.spool.put(received)
    except OSError:
        log.exception("callback %s could not be spooled either", received.receipt_id)
        # Nothing kept it: Exotel must send it again.
        raise ApiError(503, "unavailable", "cannot store the callback now; retry") from None


def authenticate_callback(
    request: Request, settings: Settings, *, token: str | None, call_id: str | None
) -> uuid.UUID | None:
    """Check the token that the StatusCallback URL carries; return the call id it vouches for
    (None for the account-wide URL). Checked before the body is read."""
    allowed = settings.callback_allowed_ips
    if allowed and not _from_any(request.client.host if request.client else None, allowed):
        raise ApiError(403, "callback_source_forbidden", "callbacks are not accepted from there")
    if not token:
        raise ApiError(401, "callback_unauthenticated", "the callback URL carries no token")
    forbidden = ApiError(403, "callback_forbidden", "the callback token is not valid")
    try:
        parsed_id = uuid.UUID(call_id) if call_id else None
    except ValueError:
        raise forbidden from None
    if not verify(settings.signing_secrets, parsed_id, token):
        raise forbidden
    return parsed_id


def _from_any(host: str | None, networks: Sequence[IPv4Network | IPv6Network]) -> bool:
    try:
        address = ip_address(host or "")
    except ValueError:
        return False
    return any(address in network for network in networks)


async def _read_payload(request: Request) -> tuple[str, dict[str, Any]]:
    content_type = request.headers.get("content-type", "")
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type == "multipart/form-data" and (boundary := boundary_of(content_type)):
        fields = parse_text_fields(await request.body(), boundary)
        if fields is not None:  # Exotel's usual few text fields; anything else, below
            return media_type, fields
    if media_type in _FORM_TYPES:
        form = await request.form()
        # Exotel sends plain fields only; a file part would not be one of its fields.
        return media_type, {
            key: value for key, value in form.multi_items() if isinstance(value, str)
        }
    if media_type == "application/json":
        try:
            payload = json.loads(
                await request.body(), parse_constant=_not_json, parse_float=_finite_float
            )
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
            raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise ApiError(422, "validation_error", "body: must be a JSON object")
        return media_type, payload
    raise ApiError(
        415,
        "unsupported_media_type",
        "send multipart/form-data, application/x-www-form-urlencoded or application/json",
    )


def _not_json(constant: str) -> float:
    # Python reads NaN and Infinity; JSON (and PostgreSQL's jsonb) has no such numbers.
    raise ValueError(f"{constant} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e400
        raise ValueError(f"{text} is out of range")
    return number


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


class StatusCallbackFastPath:
    """Serves `POST /status-callback` straight from ASGI, ahead of FastAPI's routing, dependency
    resolution and exception middleware, which cost more than the handler itself. It runs the
    same handler and answers refusals in the same shape; the FastAPI route above stays for the
    OpenAPI schema (and for anything that reaches the router directly)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            params = request.query_params
            response = await status_callback(
                request, token=params.get("token"), call_id=params.get("call_id")
            )
        except ApiError as exc:
            response = api_error_response(exc)
            _count_refusal(request, exc.status)
        except HTTPException as exc:  # a body over the limit, malformed multipart
            response = http_error_response(exc)
            _count_refusal(request, exc.status_code)
        except Exception:
            log.exception("unhandled error")
            response = error_response(500, "internal_error", "internal error; it has been logged")
        await response(scope, receive, send)


def _count_refusal(request: Request, status: int) -> None:
    if status < 500:  # refused, as opposed to not stored for now (503: Exotel sends it again)
        services: Services = request.app.state.services
        services.metrics.callbacks.labels("rejected").inc()
