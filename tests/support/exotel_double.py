"""A stand-in for Exotel's API, used as an `httpx.MockTransport` handler: it records every request
exocall sends and answers as Exotel does (docs/exotel.md), or as a test tells it to."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx

from app.exotel.client import ExotelClient

Responder = Callable[[httpx.Request], Awaitable[httpx.Response]]

# Exotel's documented terminal status callback, verbatim (JSON).
TERMINAL_CALLBACK_EXAMPLE: dict[str, Any] = {
    "CallSid": "492205107c5fb48f4ac25d1f77759339",
    "EventType": "terminal",
    "DateCreated": "2019-04-08 03:17:59",
    "DateUpdated": "2019-04-08 03:18:35",
    "Status": "completed",
    "To": "+91886799XXXX",
    "From": "+91941374XXXX",
    "PhoneNumberSid": "0113083XXXX",
    "StartTime": "2019-04-08 03:17:59",
    "EndTime": "2019-04-08 03:18:36",
    "Direction": "outbound-api",
    "RecordingUrl": "https://s3-ap-southeast-1.amazonaws.com/exotelrecordings/acme1/"
    "492205107c5fb48f4ac25d1f77759339.mp3",
    "ConversationDuration": 32,
    "CustomField": "order-123",
    "Legs": [
        {"OnCallDuration": 41, "Status": "completed"},
        {"OnCallDuration": 32, "Status": "completed"},
    ],
}


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
        self.times: list[float] = []  # time.monotonic() of each request, as Exotel saw it
        self.on_connect: Responder = self._accept
        self.listed: list[dict[str, Any]] = []  # what call details (bulk) answer, as `Call`s
        self.page_size: int | None = None  # bulk answers in pages of this many (None: one page)

    @staticmethod
    async def _accept(_: httpx.Request) -> httpx.Response:
        return accepted()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.times.append(time.monotonic())
        if request.method == "POST" and request.url.path.endswith("/Calls/connect.json"):
            return await self.on_connect(request)
        if request.method == "GET" and request.url.path.endswith("/Calls.json"):
            return self._page_of_listed(request)
        return httpx.Response(404, json={"RestException": {"Status": 404, "Message": "no such"}})

    def _page_of_listed(self, request: httpx.Request) -> httpx.Response:
        """Bulk call details, paged as Exotel does: `Metadata.NextPageUri` carries the cursor."""
        start = int(request.url.params.get("After", "0"))
        size = self.page_size or max(len(self.listed), 1)
        next_uri = None
        if start + size < len(self.listed):
            query = dict(request.url.params) | {"After": str(start + size)}
            next_uri = f"{request.url.path}?{urlencode(query)}"
        metadata = {"PageSize": size, "NextPageUri": next_uri}
        body = {"Metadata": metadata, "Calls": self.listed[start : start + size]}
        return httpx.Response(200, json=body)

    def accept_connects(self) -> None:
        """Accept every `Calls/connect` from now on, each with a SID of its own."""
        self.on_connect = self._accept

    def answer_connect(self, *responses: httpx.Response | Exception) -> None:
        """Answer `Calls/connect` with these, in turn (raising exceptions, for transport errors);
        the last one answers every request after."""
        remaining = list(responses)

        async def respond(_: httpx.Request) -> httpx.Response:
            response = remaining.pop(0) if len(remaining) > 1 else remaining[0]
            if isinstance(response, Exception):
                raise response
            return response

        self.on_connect = respond

    @property
    def connects(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.endswith("/Calls/connect.json")]

    @property
    def lookups(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "GET"]


def form_of(request: httpx.Request) -> dict[str, str]:
    return dict(parse_qsl(request.content.decode(), keep_blank_values=True))


@asynccontextmanager
async def exotel_client_of(
    handle: Callable[[httpx.Request], httpx.Response],
) -> AsyncIterator[ExotelClient]:
    """An ExotelClient whose requests `handle` answers (an ExotelDouble's, say)."""
    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        yield ExotelClient(
            http,
            base_url="https://exotel.test",
            account_sid="fake-account",
            api_key="fake-api-key",
            api_token="fake-api-token",
            timeout_seconds=5,
        )
