"""Exotel's StatusCallback (app/exotel/status_callback.py) in each shape docs/exotel.md describes:
the connect callback's three encodings, Legs as an array or flattened, and a flow's callback
with `DialCallStatus`, `CallStatus`, `CallDuration` and `DialCallDuration`."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from app.exotel.status_callback import Leg, StatusCallback, parse_status_callback
from tests.support.exotel_double import TERMINAL_CALLBACK_EXAMPLE

PLUS_0530 = timezone(timedelta(hours=5, minutes=30))


TERMINAL_JSON = TERMINAL_CALLBACK_EXAMPLE
RECORDING = TERMINAL_JSON["RecordingUrl"]


def test_json_terminal_callback() -> None:
    callback = parse_status_callback(TERMINAL_JSON)
    assert callback == StatusCallback(
        call_sid="492205107c5fb48f4ac25d1f77759339",
        status="completed",
        status_field="Status",
        event_type="terminal",
        recording_url=RECORDING,
        date_updated_raw="2019-04-08 03:18:35",
        duration=None,
        duration_field=None,
        conversation_duration=32,
        conversation_duration_field="ConversationDuration",
        legs=[
            Leg(status="completed", on_call_duration=41),
            Leg(status="completed", on_call_duration=32),
        ],
    )
    assert callback.date_updated == datetime(2019, 4, 8, 3, 18, 35, tzinfo=PLUS_0530)
    assert callback.on_call_duration == 41  # the customer's leg, the first


def test_flattened_legs_of_a_form_callback() -> None:
    # Multipart and urlencoded bodies arrive as strings, Legs flattened, in any key order.
    form = {k: str(v) for k, v in TERMINAL_JSON.items() if k != "Legs"} | {
        "Legs[1][Status]": "",
        "Legs[0][Status]": "completed",
        "Legs[0][OnCallDuration]": "12",
    }
    callback = parse_status_callback(form)
    assert callback.legs == [
        Leg(status="completed", on_call_duration=12),
        Leg(status=None, on_call_duration=None),
    ]
    assert (callback.call_sid, callback.status, callback.conversation_duration) == (
        "492205107c5fb48f4ac25d1f77759339",
        "completed",
        32,
    )


def test_callback_with_only_the_fields_always_sent() -> None:
    callback = parse_status_callback(
        {
            "CallSid": "x1g",
            "Status": "busy",
            "RecordingUrl": "",
            "DateUpdated": "2019-04-08 03:18:35",
        }
    )
    assert callback == StatusCallback(
        call_sid="x1g",
        status="busy",
        status_field="Status",
        event_type=None,
        recording_url=None,
        date_updated_raw="2019-04-08 03:18:35",
        duration=None,
        duration_field=None,
        conversation_duration=None,
        conversation_duration_field=None,
        legs=[],
    )


def test_answered_event() -> None:
    callback = parse_status_callback(
        {"CallSid": "x1g", "EventType": "answered", "Status": "in-progress", "RecordingUrl": ""}
    )
    assert (callback.event_type, callback.status) == ("answered", "in-progress")


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("Completed", "completed"),
        ("COMPLETED", "completed"),
        ("No-Answer", "no-answer"),
        (" busy ", "busy"),
        ("failed", "failed"),
        ("", None),
        (None, None),
    ],
)
def test_callback_status_is_lower_case(raw: str | None, status: str | None) -> None:
    assert parse_status_callback({"CallSid": "x1g", "Status": raw}).status == status


@pytest.mark.parametrize("recording_url", ["", "  ", None])
def test_empty_recording_url_is_none(recording_url: str | None) -> None:
    payload = {"CallSid": "x1g", "Status": "no-answer", "RecordingUrl": recording_url}
    assert parse_status_callback(payload).recording_url is None


@pytest.mark.parametrize(
    ("raw", "seconds"), [(32, 32), ("32", 32), ("32.0", 32), ("0", 0), ("", None), (None, None)]
)
def test_conversation_duration_from_number_or_string(raw: Any, seconds: int | None) -> None:
    payload = {"CallSid": "x1g", "Status": "completed", "ConversationDuration": raw}
    assert parse_status_callback(payload).conversation_duration == seconds


@pytest.mark.parametrize(
    "raw",
    # float() reads `1e3`, `1_000` and other scripts' digits, and `true` is an int to Python;
    # Exotel writes none of them.
    [
        *("Infinity", "-Infinity", "1e999", "1e3", "1_000", "\u0661\u0662", "\uff11\uff12"),
        *(True, {}, -5, "-5", -5.0, "12."),  # nothing Exotel counts is negative
    ],
)
def test_an_unreadable_callback_duration_is_none(raw: Any) -> None:
    payload = {"CallSid": "x1g", "Status": "completed", "ConversationDuration": raw}
    assert parse_status_callback(payload).conversation_duration is None


def test_a_flow_callback_names_its_outcome_and_durations_otherwise() -> None:
    """nammayatri's Exotel handler reads these from a flow's GET."""
    callback = parse_status_callback(
        {
            "CallSid": "x1g",
            "DialCallStatus": "no-answer",
            "CallDuration": "62",
            "DialCallDuration": "45",
            "Legs[0][OnCallDuration]": "50",
        }
    )
    assert (callback.status, callback.status_field) == ("no-answer", "DialCallStatus")
    assert (callback.duration, callback.conversation_duration) == (62, 45)
    assert (callback.duration_field, callback.conversation_duration_field) == (
        "CallDuration",
        "DialCallDuration",
    )
    assert callback.on_call_duration == 50


@pytest.mark.parametrize(
    ("fields", "status", "field"),
    [
        (
            {"Status": "busy", "CallStatus": "failed", "DialCallStatus": "completed"},
            "busy",
            "Status",
        ),
        (
            {"Status": "", "CallStatus": "failed", "DialCallStatus": "completed"},
            "failed",
            "CallStatus",
        ),
        ({"DialCallStatus": "completed"}, "completed", "DialCallStatus"),
        ({"Status": " "}, None, None),
    ],
)
def test_status_is_believed_first_then_the_flow_names(
    fields: dict[str, str], status: str | None, field: str | None
) -> None:
    callback = parse_status_callback({"CallSid": "x1g"} | fields)
    assert (callback.status, callback.status_field) == (status, field)


def test_duration_is_believed_before_a_flow_call_duration() -> None:
    payload = {"Status": "completed", "Duration": "169", "CallDuration": "12"}
    payload |= {"ConversationDuration": "32", "DialCallDuration": "5"}
    callback = parse_status_callback(payload)
    assert (callback.duration, callback.conversation_duration) == (169, 32)


@pytest.mark.parametrize("event_type", ["Terminal", "Dial", "ANSWERED"])
def test_an_event_type_spelled_otherwise_is_not_taken_for_a_known_one(event_type: str) -> None:
    callback = parse_status_callback(
        {"CallSid": "x1g", "Status": "completed", "EventType": event_type}
    )
    assert callback.event_type == event_type
    assert not callback.known_event
    assert not callback.answered


def test_what_a_callback_lacks_is_named_in_exotels_terms() -> None:
    nothing = parse_status_callback({})
    assert [field for field, _ in nothing.missing(call_named=False)] == ["CallSid", "Status"]
    # The callback URL names the call: no CallSid is needed to find it.
    assert [field for field, _ in nothing.missing(call_named=True)] == ["Status"]
    assert (
        parse_status_callback({"CallSid": "x", "DialCallStatus": "busy"}).missing(call_named=False)
        == []
    )
