"""`POST /status-callback`: authentication, the three encodings, and how each callback moves its
call (docs/exotel.md: callbacks come early, twice, out of order, or for SIDs we do not know)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.calls.retention import forget_unmatched_receipts
from app.db.models import Receipt
from tests.conftest import callback_path, place_body
from tests.support.exotel_double import TERMINAL_CALLBACK_EXAMPLE, ExotelDouble, accepted, new_sid
from tests.support.exotel_requests import (
    callback,
    events,
    exotel_clock,
    in_ist,
    kept,
    multipart,
    place,
)

pytestmark = pytest.mark.anyio

TERMINAL_JSON = TERMINAL_CALLBACK_EXAMPLE


@pytest.mark.parametrize("encoding", ["multipart", "urlencoded", "json"])
async def test_each_encoding_completes_the_call(
    client: httpx.AsyncClient, exotel: ExotelDouble, encoding: str
) -> None:
    call = await place(client, exotel)
    ended = exotel_clock(40)
    fields = {k: v for k, v in TERMINAL_JSON.items() if k != "Legs"}
    fields |= {"CallSid": call["sid"], "DateUpdated": ended}
    if encoding == "json":
        body: dict[str, Any] = {"json": fields | {"Legs": TERMINAL_JSON["Legs"]}}
    else:
        flat = {k: str(v) for k, v in fields.items()} | {
            "Legs[0][Status]": "completed",
            "Legs[0][OnCallDuration]": "41",
            "Legs[1][Status]": "",
        }
        body = multipart(flat) if encoding == "multipart" else {"data": flat}

    response = await client.post(callback_path(call["id"]), **body)

    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "applied"
    stored = (await client.get(f"/calls/{call['id']}")).json()
    assert stored["status"] == "completed"
    assert stored["recording_url"] == TERMINAL_JSON["RecordingUrl"]
    assert stored["conversation_duration"] == 32
    # DateUpdated has no zone; Exotel's clock is IST.
    assert stored["date_updated"] == in_ist(ended)
    dispatch, event = await events(client, call["id"])  # Exotel's answer, then the callback
    assert dispatch["kind"] == "dispatch"
    assert event["kind"] == "status_callback"
    assert event["date_updated_raw"] == ended
    assert event["payload"]["CallSid"] == call["sid"]
    assert (
        event["content_type"]
        == {
            "multipart": "multipart/form-data",
            "urlencoded": "application/x-www-form-urlencoded",
            "json": "application/json",
        }[encoding]
    )


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/status-callback", 401, "callback_unauthenticated"),
        ("/status-callback?call_id={id}", 401, "callback_unauthenticated"),
        ("/status-callback?call_id={id}&token=forged", 403, "callback_forbidden"),
        ("/status-callback?call_id={other}&token={token}", 403, "callback_forbidden"),
        ("/status-callback?call_id=not-a-uuid&token={token}", 403, "callback_forbidden"),
        ("/status-callback?token={token}", 403, "callback_forbidden"),  # per-call token, no id
        ("{wrong_secret}", 403, "callback_forbidden"),
    ],
)
async def test_unauthenticated_callbacks_change_nothing(
    client: httpx.AsyncClient, exotel: ExotelDouble, path: str, status: int, code: str
) -> None:
    call = await place(client, exotel)
    token = callback_path(call["id"]).split("token=")[1]
    url = path.format(
        id=call["id"],
        other=uuid.uuid4(),
        token=token,
        wrong_secret=callback_path(call["id"], secret="some-other-secret"),
    )

    response = await client.post(url, **multipart(callback(call["sid"], "completed")))

    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert (await client.get(f"/calls/{call['id']}")).json()["status"] == "in-progress"
    assert await kept(client, call["id"]) == [("dispatch", "applied")]  # the callback is not


async def test_every_configured_secret_is_accepted_during_rotation(
    client: httpx.AsyncClient, exotel: ExotelDouble, settings: Any
) -> None:
    from app.main import create_app
    from tests.conftest import make_settings, serving

    call = await place(client, exotel)
    # Rotate: a new secret first (signs new URLs), the old one still accepted.
    rotated = make_settings(
        settings.database.url, callback_secrets="new-fake-secret,fake-callback-secret"
    )
    app = create_app(rotated, exotel_transport=httpx.MockTransport(exotel.handle))
    async with serving(app) as rotated_client:
        response = await rotated_client.post(
            callback_path(call["id"]), **multipart(callback(call["sid"], "busy"))
        )
    assert response.status_code == 200
    assert (await client.get(f"/calls/{call['id']}")).json()["status"] == "busy"


async def test_callback_before_the_connect_response(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    """Exotel's callback can beat its own answer to Calls/connect: the call id in the URL finds
    the call, the callback teaches us its SID, and the late answer does not undo the end."""
    sid = new_sid()

    async def connect_answering_late(request: httpx.Request) -> httpx.Response:
        from tests.support.exotel_double import form_of

        status_callback = form_of(request)["StatusCallback"].removeprefix("http://exocall.test")
        early = await client.post(status_callback, **multipart(callback(sid, "completed")))
        assert early.status_code == 200
        return accepted(sid)

    exotel.on_connect = connect_answering_late
    response = await client.post("/calls", json=place_body())

    assert response.status_code == 201
    call = response.json()
    assert (call["sid"], call["status"]) == (sid, "completed")
    # Exotel's answer came after, and is kept: its `in-progress` is behind the callback's end.
    assert await kept(client, call["id"]) == [("status_callback", "applied"), ("dispatch", "stale")]


async def test_repeated_callback_changes_nothing(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    call = await place(client, exotel)
    fields = callback(call["sid"], "completed", recording="https://rec.test/1.mp3")

    first = await client.post(callback_path(call["id"]), **multipart(fields))
    after_first = (await client.get(f"/calls/{call['id']}")).json()
    second = await client.post(callback_path(call["id"]), **multipart(fields))
    after_second = (await client.get(f"/calls/{call['id']}")).json()

    assert (first.json()["outcome"], second.json()["outcome"]) == ("applied", "duplicate")
    assert after_first == after_second
    assert [kind for kind, _ in await kept(client, call["id"])] == [
        "dispatch",
        "status_callback",
        "status_callback",  # every callback received is kept
    ]


async def test_late_answered_never_overwrites_a_terminal_status(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    """The status never moves back; that the customer answered, and when, is news whenever it
    comes (so the call ends the same whatever the order)."""
    call = await place(client, exotel)
    ended, picked_up = exotel_clock(40), exotel_clock(10)
    terminal = callback(call["sid"], "completed", date=ended)
    answered = callback(call["sid"], "in-progress", date=picked_up) | {"EventType": "answered"}

    await client.post(callback_path(call["id"]), **multipart(terminal))
    late = await client.post(callback_path(call["id"]), **multipart(answered))
    again = await client.post(callback_path(call["id"]), **multipart(answered))

    assert (late.json()["outcome"], again.json()["outcome"]) == ("applied", "stale")
    stored = (await client.get(f"/calls/{call['id']}")).json()
    assert stored["status"] == "completed"
    assert stored["date_updated"] == in_ist(ended)
    assert stored["answered_at"] == in_ist(picked_up)


async def test_exotels_times_outside_the_window_are_kept_raw_and_not_applied(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    """An `answered` event dated 1970 would be the earliest answer for good; a `DateUpdated` of
    9999 would freeze `date_updated`. Neither is believed: each is kept raw, applied to nothing."""
    call = await place(client, exotel)
    answered = callback(call["sid"], "in-progress", date="1970-01-01 05:30:00")
    first = await client.post(
        callback_path(call["id"]), **multipart(answered | {"EventType": "answered"})
    )
    assert first.json()["outcome"] == "applied"  # news: the customer answered
    far = await client.post(
        callback_path(call["id"]),
        **multipart(callback(call["sid"], "in-progress", date="9999-12-31 23:59:59")),
    )
    assert far.json()["outcome"] == "duplicate"  # nothing it says is believed or new
    ended = exotel_clock(40)
    await client.post(callback_path(call["id"]), **multipart(callback(call["sid"], "busy", ended)))

    stored = (await client.get(f"/calls/{call['id']}")).json()
    assert stored["date_updated"] == in_ist(ended)
    # When the answer arrived: after the call was created, and not in 1970.
    created, answered_at, updated = (
        datetime.fromisoformat(stored[name]) for name in ("created_at", "answered_at", "updated_at")
    )
    assert created <= answered_at <= updated
    kept_raw = [e["date_updated_raw"] for e in await events(client, call["id"])][1:]
    assert kept_raw == ["1970-01-01 05:30:00", "9999-12-31 23:59:59", ended]


# Python's float() reads the first four (12, 12, 1000, 1000); Exotel writes none of them.
@pytest.mark.parametrize("duration", ["١٢", "\uff11\uff12", "1_000", "1e3", True, {}, [12]])
async def test_a_duration_not_in_ascii_digits_is_kept_raw_and_read_as_absent(
    client: httpx.AsyncClient, exotel: ExotelDouble, duration: Any
) -> None:
    call = await place(client, exotel)
    fields = callback(call["sid"], "completed") | {"Duration": duration}
    fields |= {"Legs": [{"Status": "completed", "OnCallDuration": duration}]}
    response = await client.post(callback_path(call["id"]), json=fields)
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "applied"
    stored = (await client.get(f"/calls/{call['id']}")).json()
    assert (stored["status"], stored["duration"], stored["on_call_duration"]) == (
        "completed",
        None,
        None,
    )
    assert (await events(client, call["id"]))[-1]["payload"]["Duration"] == duration


async def test_a_leg_numbered_beyond_any_integer_is_no_failure(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    call = await place(client, exotel)
    fields = callback(call["sid"], "completed") | {f"Legs[{'9' * 5000}][Status]": "completed"}
    response = await client.post(callback_path(call["id"]), data=fields)
    assert response.status_code == 200, response.text
    assert (await client.get(f"/calls/{call['id']}")).json()["status"] == "completed"


async def test_a_different_terminal_status_does_not_replace_the_first(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    call = await place(client, exotel)
    await client.post(callback_path(call["id"]), **multipart(callback(call["sid"], "busy")))
    second = await client.post(
        callback_path(call["id"]), **multipart(callback(call["sid"], "completed"))
    )
    assert second.json()["outcome"] == "stale"
    assert (await client.get(f"/calls/{call['id']}")).json()["status"] == "busy"


async def test_answered_then_terminal(client: httpx.AsyncClient, exotel: ExotelDouble) -> None:
    call = await place(client, exotel)
    answered = callback(call["sid"], "in-progress", date="2024-09-16 15:50:30") | {
        "EventType": "answered",
        "ConversationDuration": "0",
    }
    terminal = callback(call["sid"], "completed", date="2024-09-16 15:51:00") | {
        "EventType": "terminal",
        "ConversationDuration": "32",
    }
    await client.post(callback_path(call["id"]), **multipart(answered))
    await client.post(callback_path(call["id"]), **multipart(terminal))

    stored = (await client.get(f"/calls/{call['id']}")).json()
    assert (stored["status"], stored["conversation_duration"]) == ("completed", 32)


async def test_an_empty_recording_url_never_blanks_a_known_one(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    call = await place(client, exotel)
    with_recording = callback(call["sid"], "completed", recording="https://rec.test/1.mp3")
    await client.post(callback_path(call["id"]), **multipart(with_recording))
    await client.post(callback_path(call["id"]), **multipart(callback(call["sid"], "completed")))
    assert (await client.get(f"/calls/{call['id']}")).json()[
        "recording_url"
    ] == "https://rec.test/1.mp3"


async def test_a_later_duplicate_fills_in_a_missing_recording(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    call = await place(client, exotel)
    await client.post(callback_path(call["id"]), **multipart(callback(call["sid"], "completed")))
    filled = await client.post(
        callback_path(call["id"]),
        **multipart(callback(call["sid"], "completed", recording="https://rec.test/1.mp3")),
    )
    assert filled.json()["outcome"] == "applied"
    assert (await client.get(f"/calls/{call['id']}")).json()[
        "recording_url"
    ] == "https://rec.test/1.mp3"


async def test_unknown_sid_is_stored_and_attached_once_the_call_is_known(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    """A callback on the account-wide URL (set up in a flow) for a call we do not know yet."""
    sid = new_sid()
    early = await client.post(callback_path(None), **multipart(callback(sid, "busy")))
    assert early.status_code == 200
    assert early.json()["outcome"] == "unknown_sid"

    call = await place(client, exotel, sid=sid)

    assert call["status"] == "busy"
    # The callback was received first, and applied once Exotel's answer told its SID.
    assert await kept(client, call["id"]) == [
        ("status_callback", "applied"),
        ("dispatch", "applied"),
    ]


async def test_an_unknown_sid_is_kept_trimmed_to_exotels_fields_and_still_attached(
    client: httpx.AsyncClient,
    exotel: ExotelDouble,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """Anybody with the account-wide URL can send callbacks for SIDs nobody has: what is kept
    of one is Exotel's fields, each of a bounded size, not the whole body. Within its
    retention, it is applied once its call's SID is known."""
    sid = new_sid()
    exotels = callback(sid, "busy") | {"Legs[0][OnCallDuration]": "12"}
    sent = exotels | {
        "Padding": "x" * 500_000,
        "CustomField": "y" * 5000,
        "Legs[0][Padding]": "z" * 1000,
        "Legs[9][Status]": "busy",
    }
    early = await client.post(callback_path(None), **multipart(sent))
    assert (early.status_code, early.json()["outcome"]) == (200, "unknown_sid")
    receipt_id = uuid.UUID(early.json()["receipt_id"])
    async with sessionmaker() as session:
        stored = await session.scalar(select(Receipt).where(Receipt.receipt_id == receipt_id))
    assert stored is not None
    assert stored.payload == exotels

    assert await forget_unmatched_receipts(sessionmaker, days=1) == 0  # recent: kept
    call = await place(client, exotel, sid=sid)

    assert call["status"] == "busy"
    callback_event, _ = await events(client, call["id"])
    assert (callback_event["outcome"], callback_event["payload"]) == ("applied", exotels)


