"""Fuzzing the service's own OpenAPI schema with schemathesis, in-process, on each backend: no
input makes it answer 5xx, and every answer is one the schema documents (status, content type,
body). Bounded: a fixed number of examples per operation."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import schemathesis
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI
from hypothesis import HealthCheck, reject, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from tests.conftest import UNUSED_DATABASE, make_settings, no_dns
from tests.support.exotel_double import ExotelDouble

FUZZ_API_KEY = "fake-api-key-for-fuzz"
AUTH = {"Authorization": f"Bearer {FUZZ_API_KEY}"}
BASE_URL = "http://exocall.test"

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

# The schema as the app serves it at /openapi.json. Taken from a bare app rather than with
# `schemathesis.openapi.from_asgi`, which would start the app's lifespan (engine, workers) at
# import and keep it running until the interpreter exits, in schemathesis's own event loop.
schema = schemathesis.openapi.from_dict(create_app(make_settings(UNUSED_DATABASE)).openapi())


@asynccontextmanager
async def _serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # Unlike conftest's `serving`, an exception that escapes the app is answered as the 500 a
    # server would send, for `not_a_server_error` to report with the request that caused it.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client,
    ):
        yield client


@pytest.fixture
def served(db_url: str, anyio_backend: str) -> Iterator[tuple[BlockingPortal, httpx.AsyncClient]]:
    """The app on the real migrated database, its lifespan running for the whole test in one
    event loop (a portal's), Exotel a double; stopped before `db_url` empties the tables."""
    exotel = ExotelDouble()
    app = create_app(
        # A short wait: POST /calls answers 202 rather than block on the rate limit.
        make_settings(db_url, api_keys=FUZZ_API_KEY, dispatch_wait_seconds=0.2),
        exotel_transport=httpx.MockTransport(exotel.handle),
        resolver=no_dns,
    )
    with (
        start_blocking_portal(anyio_backend) as portal,
        portal.wrap_async_context_manager(_serving(app)) as client,
    ):
        yield portal, client


def _as_httpx(request: dict[str, Any]) -> dict[str, Any]:
    """Schemathesis prepares requests for `requests`; the few differences, made for httpx."""
    prepared = dict(request)
    cookies = prepared.pop("cookies", None)
    assert not cookies, "the schema has cookie parameters now: send them as a Cookie header"
    if isinstance(prepared.get("data"), bytes | str):
        prepared["content"] = prepared.pop("data")  # a raw body (negative cases: invalid JSON)
    elif isinstance(prepared.get("data"), dict):  # a form: every value as text, as on the wire
        prepared["data"] = {name: _text(value) for name, value in prepared["data"].items()}
    if prepared.get("files"):  # multipart fields: (name, (filename, value))
        prepared["files"] = [
            (name, (filename, _text(value))) for name, (filename, value, *_) in prepared["files"]
        ]
    headers: dict[str, bytes] = {}
    for name, value in (prepared.get("headers") or {}).items():
        try:
            # As on the wire: header values are octets, latin-1 text at most (RFC 9110 5.5).
            headers[name] = str(value).encode("latin-1")
        except UnicodeEncodeError:
            reject()  # no client can send it; no server will ever see it
    prepared["headers"] = headers
    return prepared


def _text(value: Any) -> str | bytes:
    return value if isinstance(value, str | bytes) else json.dumps(value)


async def _send(client: httpx.AsyncClient, request: dict[str, Any]) -> httpx.Response:
    prepared = client.build_request(**request)
    prepared.read()  # a multipart body as bytes: schemathesis reads it back to report a case
    return await client.send(prepared)


@schema.parametrize()
@settings(
    max_examples=100,
    deadline=None,
    # One app per operation, not per example: the lifespan is what costs (engine, workers).
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_no_input_gets_a_5xx_or_an_undocumented_answer(
    case: schemathesis.Case, served: tuple[BlockingPortal, httpx.AsyncClient]
) -> None:
    portal, client = served
    request = case.as_transport_kwargs(base_url=BASE_URL, headers=AUTH)
    response = portal.call(_send, client, _as_httpx(request))
    case.validate_response(response, checks=CHECKS, headers=AUTH, transport_kwargs=request)
