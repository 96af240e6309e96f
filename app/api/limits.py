"""Limits on what a request may send, applied before any route sees it."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response


class BodyTooLarge(HTTPException):
    # An HTTPException, so that FastAPI's body parsing passes it on as it is.
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body is larger than {limit} bytes")


class BodySizeLimit:
    """Refuse bodies over `limit` bytes with 413: by their Content-Length when they declare one,
    and as they stream in when they do not (chunked)."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            # Answered before reading anything; the client may stop sending.
            await _too_large(self.limit)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)  # answered by the app's error handlers
            return message

        await self.app(scope, limited, send)


def _too_large(limit: int) -> ASGIApp:
    return error_response(
        413, "payload_too_large", BodyTooLarge(limit).detail, headers={"Connection": "close"}
    )
