"""`/status-callback` and `/passthru`: Exotel's StatusCallback webhook, in every shape Exotel
sends it, and a flow's Passthru requests.

One handler takes every status callback: POST with a multipart, urlencoded or JSON body, POST
with the fields in the query string and an empty body, and GET (a status callback set up in a
flow). Exotel's fields come from the query string and the body merged, the body winning; our
own `call_id` and `token` are never taken for Exotel's.

They are FastAPI routes of the app's own router, documented by FastAPI (`response_model`,
`responses`, `openapi_extra` for what the handlers read themselves) and answered in the one
error shape by the app's exception handlers. Served as ordinary routes of an included
`APIRouter`, a callback cost 250,000 CPU instructions more than it did through the ASGI layer
that served them before: up to a quarter of its CPU (bench/README.md). So the handlers are
called as they are, without FastAPI's request handler, and the routes are added to the app's
router itself: 95,000 more. A Starlette `Route` would save about 55,000 of those, but FastAPI
documents only its own routes.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Callable, Coroutine, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from app.api.deps import runtime_of, settings_of
from app.api.errors import ApiError, refusals
from app.api.forms import boundary_of, parse_text_fields
from app.calls.callback_auth import verify
from app.calls.received import LONGEST, ReceivedCallback, Unreadable
from app.calls.resource import CALL_EXAMPLE
from app.calls.spool import Spool
from app.config import Settings
from app.db.models import EventOutcome, RequestKind
from app.db.session import is_database_down
from app.exotel.passthru import DIGITS
from app.exotel.status_callback import FIELDS_SCHEMA, example_fields

log = logging.getLogger(__name__)

PATH = "/status-callback"
PASSTHRU_PATH = "/passthru"
_OURS = ("call_id", "token")  # in the callback URL we gave Exotel; never Exotel's fields
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class CallbackAck(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "receipt_id": "2751a23d-306b-47ec-9735-9527b08858b8",
                    "outcome": "applied",
                    "spooled": False,
                }
            ]
        }
    )

    receipt_id: uuid.UUID
    outcome: EventOutcome | None = Field(description="What it did; null when spooled.")
    spooled: bool = Field(
        False, description="The database was unreachable: kept on disk, stored once it is back."
    )


# Read from the query string by the route itself (see status_callback).
_OUR_PARAMETERS = [
    {
        "name": "token",
        "in": "query",
        "required": False,
        "description": "The HMAC token of the callback URL.",
        "schema": {"type": "string"},
    },
    {
        "name": "call_id",
        "in": "query",
        "required": False,
        "description": "Our call id, signed by the token.",
        "schema": {"type": "string"},
    },
]
_CALLBACK_EXAMPLE = example_fields(CALL_EXAMPLE["sid"], CALL_EXAMPLE["recording_url"])
# The longest each text field may be, as documented and enforced: its column's length.
_CALLBACK_LONGEST = {name: LONGEST[name] for name in FIELDS_SCHEMA["properties"] if name in LONGEST}
_FIELDS_SCHEMA = FIELDS_SCHEMA | {
    "properties": {
        name: schema | ({"maxLength": _CALLBACK_LONGEST[name]} if name in _CALLBACK_LONGEST else {})
        for name, schema in FIELDS_SCHEMA["properties"].items()
    }
}
_CALLBACK_BODY = {
    "required": False,
    "content": {
        media_type: {"schema": _FIELDS_SCHEMA, "example": _CALLBACK_EXAMPLE}
        for media_type in (*_FORM_TYPES, "application/json")
    },
}


_DESCRIPTION = (
    "Authenticated by the `call_id` and `token` of the URL exocall gave Exotel. Exotel's fields "
    "may come in the query string, the body, or both (the body wins). Every accepted callback "
    "is stored before it is answered, whatever it did to its call; one with nothing readable "
    "(no status, or no call to match) is stored and answered 422. One carrying a value no "
    "column can hold is refused 422 (`validation_error`, naming the field) and not stored."
)
# A flow's status callback is a GET: its fields in the query string.
_QUERY_FIELDS = [
    {"name": name, "in": "query", "required": False, "schema": schema}
    for name, schema in _FIELDS_SCHEMA["properties"].items()
]
_REFUSALS = (400, 401, 403, 413, 415, 422, 503)


_PASSTHRU_FIELDS = {
    "CallSid": "Exotel's call SID: the call is matched by it.",
    "CustomField": "The `CustomField` given to `Calls/connect`: exocall's call id, unless the "
    "call was placed with a `custom_field` of its own.",
    "digits": 'What the caller keyed in the Gather before, in double quotes (`"12"`).',
    "CurrentTime": "When Exotel made the request, `YYYY-MM-DD HH:MM:SS` (IST).",
    "From": "The caller's number.",
    "To": "The number called.",
    "Direction": "`outbound-api` for a call placed through the API.",
    "RecordingUrl": "The call's recording so far, when the flow records it.",
}
# As documented and enforced: a column's length, where the field has one (the digits come in
# quotes: two characters more), else 1000 (Exotel's are tens of characters).
_PASSTHRU_LONGEST = {name: LONGEST.get(name, 1000) for name in _PASSTHRU_FIELDS} | {
    DIGITS: LONGEST[DIGITS] + 2
}
_PASSTHRU_QUERY = [
    {
        "name": name,
        "in": "query",
        "required": False,
        "description": text,
        "schema": {"type": "string", "maxLength": _PASSTHRU_LONGEST[name]},
    }
    for name, text in _PASSTHRU_FIELDS.items()
]


class _AnsweredByItsEndpoint(APIRoute):
    """An operation documented like any other (from `response_model`, `responses` and
    `openapi_extra`) whose endpoint takes the `Request` and returns the `Response`: it is called
    as it is, without FastAPI's request handler (solving dependencies, reading the body,
    validating the answer)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return endpoint


