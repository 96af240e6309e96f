"""Exotel's wire formats (app/exotel/wire.py), parsed from bodies shaped like the real ones in
docs/exotel.md: XML or JSON whatever was asked for, empty values as `null`, `""` or empty
elements, numbers as `11` or `"11"`, SIDs that are not hex."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from app.exotel.wire import (
    ExotelCall,
    RestException,
    UnreadableBody,
    format_exotel_time,
    parse_exotel_time,
    parse_response,
)

PLUS_0530 = timezone(timedelta(hours=5, minutes=30))

# Exotel's documented success body, as Exotel sends it (root `TwilioResponse`).
CONNECT_XML = b"""<TwilioResponse>
 <Call>
  <Sid>55cd271a8e90cf3f3d9d85e06f56189g</Sid><ParentCallSid/>
  <DateCreated>2024-09-16 15:50:02</DateCreated><DateUpdated>2024-09-16 15:50:02</DateUpdated>
  <AccountSid>acme1</AccountSid><To/><From>0816XXXXX99</From><PhoneNumberSid>0951XXXXX63</PhoneNumberSid>
  <Status>in-progress</Status><StartTime>2024-09-16 15:50:02</StartTime><EndTime/><Duration/><Price/>
  <Direction>outbound-api</Direction><AnsweredBy/><ForwardedFrom/><CallerName/>
  <Uri>/v1/Accounts/acme1/Calls/55cd271a8e90cf3f3d9d85e06f56189g</Uri><RecordingUrl/>
 </Call>
