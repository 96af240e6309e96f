"""Hostile and broken input: every refusal is clear, uses the one error shape, names the field,
is never a 500, and stores nothing."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from app.calls.callback_auth import passthru_url
from app.main import create_app
from tests.conftest import (
    FAKE_CALLBACK_SECRET,
    UNUSED_DATABASE,
    callback_path,
    make_settings,
    place_body,
    serving,
)
from tests.support.exotel_double import ExotelDouble, accepted, new_sid

pytestmark = pytest.mark.anyio

LIMIT = 4096
# A cursor like the service's own, but with a timestamp that has no offset.
NAIVE_CURSOR = base64.urlsafe_b64encode(
    json.dumps(["2024-01-01T00:00:00", "3f1c1c1e-0000-4000-8000-000000000000"]).encode()
).decode()


@pytest.fixture
async def small(db_url: str, exotel: ExotelDouble) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(db_url, max_body_bytes=LIMIT)
    async with serving(
        create_app(settings, exotel_transport=httpx.MockTransport(exotel.handle))
    ) as c:
        yield c


async def stored_calls(client: httpx.AsyncClient) -> list[Any]:
    return list((await client.get("/calls")).json()["items"])


def refused(response: httpx.Response, status: int, code: str, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    if field is not None:
        assert field in [d["field"] for d in error["details"]]


@pytest.mark.parametrize("path", ["/calls", "/calls/batch", "callback"])
async def test_a_body_over_the_limit_is_413(small: httpx.AsyncClient, path: str) -> None:
    url = callback_path(None) if path == "callback" else path
    big = {"from": "9052161110", "app_id": "926", "custom_field": "x" * LIMIT}
    refused(await small.post(url, json=big), 413, "payload_too_large")
    assert await stored_calls(small) == []


async def test_a_chunked_body_over_the_limit_is_413(small: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"from": "9052161110", "custom_field": "'
        for _ in range(10):
            yield b"x" * 1024
        yield b'"}'

    response = await small.post(
        "/calls", content=chunks(), headers={"content-type": "application/json"}
    )
    refused(response, 413, "payload_too_large")
    assert await stored_calls(small) == []


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", b"from=9052161110&app_id=926"),
        ("text/plain", b'{"from": "9052161110", "app_id": "926"}'),
        ("", b'{"from": "9052161110", "app_id": "926"}'),
    ],
)
async def test_json_endpoints_refuse_other_bodies_with_415(
    client: httpx.AsyncClient, content_type: str, body: bytes
) -> None:
    response = await client.post("/calls", content=body, headers={"content-type": content_type})
    refused(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"custom_field": "order\x00123"}, "custom_field"),
        ({"custom_field": "line\nbreak"}, "custom_field"),
        ({"flow_url": "https://flows.test/" + "a" * 500}, "flow_url"),
        ({"time_limit": 10**30}, "time_limit"),
        ({"time_out": 1.5}, "time_out"),
        ({"from": ["9052161110"]}, "from"),
        ({"app_id": True}, "app_id"),
    ],
)
async def test_values_the_database_or_exotel_cannot_take_are_refused(
    client: httpx.AsyncClient, exotel: ExotelDouble, change: dict[str, Any], field: str
) -> None:
    refused(await client.post("/calls", json=place_body() | change), 422, "validation_error", field)
    assert exotel.requests == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"CallSid": "x" * 65, "Status": "completed"}, "CallSid"),
        ({"CallSid": "abc", "Status": "completed" * 5}, "Status"),
        ({"CallSid": "abc", "Status": "completed", "DateUpdated": "9" * 40}, "DateUpdated"),
        ({"CallSid": "abc", "Status": "completed", "CustomField": "a\x00b"}, "CustomField"),
    ],
)
@pytest.mark.parametrize("encoding", ["data", "json"])
async def test_callbacks_that_are_not_exotels_are_refused_and_not_stored(
    client: httpx.AsyncClient, fields: dict[str, str], field: str, encoding: str
) -> None:
    response = await client.post(callback_path(None), **{encoding: fields})
    refused(response, 422, "validation_error", field)


# Each a value that passes for Exotel's but that no column holds, and the field it is in. Each
# once failed the transaction storing it (a 500, and every callback committed with it lost), or
# was stored and made its call's events unreadable for good.
UNSTORABLE: list[Any] = [
    pytest.param("form", {"Duration": "1" + "0" * 25}, "Duration", id="duration-1e25"),
    pytest.param("form", {"Duration": "3000000000"}, "Duration", id="duration-over-int"),
    pytest.param("form", {"CallDuration": "3000000000"}, "CallDuration", id="flow-duration"),
    pytest.param("form", {"Legs[0][OnCallDuration]": "3000000000"}, "Legs", id="leg-duration"),
    # Lower-cased, 20 characters become 40; the column holds 32.
    pytest.param("form", {"Status": "\u0130" * 20}, "Status", id="status-longer-lowered"),
    pytest.param("json", b'"CustomField": "\\ud800"', "CustomField", id="lone-surrogate"),
    pytest.param("json", b'"Extra": ' + b"[" * 300 + b"]" * 300, "Extra", id="nested-300"),
    pytest.param("passthru", {"digits": "1" * 65}, "digits", id="digits-65"),
]


async def send(
    client: httpx.AsyncClient, route: str, value: Any, *, call_id: str | None, sid: str
) -> httpx.Response:
    """A status callback (form or JSON) or a Passthru request for the call, carrying `value`."""
    if route == "passthru":
        query = urlencode({"CallSid": sid, "CurrentTime": "2026-12-02 10:20:41"} | value)
        return await client.get(f"{passthru_url('', FAKE_CALLBACK_SECRET.encode())}&{query}")
    if route == "form":
        fields = {"CallSid": sid, "Status": "completed"} | value
        return await client.post(callback_path(call_id), data=fields)
    body = b'{"CallSid": "%s", "Status": "completed", %s}' % (sid.encode(), value)
    headers = {"content-type": "application/json"}
    return await client.post(callback_path(call_id), content=body, headers=headers)


@pytest.mark.parametrize(("route", "value", "field"), UNSTORABLE)
async def test_a_value_no_column_holds_is_refused_naming_it(
    client: httpx.AsyncClient, exotel: ExotelDouble, route: str, value: Any, field: str
) -> None:
    sid = new_sid()
    exotel.answer_connect(accepted(sid))
    call = (await client.post("/calls", json=place_body())).json()

    response = await send(client, route, value, call_id=call["id"], sid=sid)

    refused(response, 422, "validation_error", field)
    events = await client.get(f"/calls/{call['id']}/events")
    assert events.status_code == 200
    assert [e["kind"] for e in events.json()] == ["dispatch"]  # Exotel's answer alone


@pytest.mark.parametrize(("route", "value", "field"), UNSTORABLE)
async def test_a_value_no_column_holds_is_refused_not_spooled_while_the_database_is_down(
    db_url: str, tmp_path: Path, route: str, value: Any, field: str
) -> None:
    spool_dir = tmp_path / "spool"
    down = create_app(make_settings(UNUSED_DATABASE, spool_dir=spool_dir))
    async with serving(down) as client:
        response = await send(client, route, value, call_id=str(uuid.uuid4()), sid=new_sid())

    refused(response, 422, "validation_error", field)
    assert list(spool_dir.glob("*.json")) == []  # never acknowledged, so never replayed


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
async def test_json_numbers_outside_json_are_refused(
    client: httpx.AsyncClient, number: bytes
) -> None:
    # Python's json reads these; PostgreSQL's jsonb refuses them, which would be a 500.
    body = b'{"CallSid": "abc", "Status": "completed", "ConversationDuration": ' + number + b"}"
    response = await client.post(
        callback_path(None), content=body, headers={"content-type": "application/json"}
    )
    refused(response, 400, "invalid_json")


async def test_absurdly_nested_json_is_refused(client: httpx.AsyncClient) -> None:
    body = b'{"CallSid": "abc", "Legs": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = await client.post(
        callback_path(None), content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code in (400, 422)
    assert response.json()["error"]["code"] in ("invalid_json", "validation_error")


@pytest.mark.parametrize("ref", ["has space", "x" * 65, "%00", "caf%C3%A9%00"])
async def test_implausible_call_refs_are_404(client: httpx.AsyncClient, ref: str) -> None:
    refused(await client.get(f"/calls/{ref}"), 404, "call_not_found")


@pytest.mark.parametrize("path", ["/events/evt_%00", "/events/%00", "/events/" + "e" * 41])
async def test_an_event_id_no_event_could_have_is_refused_naming_it(
    client: httpx.AsyncClient, path: str
) -> None:
    refused(await client.get(path), 422, "validation_error", "event_id")
    refused(await client.post(f"{path}/redeliver"), 422, "validation_error", "event_id")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"created_after": "9999-12-31T23:59:59-23:59"}, "created_after"),
        ({"created_before": "0001-01-01T00:00:00+23:59"}, "created_before"),
        ({"cursor": NAIVE_CURSOR}, "cursor"),
    ],
)
async def test_list_parameters_out_of_range_are_named(
    client: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    refused(await client.get("/calls", params=params), 422, "validation_error", field)
