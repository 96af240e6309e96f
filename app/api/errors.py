"""The one error shape, `{"error": {"code", "message", ...}}`, and every mapping to it."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.calls.errors import (
    CallEnded,
    CallNotPlaced,
    IdempotencyConflict,
    InvalidField,
    NotFound,
)
from app.db.models import FailureKind
from app.db.session import is_database_down, is_schema_behind

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class FieldError(BaseModel):
    field: str
    message: str
    type: str


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="allow")  # e.g. call_id, exotel_status, index

    code: str = Field(examples=["validation_error"])
    message: str = Field(examples=["from: not a valid Indian mobile/landline or E.164 number"])
    details: list[FieldError] | None = None


class ErrorResponse(BaseModel):
    """Every refusal, whatever the endpoint."""

    error: ErrorBody


_CALL_ID = "5773f9c0-fe08-4c68-b2ae-550a0ff74c67"
# Each status an endpoint can refuse with: what it means, and an answer exocall gave.
_REFUSALS: dict[int, tuple[str, dict[str, Any]]] = {
    400: (
        "Malformed body",
        {"code": "invalid_json", "message": "the body is not valid JSON: Expecting value"},
    ),
    401: (
        "No valid API key (or callback token)",
        {
            "code": "unauthenticated",
            "message": "send Authorization: Bearer <one of the service's API keys>",
        },
    ),
    403: (
        "The callback token is not valid, or the source is not allowed",
        {"code": "callback_forbidden", "message": "the callback token is not valid"},
    ),
    404: (
        "No such resource",
        {"code": "call_not_found", "message": f"no call with id or sid '{_CALL_ID}'"},
    ),
    409: (
        "The Idempotency-Key was used with another body",
        {
            "code": "idempotency_conflict",
            "message": "this Idempotency-Key was used with a different request",
            "call_id": _CALL_ID,
            "index": 0,
        },
    ),
    413: (
        "Body over MAX_BODY_BYTES",
        {"code": "payload_too_large", "message": "the body is larger than 1048576 bytes"},
    ),
    415: (
        "Unsupported content type",
        {"code": "unsupported_media_type", "message": "send the body as application/json"},
    ),
    416: (
        "The `Range` asked for lies beyond the recording",
        {"code": "range_not_satisfiable", "message": "the recording has 48044 bytes"},
    ),
    422: (
        "Invalid input (`details` names each field), or Exotel refused the number itself",
        {
            "code": "validation_error",
            "message": "from: not a valid Indian mobile/landline or E.164 number",
            "details": [
                {
                    "field": "from",
                    "message": "not a valid Indian mobile/landline or E.164 number",
                    "type": "value_error",
                }
            ],
        },
    ),
    502: (
        "Exotel refused the call for reasons of the account (credentials, plan limits)",
        {
            "code": "exotel_rejected",
            "message": "Usage limit of the plan reached; ",
            "call_id": _CALL_ID,
            "exotel_status": 402,
            "exotel_code": None,
        },
    ),
    503: (
        "Exotel or the database unavailable, or the database's schema not current; try again",
        {"code": "database_unavailable", "message": "database: OperationalError"},
    ),
}


def refusals(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the statuses an endpoint can refuse with, in the one shape."""
    return {
        status: {
            "model": ErrorResponse,
            "description": _REFUSALS[status][0],
            "content": {"application/json": {"example": {"error": _REFUSALS[status][1]}}},
        }
        for status in statuses
    }