</TwilioResponse>"""  # noqa: E501 (verbatim from Exotel's documentation)

CONNECT_CALL = ExotelCall(
    sid="55cd271a8e90cf3f3d9d85e06f56189g",
    status="in-progress",
    from_number="0816XXXXX99",
    to_number=None,
    caller_id="0951XXXXX63",
    date_created_raw="2024-09-16 15:50:02",
    date_updated_raw="2024-09-16 15:50:02",
    start_time_raw="2024-09-16 15:50:02",
    direction="outbound-api",
)


def call_fields(sid: str, **overrides: Any) -> dict[str, Any]:
    """A JSON `Call` object with every field the XML example has, empty ones as `null`."""
    return {
        "Sid": sid,
        "ParentCallSid": None,
        "DateCreated": "2024-09-16 15:50:02",
        "DateUpdated": "2024-09-16 15:50:02",
        "AccountSid": "acme1",
        "To": None,
        "From": "0816XXXXX99",
        "PhoneNumberSid": "0951XXXXX63",
        "Status": "in-progress",
        "StartTime": "2024-09-16 15:50:02",
        "EndTime": None,
        "Duration": None,
        "Price": None,
        "Direction": "outbound-api",
        "AnsweredBy": None,
        "ForwardedFrom": None,
        "CallerName": None,
        "Uri": f"/v1/Accounts/acme1/Calls/{sid}",
        "RecordingUrl": None,
    } | overrides


def as_json(document: Any) -> bytes:
    return json.dumps(document).encode()


def only_call(body: bytes) -> ExotelCall:
    parsed = parse_response(body)
    assert parsed.error is None
    assert len(parsed.calls) == 1, parsed.calls
    return parsed.calls[0]


# --- Success bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(CONNECT_XML, id="xml"),
        pytest.param(b'<?xml version="1.0" encoding="UTF-8"?>\n' + CONNECT_XML, id="xml-prolog"),
        pytest.param(b"\r\n  " + CONNECT_XML + b"\n\n", id="xml-padded"),
        pytest.param(as_json({"Call": call_fields(CONNECT_CALL.sid)}), id="json-nulls"),
        pytest.param(
            as_json({"Call": call_fields(CONNECT_CALL.sid, To="", EndTime="", Price="")}),
            id="json-empty-strings",
        ),
    ],
)
def test_connect_success_body_is_read_in_either_format(body: bytes) -> None:
    assert only_call(body) == CONNECT_CALL


def test_zone_less_times_of_a_call_are_ist() -> None:
    call = only_call(CONNECT_XML)
    expected = datetime(2024, 9, 16, 15, 50, 2, tzinfo=PLUS_0530)
    assert call.date_created == expected
    assert call.date_updated == expected
    assert call.date_updated is not None
    assert call.date_updated.utcoffset() == timedelta(hours=5, minutes=30)


@pytest.mark.parametrize(
    "sid", ["55cd271a8e90cf3f3d9d85e06f56189g", "a7f2c9e1d4b8e6f0a3c5d7e9b1f3197m"]
)
@pytest.mark.parametrize("encode", ["xml", "json"])
def test_sids_are_opaque_not_hex(sid: str, encode: str) -> None:
    if encode == "xml":
        body = f"<TwilioResponse><Call><Sid>{sid}</Sid></Call></TwilioResponse>".encode()
    else:
        body = as_json({"Call": {"Sid": sid}})
    assert only_call(body).sid == sid


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            b"<TwilioResponse><Call><Sid>x1g</Sid><To/><Price></Price><Status> </Status>"
            b"<RecordingUrl>\n</RecordingUrl></Call></TwilioResponse>",
            id="xml-empty-elements",
        ),
        pytest.param(
            as_json({"Call": {"Sid": "x1g", "To": None, "Price": None, "Status": None}}),
            id="json-null",
        ),
        pytest.param(
            as_json(
                {"Call": {"Sid": "x1g", "To": "", "Price": "", "Status": "", "RecordingUrl": ""}}
            ),
            id="json-empty-string",
        ),
        pytest.param(as_json({"Call": {"Sid": "x1g"}}), id="json-missing"),
    ],
)
def test_every_spelling_of_nothing_is_none(body: bytes) -> None:
    call = only_call(body)
    assert (call.to_number, call.price, call.status, call.recording_url) == (None,) * 4


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(as_json({"Call": {"Sid": "x1g", "Duration": 11}}), id="json-number"),
        pytest.param(as_json({"Call": {"Sid": "x1g", "Duration": "11"}}), id="json-string"),
        pytest.param(
            b"<TwilioResponse><Call><Sid>x1g</Sid><Duration>11</Duration></Call></TwilioResponse>",
            id="xml",
        ),
    ],
)
def test_numbers_come_as_numbers_or_strings(body: bytes) -> None:
    assert only_call(body).duration == 11


@pytest.mark.parametrize("to", ["", None, "08030752400"])
def test_to_of_a_flow_call_is_empty_or_the_exophone(to: str | None) -> None:
    call = only_call(as_json({"Call": call_fields("x1g", To=to)}))
    assert call.to_number == (to or None)


def test_call_details_carry_the_conversation_duration() -> None:
    details = {
        "ConversationDuration": "32",
        "Leg1Status": "completed",
        "Leg2Status": "completed",
        "Legs": [{"Leg": {"Id": 1, "OnCallDuration": 41}}, {"Leg": {"Id": 2}}],
    }
    fields = call_fields(
        "x1g",
        Status="completed",
        EndTime="2024-09-16 15:51:00",
        Duration="58",
        Price="0.6",
        RecordingUrl="https://recordings.example/x1g.mp3",
        Details=details,
    )
    call = only_call(as_json({"Call": fields}))
    assert (call.status, call.duration, call.conversation_duration) == ("completed", 58, 32)
    assert (call.end_time_raw, call.price) == ("2024-09-16 15:51:00", Decimal("0.6"))
    assert call.recording_url == "https://recordings.example/x1g.mp3"


def test_xml_call_details_carry_the_conversation_duration() -> None:
    body = (
        b"<TwilioResponse><Call><Sid>x1g</Sid><Status>completed</Status><Duration>58</Duration>"
        b"<Details><ConversationDuration>32</ConversationDuration><Leg1Status>completed"
        b"</Leg1Status><Leg2Status>completed</Leg2Status></Details></Call></TwilioResponse>"
    )
    call = only_call(body)
    assert (call.duration, call.conversation_duration) == (58, 32)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            as_json({"Calls": [call_fields("a1g"), call_fields("b2m"), call_fields("c3g")]}),
            id="json",
        ),
        pytest.param(
            b"<TwilioResponse><Call><Sid>a1g</Sid></Call><Call><Sid>b2m</Sid></Call>"
            b"<Call><Sid>c3g</Sid></Call></TwilioResponse>",
            id="xml",
        ),
        pytest.param(
            b"<TwilioResponse><Calls><Call><Sid>a1g</Sid></Call><Call><Sid>b2m</Sid></Call>"
            b"<Call><Sid>c3g</Sid></Call></Calls></TwilioResponse>",
            id="xml-wrapped",
        ),
    ],
)
def test_bulk_details_give_every_call_in_order(body: bytes) -> None:
    parsed = parse_response(body)
    assert parsed.error is None
    assert [call.sid for call in parsed.calls] == ["a1g", "b2m", "c3g"]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(as_json({"Calls": []}), id="json-empty-page"),
        pytest.param(b"<TwilioResponse><Calls/></TwilioResponse>", id="xml-empty-page"),
        pytest.param(as_json({"Call": {"Sid": None, "Status": "in-progress"}}), id="json-null-sid"),
        pytest.param(as_json({"Call": {"Sid": ""}}), id="json-empty-sid"),
        pytest.param(b"<TwilioResponse><Call><Sid/></Call></TwilioResponse>", id="xml-empty-sid"),
        pytest.param(as_json({}), id="json-empty-object"),
    ],
)
def test_a_body_without_a_sid_has_no_calls(body: bytes) -> None:
    parsed = parse_response(body)
    assert (parsed.calls, parsed.error) == ([], None)


# --- Bulk pages: Metadata.NextPageUri ---------------------------------------------------------

NEXT_PAGE = "/v1/Accounts/acme1/Calls.json?PageSize=2&After=YTFn"


def metadata(next_page_uri: Any) -> dict[str, Any]:
    return {
        "Total": 3,
        "PageSize": 2,
        "FirstPageUri": "/v1/Accounts/acme1/Calls.json?PageSize=2",
        "PrevPageUri": None,
        "NextPageUri": next_page_uri,
    }


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            as_json({"Metadata": metadata(NEXT_PAGE), "Calls": [call_fields("a1g")]}), id="json"
        ),
        pytest.param(
            as_json({"Calls": [call_fields("a1g")], "Metadata": metadata(NEXT_PAGE)}),
            id="json-metadata-last",
        ),
        pytest.param(
            b'<?xml version="1.0" encoding="UTF-8"?>\n<TwilioResponse><Metadata><Total>3</Total>'
            b"<PageSize>2</PageSize><FirstPageUri>/v1/Accounts/acme1/Calls.json?PageSize=2"
            b"</FirstPageUri><PrevPageUri/><NextPageUri>"
            b"/v1/Accounts/acme1/Calls.json?PageSize=2&amp;After=YTFn</NextPageUri></Metadata>"
            b"<Calls><Call><Sid>a1g</Sid></Call></Calls></TwilioResponse>",
            id="xml",
        ),
        pytest.param(
            b"<TwilioResponse><Calls><Call><Sid>a1g</Sid></Call></Calls><Metadata><NextPageUri>"
            b" /v1/Accounts/acme1/Calls.json?PageSize=2&amp;After=YTFn\n</NextPageUri>"
            b"</Metadata></TwilioResponse>",
            id="xml-metadata-last-padded",
        ),
    ],
)
def test_a_bulk_page_gives_its_next_page_uri(body: bytes) -> None:
    parsed = parse_response(body)
    assert parsed.error is None
    assert [call.sid for call in parsed.calls] == ["a1g"]
    assert parsed.next_page_uri == NEXT_PAGE


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(as_json({"Metadata": metadata(None), "Calls": []}), id="json-null"),
        pytest.param(as_json({"Metadata": metadata(""), "Calls": []}), id="json-empty"),
        pytest.param(as_json({"Metadata": metadata("  "), "Calls": []}), id="json-blank"),
        pytest.param(as_json({"Metadata": metadata(7), "Calls": []}), id="json-number"),
        pytest.param(
            as_json({"Metadata": metadata({"Uri": NEXT_PAGE}), "Calls": []}), id="json-object"
        ),
        pytest.param(as_json({"Metadata": {"Total": 0}, "Calls": []}), id="json-absent"),
        pytest.param(as_json({"Metadata": NEXT_PAGE, "Calls": []}), id="json-not-an-object"),
        pytest.param(as_json({"Calls": []}), id="json-no-metadata"),
        pytest.param(
            b"<TwilioResponse><Metadata><NextPageUri/></Metadata><Calls/></TwilioResponse>",
            id="xml-empty-element",
        ),
        pytest.param(
            b"<TwilioResponse><Metadata><Total>0</Total></Metadata><Calls/></TwilioResponse>",
            id="xml-absent",
        ),
        pytest.param(b"<TwilioResponse><Calls/></TwilioResponse>", id="xml-no-metadata"),
        pytest.param(CONNECT_XML, id="xml-single-call"),
    ],
)
def test_the_last_page_has_no_next_page_uri(body: bytes) -> None:
    parsed = parse_response(body)
    assert parsed.error is None
    assert parsed.next_page_uri is None


# --- Failure bodies ---------------------------------------------------------------------------

TRAI = "Call to [01234] cannot be made because of TRAI NDNC regulations"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            b"<TwilioResponse><RestException><Status>403</Status>\n <Message>"
            + TRAI.encode()
            + b"</Message></RestException></TwilioResponse>",
            RestException(status=403, message=TRAI, code=None),
            id="xml-status-and-message",
        ),
        pytest.param(
            b"<TwilioResponse><RestException><Status>503</Status><Message>Service Unavailable; "
            b"</Message><Code>35008</Code></RestException></TwilioResponse>",
            RestException(status=503, message="Service Unavailable", code=35008),
            id="xml-with-code",
        ),
        pytest.param(
            b'{"RestException": '
            b'{"Status": 503, "Message": "Service Unavailable; ", "Code": 35008}}',
            RestException(status=503, message="Service Unavailable", code=35008),
            id="json-503",
        ),
        pytest.param(
            b'{"RestException": {"Status": 400, '
            b'"Message": "Invalid Call Parameters: No \'From\' specified"}}',
            RestException(
                status=400, message="Invalid Call Parameters: No 'From' specified", code=None
            ),
            id="json-code-missing",
        ),
        pytest.param(
            b'{"RestException": '
            b'{"Status": "401", "Message": "Authentication failed; ", "Code": null}}',
            RestException(status=401, message="Authentication failed", code=None),
            id="json-strings-and-null-code",
        ),
    ],
)
def test_rest_exception_is_read_in_every_shape(body: bytes, expected: RestException) -> None:
    parsed = parse_response(body)
    assert parsed.error == expected
    assert parsed.calls == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            b"<TwilioResponse><RestException><Status>500</Status></RestException></TwilioResponse>",
            id="xml",
        ),
        pytest.param(as_json({"RestException": {"Status": 500, "Message": None}}), id="json-null"),
        pytest.param(
            as_json({"RestException": {"Status": 500, "Message": "; "}}), id="json-semicolon"
        ),
    ],
)
def test_rest_exception_without_message_still_has_one(body: bytes) -> None:
    error = parse_response(body).error
    assert error is not None
    assert error.status == 500
    assert isinstance(error.message, str)
    assert error.message.strip(" ;")


# --- Unreadable and hostile bodies ------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<TwilioResponse><Call><Sid>&lol9;</Sid></Call></TwilioResponse>"""

