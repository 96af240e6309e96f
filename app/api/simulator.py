"""The built-in simulator as `exocall serve` mounts it (SIMULATOR_PREFIX; development only, as
production requires EXOTEL_API_KEY): every path under the mount is behind the API key, as the
rest of the API is.

Over HTTP the API key stands for the simulator's own credentials, which are published
(`simulator-key:simulator-token`) and so open nothing alone: a request that presents a key is
handed on with them, any other is refused before the simulator sees it. exocall's own requests
reach the simulator in-process (`httpx.ASGITransport`), never through the mount.
"""

from __future__ import annotations

import base64

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from app.api.deps import require_api_key
from app.api.errors import ApiError, api_error_response
from app.config import Settings


class SimulatorMount:
    """The simulator's ASGI app, behind the one API key check (`ApiKey`). A guard, not a
    route: every answer is the simulator's own, or the API's one refusal."""

    def __init__(self, simulator: ASGIApp, settings: Settings) -> None:
        self._simulator = simulator
        self._settings = settings
        user_and_password = ":".join(settings.exotel.credentials).encode()
        self._credentials = b"Basic " + base64.b64encode(user_and_password)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # a WebSocket: the simulator has none, and nothing passes
            await WebSocketClose()(scope, receive, send)
            return
        try:
            await require_api_key(Request(scope), self._settings, None)
        except ApiError as refused:
            await api_error_response(refused)(scope, receive, send)
            return
        headers = [(name, value) for name, value in scope["headers"] if name != b"authorization"]
        headers.append((b"authorization", self._credentials))
        await self._simulator({**scope, "headers": headers}, receive, send)
