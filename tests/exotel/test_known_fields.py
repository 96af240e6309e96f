"""A request's fields trimmed to Exotel's (app/exotel/known_fields.py): what is kept of a
callback or a Passthru request no call has yet. Nothing Exotel sends is lost, so what is read
of it is what was read of it whole; anything else is dropped, and no value kept is large."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from app.exotel.known_fields import KNOWN_FIELDS, LONGEST_VALUE, trimmed
from app.exotel.passthru import parse_passthru
from app.exotel.status_callback import parse_status_callback
from tests.support.exotel_double import TERMINAL_CALLBACK_EXAMPLE

FLOW_CALLBACK = {  # a flow's callback on the account-wide URL, a GET (docs/exotel.md)
    "CallSid": "492205107c5fb48f4ac25d1f77759339",
    "DialCallStatus": "completed",
    "CallDuration": "41",
    "DialCallDuration": "32",
    "RecordingUrl": "",
    "Legs[0][OnCallDuration]": "12",
    "Legs[0][Status]": "completed",
    "Legs[1][Status]": "",
}
PASSTHRU = {
    "CallSid": "492205107c5fb48f4ac25d1f77759339",
    "From": "09052161110",
    "To": "08030752400",
    "Direction": "outbound-api",
    "CurrentTime": "2026-12-02 10:20:41",
    "digits": '"1"',
    "CustomField": "order-123",
    "RecordingUrl": "",
}


def test_what_exotel_sends_is_kept_whole() -> None:
    for fields in (TERMINAL_CALLBACK_EXAMPLE, FLOW_CALLBACK, PASSTHRU):
        assert trimmed(fields) == fields


def test_other_fields_nested_or_long_values_and_legs_past_the_second_are_dropped() -> None:
    sent: dict[str, Any] = {
        "CallSid": "492205107c5fb48f4ac25d1f77759339",
        "Status": "busy",
        "Padding": "x" * 100_000,
        "RecordingUrl": "https://rec.test/" + "a" * LONGEST_VALUE,
        "To": {"nested": ["x"] * 1000},
        "Legs": [
            {"Status": "busy", "OnCallDuration": 3, "Extra": "x" * 1000},
            "not a leg",
            {"Status": ["busy"]},
            {"Status": "busy"},
        ],
    }
    assert trimmed(sent) == {
        "CallSid": "492205107c5fb48f4ac25d1f77759339",
        "Status": "busy",
        "Legs": [{"Status": "busy", "OnCallDuration": 3}, {}],
    }
    flattened = {
        "Legs[0][Status]": "busy",
        "Legs[0][Extra]": "x",
        "Legs[2][Status]": "busy",
        "Legs[0][Status]x": "busy",
        "Legs[" + "9" * 5000 + "][Status]": "busy",
    }
    assert trimmed(flattened) == {"Legs[0][Status]": "busy"}


_plain = st.one_of(st.none(), st.integers(-(10**6), 10**6), st.text(max_size=40))
_leg = st.fixed_dictionaries({}, optional={"Status": _plain, "OnCallDuration": _plain})
# What Exotel may send, in either shape of the legs.
_exotel = st.fixed_dictionaries(
    {},
    optional=dict.fromkeys(sorted(KNOWN_FIELDS - {"Legs"}), _plain)
    | {"Legs": st.lists(_leg, max_size=2)}
    | {f"Legs[{i}][{name}]": _plain for i in (0, 1) for name in ("Status", "OnCallDuration")},
)
_other_names = st.text(max_size=20).filter(
    lambda name: name not in KNOWN_FIELDS and not name.startswith("Legs[")
)
_any = st.one_of(
    _plain,
    st.just("x" * (LONGEST_VALUE + 1)),
    st.lists(_plain, max_size=3),
    st.dictionaries(st.text(max_size=3), _plain, max_size=3),
)


@given(_exotel, st.dictionaries(_other_names, _any))
def test_exotels_fields_are_kept_and_read_the_same_and_nothing_else_is(
    exotel: dict[str, Any], others: dict[str, Any]
) -> None:
    sent = others | exotel
    kept = trimmed(sent)
    assert kept == exotel
    assert parse_status_callback(kept) == parse_status_callback(sent)
    assert parse_passthru(kept) == parse_passthru(sent)
