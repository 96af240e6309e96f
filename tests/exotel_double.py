"""A stand-in for Exotel's API, used as an `httpx.MockTransport` handler: it records every request
exocall sends and answers as Exotel does (shared/exotel.md), or as a test tells it to."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import httpx

Responder = Callable[[httpx.Request], Awaitable[httpx.Response]]


def new_sid() -> str:
    # Real SIDs are 32 characters and not hex.
    return secrets.token_hex(15) + "9g"


def call_json(sid: str, status: str = "in-progress", **fields: Any) -> dict[str, Any]:
    return {
        "Call": {
            "Sid": sid,
            "ParentCallSid": None,
            "DateCreated": "2019-04-08 03:17:59",
            "DateUpdated": "2019-04-08 03:17:59",
            "AccountSid": "fake-account",
            "To": None,
            "From": "09052161110",
            "PhoneNumberSid": "08030752400",
            "Status": status,
            "StartTime": "2019-04-08 03:17:59",
            "EndTime": None,
            "Duration": None,
            "Price": None,
            "Direction": "outbound-api",
            "RecordingUrl": None,
        }
        | fields
    }


def accepted(sid: str | None = None, **fields: Any) -> httpx.Response:
    return httpx.Response(200, json=call_json(sid or new_sid(), **fields))


def rest_exception(
    status: int, message: str, code: int | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    body = {"RestException": {"Status": status, "Message": message, "Code": code}}
    return httpx.Response(status, json=body, headers=headers)


class ExotelDouble:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.on_connect: Responder = self._accept

    @staticmethod
    async def _accept(_: httpx.Request) -> httpx.Response:
        return accepted()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "POST" and request.url.path.endswith("/Calls/connect.json"):
            return await self.on_connect(request)
        return httpx.Response(404, json={"RestException": {"Status": 404, "Message": "no such"}})

    def answer_connect(self, response: httpx.Response | Exception) -> None:
        """Answer every `Calls/connect` with `response` (or raise it, for transport errors)."""

        async def respond(_: httpx.Request) -> httpx.Response:
            if isinstance(response, Exception):
                raise response
            return response

        self.on_connect = respond

    @property
    def connects(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.endswith("/Calls/connect.json")]


def form_of(request: httpx.Request) -> dict[str, str]:
    return dict(parse_qsl(request.content.decode(), keep_blank_values=True))
