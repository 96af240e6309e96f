"""Every shape in which Exotel sends a status callback (docs/exotel.md, "StatusCallback"),
through real HTTP to a real `exocall serve`, on both backends: the POST given to Calls/connect
in its three encodings, fields in the query string with an empty body, a flow's GET with
`DialCallStatus`, `CallStatus`, the durations, `answered` events, and what cannot be read.

The fixtures here are written from the document, not from exocall's own simulator. Calls are
placed through the simulator with numbers ending in 8, whose own callback is lost: the only
callbacks a call gets are the ones a test sends.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select

from app.db.models import Receipt
from app.db.session import create_engine, create_sessionmaker
from tests.conftest import AUTH, FAKE_ENV, callback_path, empty_database
from tests.support.exotel_requests import exotel_clock, in_ist
from tests.support.processes import Deployment

# One xdist worker runs them all, one after another: the module's server works on the worker's
# database, and must not while another module's tests use it.
pytestmark = [pytest.mark.e2e, pytest.mark.anyio, pytest.mark.xdist_group("callback_shapes")]

RECORDING = "https://s3-ap-southeast-1.amazonaws.com/exotelrecordings/acme1/abc.mp3"


@dataclass
class Live:
    url: str
    database_url: str
    numbers: Iterator[int]


@pytest.fixture(scope="module")
def live(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One server and one simulator for the module: each test places calls of its own."""
    workdir = tmp_path_factory.mktemp("shapes")
    deployment = Deployment(database_url=database_url, workdir=Path(workdir), env=FAKE_ENV)
    try:
        deployment.start_simulator()
        yield Live(deployment.start_server(), database_url, iter(range(10_000)))
    finally:
        deployment.stop()
        asyncio.run(empty_database(database_url))


@pytest.fixture
async def api(live: Live) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.url, headers=AUTH, timeout=30) as client:
        yield client


async def place(api: httpx.AsyncClient, live: Live) -> dict[str, Any]:
    """A call Exotel accepted whose own callback never comes (the number ends in 8)."""
    number = f"90521{next(live.numbers):04d}8"
    response = await api.post("/calls", json={"from": number, "app_id": "926"})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def get_call(api: httpx.AsyncClient, call: dict[str, Any]) -> dict[str, Any]:
    return dict((await api.get(f"/calls/{call['id']}")).json())


async def events_of(api: httpx.AsyncClient, call: dict[str, Any]) -> list[dict[str, Any]]:
    """What the call's callbacks were kept as: its events, but for Exotel's answer to its
    dispatch (always the first: these calls get no callback of their own)."""
    dispatch, *callbacks = (await api.get(f"/calls/{call['id']}/events")).json()
    assert dispatch["kind"] == "dispatch"
    return list(callbacks)


def with_query(callback_url: str, fields: dict[str, Any]) -> str:
    """The callback URL with Exotel's fields added to its query string."""
    return f"{callback_url}&{urlencode(fields)}"


def multipart(fields: dict[str, Any]) -> dict[str, Any]:
    return {"files": {key: (None, str(value)) for key, value in fields.items()}}


def terminal(sid: str, status: str = "completed", **more: Any) -> dict[str, Any]:
    """The four fields always present."""
    fields = {"CallSid": sid, "Status": status, "RecordingUrl": RECORDING}
    return fields | {"DateUpdated": exotel_clock(40)} | more


async def test_the_connect_callback_in_each_encoding(api: httpx.AsyncClient, live: Live) -> None:
    for encoding in ("multipart", "urlencoded", "json"):
        call = await place(api, live)
        fields = terminal(call["sid"], Duration=169)
        body = {
            "multipart": multipart(fields),
            "urlencoded": {"data": fields},
            "json": {"json": fields},
        }[encoding]

        response = await api.post(callback_path(call["id"]), **body)

        assert response.status_code == 200, response.text
        assert response.json()["outcome"] == "applied"
        stored = await get_call(api, call)
        assert (stored["status"], stored["recording_url"]) == ("completed", RECORDING)
        assert stored["duration"] == 169
        assert stored["date_updated"] == in_ist(fields["DateUpdated"])
        (event,) = await events_of(api, call)
        assert event["method"] == "POST"
        assert (
            event["content_type"]
            == {
                "multipart": "multipart/form-data",
                "urlencoded": "application/x-www-form-urlencoded",
                "json": "application/json",
            }[encoding]
        )