async def test_callback_for_another_calls_sid_is_kept_but_not_applied(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    call = await place(client, exotel)
    response = await client.post(
        callback_path(call["id"]), **multipart(callback(new_sid(), "failed"))
    )
    assert response.json()["outcome"] == "sid_mismatch"
    assert (await client.get(f"/calls/{call['id']}")).json()["status"] == "in-progress"


async def test_an_unknown_status_is_kept_and_refused(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    """`free` has been seen: it is no status Exotel documents, and never taken for one."""
    call = await place(client, exotel)
    response = await client.post(
        callback_path(call["id"]), **multipart(callback(call["sid"], "free"))
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["outcome"]) == ("unreadable_callback", "unreadable")
    assert [d["field"] for d in error["details"]] == ["Status"]
    assert (await client.get(f"/calls/{call['id']}")).json()["status"] == "in-progress"
    assert await kept(client, call["id"]) == [
        ("dispatch", "applied"),
        ("status_callback", "unreadable"),
    ]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        (
            {"content": b"CallSid=x", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        (
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "invalid_json",
        ),
        ({"json": ["CallSid", "x"]}, 422, "validation_error"),
        (
            {
                "content": b"--b\r\nbroken",
                "headers": {"content-type": "multipart/form-data"},
            },
            400,
            "bad_request",
        ),
    ],
)
async def test_malformed_bodies_are_refused_clearly(
    client: httpx.AsyncClient, request_kwargs: dict[str, Any], status: int, code: str
) -> None:
    response = await client.post(callback_path(None), **request_kwargs)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


async def test_account_wide_callback_needs_a_call_sid(client: httpx.AsyncClient) -> None:
    response = await client.post(callback_path(None), data={"Status": "completed"})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "CallSid"


async def test_events_of_an_unknown_call_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get(f"/calls/{uuid.uuid4()}/events")).status_code == 404