def add_routes(router: APIRouter) -> None:
    """The routes, added to `router`: the app's own. Not an `APIRouter` of their own included
    in it, as the other routes are: a request to an included router's route goes through
    FastAPI's inclusion, about 100,000 CPU instructions (bench/README.md)."""
    answers: dict[str, Any] = {
        "tags": ["status callbacks"],
        "response_model": CallbackAck,
        "route_class_override": _AnsweredByItsEndpoint,
    }
    stored = answers | {
        "description": _DESCRIPTION,
        "response_description": "Stored (or spooled), with what it did",
        "responses": refusals(*_REFUSALS),
    }
    # POST first: it is how Exotel sends almost every callback.
    router.add_api_route(
        PATH,
        status_callback,
        methods=["POST"],
        summary="Exotel's StatusCallback: a body of any of three encodings, or the query string",
        operation_id="status_callback_post",
        openapi_extra={"parameters": _OUR_PARAMETERS, "requestBody": _CALLBACK_BODY},
        **stored,
    )
    router.add_api_route(
        PATH,
        status_callback,
        methods=["GET"],
        summary="Exotel's StatusCallback from a flow: the fields in the query string",
        operation_id="status_callback_get",
        openapi_extra={"parameters": _OUR_PARAMETERS + _QUERY_FIELDS},
        **stored,
    )
    router.add_api_route(
        PASSTHRU_PATH,
        passthru,
        methods=["GET"],
        summary="A flow's Passthru applet: what the customer keyed in",
        description="Authenticated by the `token` of the account-wide URL (`exocall "
        "passthru-url`). Stored on the call before it is answered; the call's `digits` and "
        "`flow` take it, and a `call.input` event is sent. 302 (the applet's other branch) when "
        "`PASSTHRU_REDIRECT_DIGITS` names the digits for the call's app, else 200. A request "
        "for a SID not known yet is kept, and applied once a call has that SID.",
        operation_id="passthru",
        response_description="Stored: the applet's first branch",
        responses={
            302: {"model": CallbackAck, "description": "Stored: the applet's other branch"},
            **refusals(401, 403, 422, 503),
        },
        openapi_extra={"parameters": _OUR_PARAMETERS + _PASSTHRU_QUERY},
        **answers,
    )


async def status_callback(request: Request) -> Response:
    settings, metrics = settings_of(request), runtime_of(request).metrics
    try:
        call_uuid = authenticate_callback(request, settings)
        content_type, fields = await _read_fields(request)
        received = ReceivedCallback(
            call_id=call_uuid, method=request.method, content_type=content_type, payload=fields
        )
        _refuse_unstorable(received, _CALLBACK_LONGEST)
    except (ApiError, HTTPException):  # HTTPException: a body over the limit, malformed forms
        metrics.callbacks.labels("rejected").inc()
        raise
    ack, _ = await _store(request, received)
    return Response(ack.model_dump_json(), media_type="application/json")


async def passthru(request: Request) -> Response:
    """A flow's Passthru request: stored before it is answered, like a status callback; 302
    when the operator's rule for the call's app names the digits, else 200."""
    settings, runtime = settings_of(request), runtime_of(request)
    try:
        call_uuid = authenticate_callback(request, settings)
        received = ReceivedCallback(
            call_id=call_uuid,
            method=request.method,
            content_type=None,
            payload=_query_fields(request),
            kind=RequestKind.PASSTHRU,
        )
        _refuse_unstorable(received, _PASSTHRU_LONGEST)
    except ApiError:
        runtime.metrics.callbacks.labels("rejected").inc()
        raise
    ack, app_id = await _store(request, received)
    redirected = settings.callbacks.passthru_redirect_digits.get(app_id or "", ())
    status = 302 if received.passthru.digits in redirected else 200
    return Response(ack.model_dump_json(), status_code=status, media_type="application/json")