# One small internal entity: harmless in itself, but a parser that expands it would expand any.
ONE_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY sid "expanded-sid">]>
<TwilioResponse><Call><Sid>&sid;</Sid></Call></TwilioResponse>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY sid SYSTEM "file:///etc/hostname">]>
<TwilioResponse><Call><Sid>&sid;</Sid></Call></TwilioResponse>"""


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"  \r\n ", id="blank"),
        pytest.param(b"OK", id="plain-text"),
        pytest.param(b"Service Unavailable", id="plain-text-error"),
        pytest.param(
            b"<html><body><h1>502 Bad Gateway</h1><hr><center>nginx</center></body></html>",
            id="html-garbage",
        ),
        pytest.param(b"<<<>>>", id="angle-brackets"),
        pytest.param(b"<TwilioResponse><Call><Sid>55cd271a8e", id="truncated-xml"),
        pytest.param(
            b'{"Call": {"Sid": "55cd271a8e90cf3f3d9d85e06f56189g", "Sta', id="truncated-json"
        ),
        pytest.param(b"{'Call': {'Sid': 'x1g'}}", id="json-single-quotes"),
        pytest.param(as_json([{"Call": {"Sid": "x1g"}}]), id="json-array"),
        pytest.param(as_json([]), id="json-empty-array"),
        pytest.param(as_json("x1g"), id="json-string"),
        pytest.param(as_json(11), id="json-number"),
        pytest.param(as_json(None), id="json-null"),
        pytest.param(as_json(True), id="json-true"),
        pytest.param(b"\xff\xfe\x00<\x00", id="binary"),
    ],
)
def test_unreadable_bodies_raise_unreadable_body(body: bytes) -> None:
    with pytest.raises(UnreadableBody):
        parse_response(body)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(BILLION_LAUGHS, id="billion-laughs"),
        pytest.param(ONE_ENTITY, id="internal-entity"),
        pytest.param(EXTERNAL_ENTITY, id="external-entity"),
    ],
)
def test_xml_entities_are_refused_not_expanded(body: bytes) -> None:
    with pytest.raises(UnreadableBody):
        parse_response(body)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="json"),
        pytest.param(
            b"<TwilioResponse><Call><Sid>x1g</Sid>"
            + b"<Details>" * 5_000
            + b"</Details>" * 5_000
            + b"</Call></TwilioResponse>",
            id="xml",
        ),
    ],
)
def test_deeply_nested_bodies_are_unreadable(body: bytes) -> None:
    with pytest.raises(UnreadableBody):
        parse_response(body)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"Call": {"Sid": "x1g", "Duration": "eleven"}}', id="word"),
        pytest.param(b'{"Call": {"Sid": "x1g", "Duration": "nan"}}', id="nan"),
        pytest.param(b'{"Call": {"Sid": "x1g", "Duration": "Infinity"}}', id="inf-string"),
        pytest.param(b'{"Call": {"Sid": "x1g", "Duration": 1e400}}', id="inf-number"),
    ],
)
def test_an_unreadable_number_is_none(body: bytes) -> None:
    assert only_call(body).duration is None


# --- Times ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-09-16 15:50:02", datetime(2024, 9, 16, 15, 50, 2, tzinfo=PLUS_0530)),
        ("2019-04-08 03:17:59", datetime(2019, 4, 7, 21, 47, 59, tzinfo=UTC)),
        (" 2019-04-08 03:17:59\n", datetime(2019, 4, 8, 3, 17, 59, tzinfo=PLUS_0530)),
    ],
)
def test_zone_less_time_is_ist(raw: str, expected: datetime) -> None:
    parsed = parse_exotel_time(raw)
    assert parsed == expected
    assert parsed is not None
    assert parsed.utcoffset() == timedelta(hours=5, minutes=30)


@pytest.mark.parametrize(
    ("raw", "offset"),
    [
        ("2024-09-16 15:50:02+00:00", timedelta(0)),
        ("2024-09-16T15:50:02Z", timedelta(0)),
        ("2024-09-16 15:50:02-04:00", timedelta(hours=-4)),
        ("2024-09-16 15:50:02+05:30", timedelta(hours=5, minutes=30)),
    ],
)
def test_an_explicit_offset_is_kept(raw: str, offset: timedelta) -> None:
    parsed = parse_exotel_time(raw)
    assert parsed is not None
    assert parsed.utcoffset() == offset
    assert parsed.replace(tzinfo=None) == datetime(2024, 9, 16, 15, 50, 2)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "   ",
        "not a date",
        "2024-13-45 99:00:00",
        "0000-00-00 00:00:00",
        "16/09/2024 15:50",
    ],
)
def test_unreadable_time_is_none(raw: str | None) -> None:
    assert parse_exotel_time(raw) is None


@pytest.mark.parametrize(
    "raw", ["2024-09-16 15:50:02", "2019-04-08 03:17:59", "2024-12-31 23:59:59"]
)
def test_format_is_the_inverse_of_parse(raw: str) -> None:
    parsed = parse_exotel_time(raw)
    assert parsed is not None
    assert format_exotel_time(parsed) == raw


@pytest.mark.parametrize(
    ("instant", "rendered"),
    [
        (datetime(2024, 9, 16, 10, 20, 2, tzinfo=UTC), "2024-09-16 15:50:02"),
        (datetime(2024, 12, 31, 20, 0, 0, 999_999, tzinfo=UTC), "2025-01-01 01:30:00"),
        (
            datetime(2024, 9, 16, 6, 20, 2, tzinfo=timezone(timedelta(hours=-4))),
            "2024-09-16 15:50:02",
        ),
    ],
)
def test_format_renders_any_aware_instant_in_ist(instant: datetime, rendered: str) -> None:
    assert format_exotel_time(instant) == rendered
    assert parse_exotel_time(rendered) == instant.replace(microsecond=0)


@pytest.mark.parametrize(
    ("price", "read"),
    [
        ("0.600", Decimal("0.600")),
        (" 1.2 ", Decimal("1.2")),
        (0.6, Decimal("0.6")),
        (3, Decimal("3")),
        ("0", Decimal("0")),
        ("-0.600", None),
        ("NaN", None),
        ("Infinity", None),
        ("1e3", None),
        ("₹0.60", None),
        ("0,60", None),
        ("١٢", None),
        (True, None),
        ({"amount": 1}, None),
        (float("nan"), None),
    ],
)
def test_price_is_an_amount_or_nothing(price: object, read: Decimal | None) -> None:
    call = ExotelCall.from_fields({"Sid": "x1g", "Price": price})
    assert call is not None
    assert call.price == read
    assert str(call.price_raw) == str(price).strip()
