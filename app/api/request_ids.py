"""Request ids: every request gets one, for its log lines and its answer."""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.logs import request_id

HEADER = b"x-request-id"
# A caller's id is kept when it looks like one: it ends up in logs, so nothing else is.
_PLAUSIBLE = re.compile(rb"[\w.:/+=-]{1,128}")


class RequestIds:
    """The caller's X-Request-ID when it sends a plausible one, else a new id: set for every log
    line of the request (`request_id`) and sent back in the answer's X-Request-ID."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == HEADER), b"")
        value = given if _PLAUSIBLE.fullmatch(given) else uuid.uuid4().hex.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (HEADER, value)]
            await send(message)

        token = request_id.set(value.decode())
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