async def _store(request: Request, received: ReceivedCallback) -> tuple[CallbackAck, str | None]:
    """Store `received` (or spool it while the database is down); its acknowledgement, and the
    app id of its call (None when spooled, or for no call). Raises 422 for one with nothing
    readable, or that could not be stored as read: kept, but never acknowledged as handled."""
    runtime = runtime_of(request)
    spooled = False
    outcome: EventOutcome | None = None
    app_id = None
    try:
        stored = await runtime.callbacks.store(received)  # committed
        outcome, app_id = stored.outcome, stored.app_id
    except Exception as exc:
        if not is_database_down(exc):
            raise
        await _spool(runtime.spool, received)
        spooled = True
    runtime.metrics.callbacks.labels("spooled" if spooled else str(outcome)).inc()
    ack = CallbackAck(receipt_id=received.receipt_id, outcome=outcome, spooled=spooled)
    if isinstance(reading := received.reading, Unreadable):
        # The sender is told what is missing.
        raise _unreadable(reading.problems, "missing", ack)
    if outcome == EventOutcome.UNREADABLE:  # read, but not storable so (logged, with why)
        raise _unreadable([("body", "cannot be stored as read")], "value_error", ack)
    return ack, app_id


def _unreadable(problems: list[tuple[str, str]], kind: str, ack: CallbackAck) -> ApiError:
    details = [{"field": field, "message": message, "type": kind} for field, message in problems]
    message = "; ".join(f"{field}: {text}" for field, text in problems)
    return ApiError(
        422,
        "unreadable_callback",
        f"nothing to act on, kept as received: {message}",
        details=details,
        **ack.model_dump(mode="json"),
    )


async def _spool(spool: Spool, received: ReceivedCallback) -> None:
    log.warning("database unreachable: callback %s spooled", received.receipt_id)
    try:
        await spool.put(received)
    except OSError:
        log.exception("callback %s could not be spooled either", received.receipt_id)
        # Nothing kept it: Exotel must send it again.
        raise ApiError(503, "unavailable", "cannot store the callback now; retry") from None


def authenticate_callback(request: Request, settings: Settings) -> uuid.UUID | None:
    """Check the token that the StatusCallback URL carries; return the call id it vouches for
    (None for the account-wide URL). Checked before the body is read."""
    allowed = settings.callbacks.allowed_ips
    if allowed and not _from_any(request.client.host if request.client else None, allowed):
        raise ApiError(403, "callback_source_forbidden", "callbacks are not accepted from there")
    token, call_id = request.query_params.get("token"), request.query_params.get("call_id")
    if not token:
        raise ApiError(401, "callback_unauthenticated", "the callback URL carries no token")
    try:
        parsed_id = uuid.UUID(call_id) if call_id else None
    except ValueError:
        parsed_id = None
        token = ""  # vouches for nothing
    if not verify(settings.callbacks.signing_secrets, parsed_id, token):
        raise ApiError(403, "callback_forbidden", "the callback token is not valid")
    return parsed_id


def _from_any(host: str | None, networks: Sequence[IPv4Network | IPv6Network]) -> bool:
    try:
        address = ip_address(host or "")
    except ValueError:
        return False
    return any(address in network for network in networks)


async def _read_fields(request: Request) -> tuple[str | None, dict[str, Any]]:
    """The media type of the body (None without one), and Exotel's fields: the query
    string's, and the body's over them."""
    query = _query_fields(request)
    body = await request.body()
    if not body:
        return None, query
    content_type = request.headers.get("content-type", "")
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type, query | await _body_fields(request, media_type, content_type, body)


def _query_fields(request: Request) -> dict[str, Any]:
    """Exotel's fields in the query string: all but our own."""
    return {k: v for k, v in request.query_params.items() if k not in _OURS}


async def _body_fields(
    request: Request, media_type: str, content_type: str, body: bytes
) -> dict[str, Any]:
    if media_type == "multipart/form-data" and (boundary := boundary_of(content_type)):
        fields = parse_text_fields(body, boundary)
        if fields is not None:  # Exotel's usual few text fields; anything else, below
            return fields
    if media_type in _FORM_TYPES:
        form = await request.form()
        # Exotel sends plain fields only; a file part would not be one of its fields.
        return {key: value for key, value in form.multi_items() if isinstance(value, str)}
    if media_type == "application/json":
        try:
            payload = json.loads(body, parse_constant=_not_json, parse_float=_finite_float)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
            raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise _invalid([("body", "must be a JSON object")])
        return payload
    raise ApiError(
        415,
        "unsupported_media_type",
        "send multipart/form-data, application/x-www-form-urlencoded or application/json, "
        "or the fields in the query string",
    )


def _not_json(constant: str) -> float:
    # Python reads NaN and Infinity; JSON (and PostgreSQL's jsonb) has no such numbers.
    raise ValueError(f"{constant} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e400
        raise ValueError(f"{text} is out of range")
    return number


def _refuse_unstorable(received: ReceivedCallback, longest: dict[str, int]) -> None:
    """Refuse a field longer than the schema says (`longest`), or what no column could hold,
    before it is stored or spooled: acknowledged, it would have to be stored."""
    too_long = [
        (name, f"at most {most} characters")
        for name, most in longest.items()
        if isinstance(value := received.payload.get(name), str) and len(value) > most
    ]
    if problems := too_long or received.unstorable:
        raise _invalid(problems)


def _invalid(problems: list[tuple[str, str]]) -> ApiError:
    details = [
        {"field": field, "message": message, "type": "value_error"} for field, message in problems
    ]
    message = "; ".join(f"{field}: {text}" for field, text in problems)
    return ApiError(422, "validation_error", message, details=details)