async def test_the_documented_terminal_example_with_its_legs(
    api: httpx.AsyncClient, live: Live
) -> None:
    """Exotel's documented terminal JSON: ConversationDuration, and Legs as an array; and the
    same in multipart, Legs flattened."""
    for encoding in ("json", "multipart"):
        call = await place(api, live)
        fields = terminal(call["sid"], EventType="terminal", ConversationDuration=32)
        if encoding == "json":
            body: dict[str, Any] = {
                "json": fields
                | {
                    "Legs": [
                        {"OnCallDuration": 41, "Status": "completed"},
                        {"OnCallDuration": 32, "Status": "completed"},
                    ]
                }
            }
        else:
            legs = {
                "Legs[0][Status]": "completed",
                "Legs[0][OnCallDuration]": 41,
                "Legs[1][Status]": "",  # not attempted
            }
            body = multipart(fields | legs)

        response = await api.post(callback_path(call["id"]), **body)

        assert response.json()["outcome"] == "applied"
        stored = await get_call(api, call)
        assert (stored["conversation_duration"], stored["on_call_duration"]) == (32, 41)


async def test_fields_in_the_query_string_with_an_empty_body(
    api: httpx.AsyncClient, live: Live
) -> None:
    """WareOnGo's tests POST the fields in the query string: with no body at all, and with an
    empty urlencoded one. Neither is refused, neither is dropped."""
    for headers in ({}, {"content-type": "application/x-www-form-urlencoded"}):
        call = await place(api, live)

        response = await api.post(
            with_query(callback_path(call["id"]), terminal(call["sid"], "busy", Duration=15)),
            headers=headers,
        )

        assert response.status_code == 200, response.text
        assert response.json()["outcome"] == "applied"
        stored = await get_call(api, call)
        assert (stored["status"], stored["duration"]) == ("busy", 15)
        (event,) = await events_of(api, call)
        assert event["content_type"] is None  # the fields came in the query
        assert event["payload"]["Status"] == "busy"
        # Our own `call_id` and `token` are never taken for Exotel's fields.
        assert "token" not in event["payload"]
        assert "call_id" not in event["payload"]


async def test_the_body_wins_over_the_query_string(api: httpx.AsyncClient, live: Live) -> None:
    call = await place(api, live)

    response = await api.post(
        with_query(callback_path(call["id"]), {"Status": "busy", "Duration": "7"}),
        **multipart(terminal(call["sid"], "completed")),
    )

    assert response.json()["outcome"] == "applied"
    stored = await get_call(api, call)
    assert (stored["status"], stored["duration"]) == ("completed", 7)


async def test_a_flow_callback_is_a_get_with_dial_call_status(
    api: httpx.AsyncClient, live: Live
) -> None:
    """nammayatri's Exotel handler: a GET to the account-wide URL, `DialCallStatus`,
    `CallDuration`, `DialCallDuration`, `RecordingUrl`, `Legs[0][OnCallDuration]`."""
    call = await place(api, live)
    flow = {
        "CallSid": call["sid"],
        "DialCallStatus": "completed",
        "CallDuration": "62",
        "DialCallDuration": "45",
        "RecordingUrl": RECORDING,
        "Legs[0][OnCallDuration]": "50",
        "DateUpdated": exotel_clock(40),
    }

    response = await api.get(with_query(callback_path(None), flow))

    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "applied"
    stored = await get_call(api, call)
    assert stored["status"] == "completed"
    assert stored["recording_url"] == RECORDING
    durations = (stored["duration"], stored["conversation_duration"], stored["on_call_duration"])
    assert durations == (62, 45, 50)
    (event,) = await events_of(api, call)
    assert (event["method"], event["status"]) == ("GET", "completed")


@pytest.mark.parametrize("field", ["DialCallStatus", "CallStatus"])
async def test_a_post_naming_its_status_otherwise(
    api: httpx.AsyncClient, live: Live, field: str
) -> None:
    call = await place(api, live)
    fields = {"CallSid": call["sid"], field: "no-answer", "RecordingUrl": ""}

    response = await api.post(callback_path(call["id"]), **multipart(fields))

    assert response.json()["outcome"] == "applied"
    assert (await get_call(api, call))["status"] == "no-answer"


