"""The one error shape, `{"error": {"code", "message", ...}}`, and every mapping to it."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.calls.errors import (
    BatchNotFound,
    CallNotFound,
    CallNotPlaced,
    IdempotencyConflict,
    InvalidField,
)

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


# Documented on every endpoint: the statuses any request can meet, in the one error shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Malformed body",
        401: "No valid API key (or callback token)",
        403: "Forbidden (callback token or source)",
        404: "No such resource",
        409: "Idempotency-Key reused with another body",
        413: "Body over MAX_BODY_BYTES",
        415: "Unsupported content type",
        422: "Invalid input; `details` names each field",
        500: "Internal error (logged)",
        502: "Exotel refused for reasons of the account",
        503: "Exotel or the database unavailable",
    }.items()
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


def http_error_response(exc: StarletteHTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


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
            "field": _field_name(error["loc"]),
            "message": str(error["msg"]).removeprefix("Value error, "),
            "type": str(error["type"]),
        }
        for error in exc.errors()
    ]


def not_placed_status(call_error_code: str | None, exotel_status: int | None) -> int:
    """The HTTP status for a call Exotel did not place: the caller's fault (422) when Exotel
    refused the call itself (a bad or DND number), ours or Exotel's (502/503) otherwise."""
    if call_error_code == "exotel_unreachable":
        return 503
    if exotel_status in (400, 403, 404, 409):
        return 422
    return 502


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

    @app.exception_handler(CallNotFound)
    async def _not_found(_: Request, exc: CallNotFound) -> JSONResponse:
        return error_response(404, "call_not_found", str(exc))

    @app.exception_handler(BatchNotFound)
    async def _batch_not_found(_: Request, exc: BatchNotFound) -> JSONResponse:
        return error_response(404, "batch_not_found", str(exc))

    @app.exception_handler(IdempotencyConflict)
    async def _conflict(_: Request, exc: IdempotencyConflict) -> JSONResponse:
        extra: dict[str, Any] = {"call_id": str(exc.call_id) if exc.call_id else None}
        if exc.index is not None:
            extra["index"] = exc.index
        return error_response(409, "idempotency_conflict", str(exc), **extra)

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
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return http_error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "internal error; it has been logged")