class ApiError(Exception):
    """A refusal decided in the HTTP layer itself (authentication, body encoding)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.extra = extra


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers
    )


# How soon a client may try again while the database is unreachable: a restart takes seconds.
DATABASE_RETRY_AFTER_SECONDS = 5


def database_unavailable(exc: BaseException) -> JSONResponse:
    return error_response(
        503,
        "database_unavailable",
        f"database: {type(exc).__name__}",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


def schema_not_current(message: str) -> JSONResponse:
    return error_response(
        503,
        "schema_not_current",
        message,
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


def unexpected_error_response(exc: Exception) -> JSONResponse:
    """The answer to an error nothing else handled: 503 while the database is unreachable or
    not migrated (the client tries again), 500 otherwise, logged."""
    if is_database_down(exc):
        log.warning("the database is unreachable (%s)", type(exc).__name__)
        return database_unavailable(exc)
    if is_schema_behind(exc):
        # With its traceback: a statement of this code's naming what no migration made is a
        # bug, and looks the same.
        log.error("the database's schema is not current", exc_info=exc)
        return schema_not_current("the database's schema is not current: run `exocall migrate`")
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "internal error; it has been logged")


def api_error_response(exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message, exc.headers, **exc.extra)


def _field_name(location: Sequence[int | str]) -> str:
    # ("body", "from") -> "from"; ("body",) -> "body"; ("query", "status", 0) -> "status"
    source, *path = [str(part) for part in location]
    if source != "body":
        path = path[:1]
    return ".".join(path) or source


def _validation_details(exc: RequestValidationError) -> list[dict[str, str]]:
    # Built field by field: pydantic's own entries carry the input (personal data) and context
    # objects that are not JSON.
    return [
        {
            # A body that is not JSON at all is located at its character offset: ("body", 1).
            "field": "body" if error["type"] == "json_invalid" else _field_name(error["loc"]),
            "message": str(error["msg"]).removeprefix("Value error, "),
            "type": str(error["type"]),
        }
        for error in exc.errors()
    ]


def not_placed_status(call_error_code: FailureKind | None, exotel_status: int | None) -> int:
    """The HTTP status for a call Exotel did not place: the caller's fault (422) when Exotel
    refused the call itself (a bad or DND number), ours or Exotel's (502/503) otherwise."""
    if call_error_code == FailureKind.EXOTEL_UNREACHABLE:
        return 503
    if call_error_code == FailureKind.NUMBER_OPTED_OUT:
        return 422
    if exotel_status in (400, 403, 404, 409):
        return 422
    return 502


def _allowed_methods(request: Request) -> str:
    """Every method the app routes at the request's path, for a 405's Allow. The router's own
    names those of the first route that matched the path alone, and a path can have a route
    for each method (one operation each in the schema, as `/status-callback` has)."""
    scope = request.scope

    def routed(method: str) -> bool:
        probe = {
            "type": "http",
            "method": method,
            "path": scope["path"],
            "root_path": scope.get("root_path", ""),
            "headers": scope["headers"],
        }
        return any(route.matches(probe)[0] is Match.FULL for route in request.app.router.routes)

    return ", ".join(method for method in _METHODS if routed(method))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return api_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc)
        message = "; ".join(f"{d['field']}: {d['message']}" for d in details)
        return error_response(422, "validation_error", message, details=details)

    @app.exception_handler(InvalidField)
    async def _invalid_field(_: Request, exc: InvalidField) -> JSONResponse:
        details = [{"field": exc.field, "message": exc.message, "type": "value_error"}]
        return error_response(422, "validation_error", str(exc), details=details)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return error_response(404, exc.code, str(exc))

    @app.exception_handler(IdempotencyConflict)
    async def _conflict(_: Request, exc: IdempotencyConflict) -> JSONResponse:
        extra: dict[str, Any] = {"call_id": str(exc.call_id) if exc.call_id else None}
        if exc.index is not None:
            extra["index"] = exc.index
        return error_response(409, "idempotency_conflict", str(exc), **extra)

    @app.exception_handler(CallEnded)
    async def _ended(_: Request, exc: CallEnded) -> JSONResponse:
        return error_response(
            409, "call_ended", str(exc), call_id=str(exc.call.id), call_status=exc.call.status
        )

    @app.exception_handler(CallNotPlaced)
    async def _not_placed(_: Request, exc: CallNotPlaced) -> JSONResponse:
        call = exc.call
        status = not_placed_status(call.error_code, call.error_exotel_status)
        return error_response(
            status,
            call.error_code or "call_not_placed",
            call.error_message or "the call was not placed",
            call_id=str(call.id),
            exotel_status=call.error_exotel_status,
            exotel_code=call.error_exotel_code,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = exc.headers
        if exc.status_code == 405 and request.scope.get("route") is not None:
            # The router's (a route matched the path, not the method), not a mounted app's.
            headers = {**(headers or {}), "Allow": _allowed_methods(request)}
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=headers)

    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return unexpected_error_response(exc)

    # The errors a database that went away raises, answered here rather than by the handler of
    # last resort (`Exception`), which Starlette re-raises to the server after answering: one
    # outage would log a traceback for every request.
    for kind in (SQLAlchemyError, OSError, Exception):
        app.add_exception_handler(kind, _unexpected)