async def test_status_is_believed_before_the_flow_names(api: httpx.AsyncClient, live: Live) -> None:
    call = await place(api, live)
    fields = terminal(call["sid"], "completed", DialCallStatus="busy", CallStatus="failed")

    await api.post(callback_path(call["id"]), **multipart(fields))

    assert (await get_call(api, call))["status"] == "completed"


async def test_an_answered_event_is_news_and_says_when(api: httpx.AsyncClient, live: Live) -> None:
    """An `answered` event carries Status=in-progress: the status does not move, but the
    customer picked up, and the call says when."""
    call = await place(api, live)
    answered = {
        "CallSid": call["sid"],
        "EventType": "answered",
        "Status": "in-progress",
        "DateUpdated": exotel_clock(1),
        "RecordingUrl": "",
        "ConversationDuration": "0",
    }

    first = await api.post(callback_path(call["id"]), **multipart(answered))
    again = await api.post(callback_path(call["id"]), **multipart(answered))
    end = await api.post(
        callback_path(call["id"]),
        **multipart(terminal(call["sid"], EventType="terminal", ConversationDuration=32)),
    )

    assert [r.json()["outcome"] for r in (first, again, end)] == [
        "applied",
        "duplicate",
        "applied",
    ]
    stored = await get_call(api, call)
    assert stored["answered_at"] == in_ist(answered["DateUpdated"])
    assert (stored["status"], stored["conversation_duration"]) == ("completed", 32)


@pytest.mark.parametrize("event_type", ["Dial", "Terminal"])
async def test_an_event_type_seen_spelled_otherwise_is_kept_and_ignored(
    api: httpx.AsyncClient, live: Live, event_type: str
) -> None:
    call = await place(api, live)

    response = await api.post(
        callback_path(call["id"]), **multipart(terminal(call["sid"], EventType=event_type))
    )

    assert response.status_code == 200
    assert response.json()["outcome"] == "ignored"
    assert (await get_call(api, call))["status"] == "in-progress"
    assert [e["event_type"] for e in await events_of(api, call)] == [event_type]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"RecordingUrl": "", "DateUpdated": "2024-09-16 15:51:00"}, "Status"),
        ({"Status": "free"}, "Status"),
        ({"DialCallStatus": "ringing-ish"}, "DialCallStatus"),
    ],
)
async def test_a_callback_without_a_readable_status_is_kept_and_refused(
    api: httpx.AsyncClient, live: Live, fields: dict[str, str], field: str
) -> None:
    """Never acknowledged as handled: 422 naming what is missing, and kept raw on its call."""
    call = await place(api, live)

    response = await api.post(
        callback_path(call["id"]), **multipart({"CallSid": call["sid"]} | fields)
    )

    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["outcome"]) == ("unreadable_callback", "unreadable")
    assert [detail["field"] for detail in error["details"]] == [field]
    assert (await get_call(api, call))["status"] == "in-progress"
    (event,) = await events_of(api, call)
    assert event["outcome"] == "unreadable"
    assert event["payload"] == {"CallSid": call["sid"]} | fields
    assert event["receipt_id"] == error["receipt_id"]


async def test_an_account_wide_callback_matching_no_call_is_kept_and_refused(
    api: httpx.AsyncClient, live: Live
) -> None:
    response = await api.get(with_query(callback_path(None), {"DialCallStatus": "completed"}))

    assert response.status_code == 422
    error = response.json()["error"]
    assert [detail["field"] for detail in error["details"]] == ["CallSid"]
    engine = create_engine(live.database_url)
    async with create_sessionmaker(engine)() as session:
        stored = await session.scalar(
            select(Receipt).where(Receipt.receipt_id == uuid.UUID(error["receipt_id"]))
        )
    await engine.dispose()
    assert stored is not None
    assert (stored.outcome, stored.method, stored.call_id) == ("unreadable", "GET", None)
    assert stored.payload == {"DialCallStatus": "completed"}


async def test_a_flow_callback_for_a_sid_not_known_yet_is_kept(
    api: httpx.AsyncClient, live: Live
) -> None:
    """Stored (200) for the call that will have the SID: test_status_callbacks.py shows it
    applied once one does."""
    response = await api.get(
        with_query(callback_path(None), {"CallSid": "not-known-yet", "DialCallStatus": "busy"})
    )
    assert (response.status_code, response.json()["outcome"]) == (200, "unknown_sid")
