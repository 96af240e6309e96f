"""Fuzzing the service's own OpenAPI schema with schemathesis, in-process, on each backend: no
input makes it answer 5xx, and every answer is one the schema documents (status, content type,
body). Bounded: a fixed number of examples per operation.

Ids and tokens drawn at random are refused at the door (404, 403), so each operation is fuzzed
twice: as drawn, and naming what exists instead: a call that completed with its recording
archived, a batch, an event, a webhook endpoint (a real subscriber's), an opted-out number, and
callback URLs with valid tokens (the call's own, and the account-wide one of Passthru)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

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

from app.calls.callback_auth import passthru_url
from app.calls.state import RecordingUpdate, apply_recording
from app.calls.store import CallStore
from app.db.models import RecordingStatus
from app.main import create_app
from tests.conftest import (
    FAKE_CALLBACK_SECRET,
    UNUSED_DATABASE,
    callback_path,
    make_settings,
    no_dns,
    place_body,
)
from tests.support.eventually import eventually
from tests.support.exotel_double import ExotelDouble
from tests.support.exotel_requests import exotel_clock
from tests.support.feed import feed_items
from tests.support.subscriber import subscriber

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


RECORDING_URL = "https://s3-ap-southeast-1.amazonaws.com/exotelrecordings/fake-account/a.mp3"
AUDIO = b"RIFF" + bytes(40) + b"some sound"
OPTED_OUT = "+919052161119"


@dataclass(frozen=True)
class Existing:
    """What the served app has, for a case to name instead of what it drew."""

    by_name: dict[str, str]  # a parameter's name: a value naming something that exists
    sid: str  # the call's
    call_callback: dict[str, str]  # the call's own callback URL's query: call_id and token
    account_callback: dict[str, str]  # the account-wide one's: token


@dataclass(frozen=True)
class Served:
    portal: BlockingPortal
    client: httpx.AsyncClient
    existing: Existing


@asynccontextmanager
async def _serving(
    app: FastAPI, audio: Path, db_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Existing]]:
    # Unlike conftest's `serving`, an exception that escapes the app is answered as the 500 a
    # server would send, for `not_a_server_error` to report with the request that caused it.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client,
        httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=AUTH) as user,
        subscriber() as (_, hook),
    ):
        yield client, await _create_things(app, user, hook, audio, db_url)


async def _create_things(
    app: FastAPI, client: httpx.AsyncClient, hook: str, audio: Path, db_url: str
) -> Existing:
    """A completed call with its recording archived, a batch, a webhook endpoint, an event and
    an opted-out number, made as a user and Exotel would (the archive aside: it fetches from
    Exotel)."""
    placed = await client.post("/calls", json=place_body(), params={"wait": "false"})
    assert placed.status_code == 202, placed.text
    call_id = placed.json()["id"]

    async def call() -> dict[str, Any]:
        return dict((await client.get(f"/calls/{call_id}")).json())

    sent: dict[str, Any] = await eventually(call, until=lambda c: c["sid"], what="its SID")
    sid = sent["sid"]
    ended = {"CallSid": sid, "Status": "completed", "RecordingUrl": RECORDING_URL}
    ended |= {"DateUpdated": exotel_clock(1), "Duration": "12"}
    assert (await client.post(callback_path(call_id), data=ended)).status_code == 200
    await _archive(app, uuid.UUID(call_id), audio)
    batch = await client.post("/calls/batch", json={"calls": [place_body("+919052161111")]})
    endpoint = await client.post("/webhook-endpoints", json={"url": hook})
    assert (batch.status_code, endpoint.status_code) == (202, 201), endpoint.text
    # A number none of these calls is to: opted out, it would refuse them.
    opt_out = await client.post("/opt-outs", json={"number": OPTED_OUT, "reason": "fuzz"})
    assert opt_out.status_code == 201, opt_out.text
    event = (await feed_items(client, db_url, call_id=call_id))[0]
    return Existing(
        by_name={
            "ref": call_id,
            "call_id": call_id,
            "batch_id": batch.json()["id"],
            "event_id": event["id"],
            "endpoint_id": endpoint.json()["id"],
            "number": OPTED_OUT,
        },
        sid=sid,
        call_callback=_query_of(callback_path(call_id)),
        account_callback=_query_of(passthru_url("", FAKE_CALLBACK_SECRET.encode())),
    )


async def _archive(app: FastAPI, call_id: uuid.UUID, audio: Path) -> None:
    """The call's recording (`audio`, holding AUDIO) archived, as the archive does once it has
    the bytes."""
    runtime = app.state.runtime
    await runtime.recordings.put(call_id, audio, content_type="audio/wav")
    async with runtime.sessionmaker() as session, session.begin():
        store = await CallStore.of(session)
        await store.lock(ids=[call_id])
        call = store.get(call_id)
        assert call is not None
        archived = RecordingUpdate(
            RecordingStatus.ARCHIVED,
            await store.now(),
            attempted=True,
            size=len(AUDIO),
            content_type="audio/wav",
            sha256=hashlib.sha256(AUDIO).hexdigest(),
        )
        apply_recording(call, archived)
        await store.flush()


def _query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


@pytest.fixture
def served(db_url: str, anyio_backend: str, tmp_path: Path) -> Iterator[Served]:
    """The app on the real migrated database, its lifespan running for the whole test in one
    event loop (a portal's), Exotel a double; stopped before `db_url` empties the tables."""
    exotel = ExotelDouble()
    app = create_app(
        # A short wait: POST /calls answers 202 rather than block on the rate limit.
        make_settings(db_url, api_keys=FUZZ_API_KEY, dispatch_wait_seconds=0.2),
        exotel_transport=httpx.MockTransport(exotel.handle),
        resolver=no_dns,
    )
    audio = tmp_path / "recording.wav"
    audio.write_bytes(AUDIO)
    with (
        start_blocking_portal(anyio_backend) as portal,
        portal.wrap_async_context_manager(_serving(app, audio, db_url)) as (client, existing),
    ):
        yield Served(portal, client, existing)


def _naming_what_exists(case: schemathesis.Case, existing: Existing) -> None:
    """The case, its ids and tokens replaced by ones that name what exists."""
    path = case.operation.path
    for name in case.path_parameters or {}:
        case.path_parameters[name] = existing.by_name.get(name, case.path_parameters[name])
    if path == "/status-callback":
        case.query = (case.query or {}) | existing.call_callback
    elif path == "/passthru":
        case.query = (case.query or {}) | existing.account_callback
        case.query.pop("call_id", None)
    elif case.query:
        case.query |= {k: existing.by_name[k] for k in case.query if k in existing.by_name}
    fields = case.query if case.operation.method.upper() == "GET" else case.body
    if isinstance(fields, dict):
        fields |= {"CallSid": existing.sid} if "CallSid" in fields else {}
        if "endpoint_id" in fields:  # a redelivery's
            fields["endpoint_id"] = existing.by_name["endpoint_id"]


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


_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    # One app per operation, not per example: the lifespan is what costs (engine, workers).
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _check(case: schemathesis.Case, served: Served) -> None:
    request = case.as_transport_kwargs(base_url=BASE_URL, headers=AUTH)
    response = served.portal.call(_send, served.client, _as_httpx(request))
    case.validate_response(response, checks=CHECKS, headers=AUTH, transport_kwargs=request)


@schema.parametrize()
@_SETTINGS
def test_no_input_gets_a_5xx_or_an_undocumented_answer(
    case: schemathesis.Case, served: Served
) -> None:
    _check(case, served)


@schema.parametrize()
@_SETTINGS
def test_no_input_naming_what_exists_gets_a_5xx_or_an_undocumented_answer(
    case: schemathesis.Case, served: Served
) -> None:
    _naming_what_exists(case, served.existing)
    _check(case, served)
