"""ExotelClient (app/exotel/client.py) over an `httpx.MockTransport`: what it sends to Exotel, and
what each of Exotel's answers (docs/exotel.md) becomes: a call, or an error type with fields."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from app.exotel.client import CallsPage, ConnectRequest, ExotelClient
from app.exotel.errors import (
    ExotelOutcomeUnknown,
    ExotelRateLimited,
    ExotelRejected,
    ExotelUnreachable,
    RecordingCutShort,
)
from app.exotel.wire import IST, ExotelCall
from app.retry_after import LONGEST_SECONDS
from tests.conftest import FAKE_ACCOUNT_SID, FAKE_API_KEY, FAKE_API_TOKEN, FAKE_CALLER_ID
from tests.support.exotel_double import call_json, form_of

pytestmark = pytest.mark.anyio

BASE_URL = "https://api.exotel.test"
RECORDING_HOSTS = ["*.exotel.com", "s3-ap-southeast-1.amazonaws.com/exotelrecordings/"]
CALLS_URL = f"{BASE_URL}/v1/Accounts/{FAKE_ACCOUNT_SID}/Calls"
BASIC_AUTH = "Basic " + base64.b64encode(f"{FAKE_API_KEY}:{FAKE_API_TOKEN}".encode()).decode()
TIMEOUT_SECONDS = 30.0

SID = "55cd271a8e90cf3f3d9d85e06f56189g"
FLOW_URL = f"http://my.exotel.com/{FAKE_ACCOUNT_SID}/exoml/start_voice/926"
MINIMAL = ConnectRequest(from_number="09052161119", caller_id=FAKE_CALLER_ID, flow_url=FLOW_URL)

Answer = httpx.Response | Exception


def raw(status: int, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    """A response as it comes off the wire: the client reads (and decodes) the body itself."""
    return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))


def as_json(document: Any) -> bytes:
    return json.dumps(document).encode()


def xml_error(status: int, message: str, code: int | None = None) -> bytes:
    code_element = f"<Code>{code}</Code>" if code is not None else ""
    return (
        f"<TwilioResponse><RestException><Status>{status}</Status>\n"
        f" <Message>{message}</Message>{code_element}</RestException></TwilioResponse>"
    ).encode()


def json_error(status: int, message: str, code: int | None = None) -> bytes:
    fields: dict[str, Any] = {"Status": status, "Message": message}
    if code is not None:
        fields["Code"] = code
    return as_json({"RestException": fields})


class FakeExotel:
    """The MockTransport handler: records every request, then answers `answer` (or raises it)."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.answer: Answer = httpx.Response(200, json=call_json(SID))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    @property
    def request(self) -> httpx.Request:
        """The one request sent."""
        assert len(self.requests) == 1, self.requests
        return self.requests[0]


@pytest.fixture
def server() -> FakeExotel:
    return FakeExotel()


@pytest.fixture
async def exotel_client(server: FakeExotel) -> AsyncIterator[ExotelClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as http:
        yield client_of(http)


Operation = Callable[[ExotelClient], Awaitable[object]]
OPERATIONS: dict[str, Operation] = {
    "connect": lambda client: client.connect(MINIMAL),
    "get_call": lambda client: client.get_call(SID),
    "list_calls": lambda client: client.list_calls(sids=[SID]),
    "next_page": lambda client: client.next_page(
        f"/v1/Accounts/{FAKE_ACCOUNT_SID}/Calls.json?PageSize=100&After=YTFn"
    ),
}


# --- What is sent -----------------------------------------------------------------------------


async def test_connect_posts_the_whole_form_to_connect_json(
    exotel_client: ExotelClient, server: FakeExotel
) -> None:
    await exotel_client.connect(
        ConnectRequest(
            from_number="09052161119",
            caller_id=FAKE_CALLER_ID,
            flow_url=FLOW_URL,
            status_callback="https://exocall.test/status-callback?token=fake-callback-secret",
            time_limit=14400,
            time_out=60,
            custom_field="order-123",
            status_callback_events=("terminal", "answered"),
            status_callback_content_type="application/json",
        )
    )
    request = server.request
    assert request.method == "POST"
    assert str(request.url) == f"{CALLS_URL}/connect.json"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert form_of(request) == {
        "From": "09052161119",
        "CallerId": FAKE_CALLER_ID,
        "Url": FLOW_URL,
        "CallType": "trans",
        "TimeLimit": "14400",
        "TimeOut": "60",
        "CustomField": "order-123",
        "StatusCallback": "https://exocall.test/status-callback?token=fake-callback-secret",
        "StatusCallbackContentType": "application/json",
        "StatusCallbackEvents[0]": "terminal",
        "StatusCallbackEvents[1]": "answered",
    }


async def test_connect_leaves_out_optional_fields_not_given(
    exotel_client: ExotelClient, server: FakeExotel
) -> None:
    await exotel_client.connect(MINIMAL)
    assert form_of(server.request) == {
        "From": "09052161119",
        "CallerId": FAKE_CALLER_ID,
        "Url": FLOW_URL,
        "CallType": "trans",
    }


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ((), {}),
        (("terminal",), {"StatusCallbackEvents[0]": "terminal"}),
        (
            ("terminal", "answered"),
            {"StatusCallbackEvents[0]": "terminal", "StatusCallbackEvents[1]": "answered"},
        ),
    ],
)
async def test_connect_sends_only_the_callback_events_given(
    exotel_client: ExotelClient,
    server: FakeExotel,
    events: tuple[str, ...],
    expected: dict[str, str],
) -> None:
    request = ConnectRequest(
        from_number="09052161119",
        caller_id=FAKE_CALLER_ID,
        flow_url=FLOW_URL,
        status_callback_events=events,
    )
    await exotel_client.connect(request)
    form = form_of(server.request)
    assert {k: v for k, v in form.items() if k.startswith("StatusCallbackEvents")} == expected


@pytest.mark.parametrize("operation", OPERATIONS.values(), ids=OPERATIONS.keys())
async def test_credentials_go_in_the_authorization_header_only(
    exotel_client: ExotelClient, server: FakeExotel, operation: Operation
) -> None:
    await operation(exotel_client)
    request = server.request
    assert request.headers["authorization"] == BASIC_AUTH
    assert request.url.userinfo == b""
    for secret in (FAKE_API_KEY, FAKE_API_TOKEN):
        assert secret not in str(request.url)
        assert secret.encode() not in request.content


@pytest.mark.parametrize("base_url", [BASE_URL, BASE_URL + "/"])
async def test_base_url_with_or_without_trailing_slash(server: FakeExotel, base_url: str) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as http:
        client = ExotelClient(
            http,
            base_url=base_url,
            account_sid=FAKE_ACCOUNT_SID,
            api_key=FAKE_API_KEY,
            api_token=FAKE_API_TOKEN,
            timeout_seconds=TIMEOUT_SECONDS,
        )
        await client.connect(MINIMAL)
    assert str(server.request.url) == f"{CALLS_URL}/connect.json"


async def test_the_configured_timeout_reaches_the_transport(
    exotel_client: ExotelClient, server: FakeExotel
) -> None:
    # Exotel retries origination before it answers `Calls/connect`: reads must be allowed to wait.
    await exotel_client.connect(MINIMAL)
    timeout = server.request.extensions["timeout"]
    assert timeout["read"] == TIMEOUT_SECONDS
    assert 0 < timeout["connect"] <= TIMEOUT_SECONDS


async def test_repr_shows_no_credentials(exotel_client: ExotelClient) -> None:
    encoded = BASIC_AUTH.removeprefix("Basic ")
    for text in (repr(exotel_client), str(exotel_client)):
        for secret in (FAKE_API_KEY, FAKE_API_TOKEN, encoded):
            assert secret not in text


# --- Successful answers to Calls/connect ------------------------------------------------------

CONNECT_XML = f"""<?xml version="1.0" encoding="UTF-8"?>
<TwilioResponse>
 <Call>
  <Sid>{SID}</Sid><ParentCallSid/>
  <DateCreated>2024-09-16 15:50:02</DateCreated><DateUpdated>2024-09-16 15:50:02</DateUpdated>
  <AccountSid>{FAKE_ACCOUNT_SID}</AccountSid><To/><From>09052161119</From>
  <PhoneNumberSid>{FAKE_CALLER_ID}</PhoneNumberSid>
  <Status>in-progress</Status><StartTime>2024-09-16 15:50:02</StartTime><EndTime/><Duration/>
  <Price/><Direction>outbound-api</Direction><AnsweredBy/><ForwardedFrom/><CallerName/>
  <Uri>/v1/Accounts/{FAKE_ACCOUNT_SID}/Calls/{SID}</Uri><RecordingUrl/>
 </Call>
</TwilioResponse>""".encode()

CONNECT_JSON = as_json(
    call_json(
        SID,
        From="09052161119",
        PhoneNumberSid=FAKE_CALLER_ID,
        To="",
        DateCreated="2024-09-16 15:50:02",
        DateUpdated="2024-09-16 15:50:02",
        StartTime="2024-09-16 15:50:02",
    )
)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(CONNECT_JSON, "application/json", id="json"),
        # `.json` asks for JSON, but what comes back is parsed whatever it is.
        pytest.param(CONNECT_XML, "application/xml", id="xml-on-json-path"),
        pytest.param(CONNECT_XML, "application/json", id="xml-labelled-json"),
    ],
)
async def test_connect_returns_the_call_exotel_made(
    exotel_client: ExotelClient, server: FakeExotel, body: bytes, content_type: str
) -> None:
    server.answer = raw(200, body, {"Content-Type": content_type})
    call = await exotel_client.connect(MINIMAL)
    assert call == ExotelCall(
        sid=SID,
        status="in-progress",
        from_number="09052161119",
        to_number=None,
        caller_id=FAKE_CALLER_ID,
        date_created_raw="2024-09-16 15:50:02",
        date_updated_raw="2024-09-16 15:50:02",
        start_time_raw="2024-09-16 15:50:02",
        direction="outbound-api",
    )
    assert call.date_updated == datetime(2024, 9, 16, 15, 50, 2, tzinfo=IST)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(200, as_json({"Call": {"Sid": None, "Status": "in-progress"}}), id="null-sid"),
        pytest.param(200, as_json({"Call": {"Sid": "", "Status": "in-progress"}}), id="empty-sid"),
        pytest.param(200, as_json({}), id="empty-object"),
        pytest.param(200, b"<TwilioResponse><Call><Sid/></Call></TwilioResponse>", id="xml-no-sid"),
        pytest.param(200, b"", id="empty-body"),
        pytest.param(200, b"OK", id="plain-text"),
        pytest.param(200, b'{"Call": {"Sid": "55cd271a8e90', id="truncated-json"),
        pytest.param(200, b"<TwilioResponse><Call><Sid>55cd2", id="truncated-xml"),
        pytest.param(200, as_json([{"Call": {"Sid": SID}}]), id="json-array"),
        pytest.param(200, b"<html><body><h1>Maintenance</h1></body></html>", id="html"),
        pytest.param(202, b"<html><body><hr></body></html>", id="broken-html-202"),
    ],
)
async def test_a_yes_without_a_readable_sid_is_outcome_unknown(
    exotel_client: ExotelClient, server: FakeExotel, status: int, body: bytes
) -> None:
    # Exotel said yes, so the customer may be being dialled: this must never look like a refusal.
    server.answer = raw(status, body)
    with pytest.raises(ExotelOutcomeUnknown):
        await exotel_client.connect(MINIMAL)


async def test_a_yes_with_a_corrupt_compressed_body_is_outcome_unknown(
    exotel_client: ExotelClient, server: FakeExotel
) -> None:
    server.answer = raw(200, b"this is not gzip", {"Content-Encoding": "gzip"})
    with pytest.raises(ExotelOutcomeUnknown):
        await exotel_client.connect(MINIMAL)


async def test_a_yes_with_an_unreadable_number_still_gives_the_call(
    exotel_client: ExotelClient, server: FakeExotel
) -> None:
    server.answer = raw(200, b'{"Call": {"Sid": "%s", "Duration": 1e400}}' % SID.encode())
    call = await exotel_client.connect(MINIMAL)
    assert (call.sid, call.duration) == (SID, None)


# --- Refusals ---------------------------------------------------------------------------------

TRAI = "Call to [01234] cannot be made because of TRAI NDNC regulations"
NO_FROM = "Invalid Call Parameters: No 'From' specified"

# HTTP status, message as Exotel sends it, Code, and the message as the client hands it on.
REFUSALS = [
    pytest.param(400, NO_FROM, None, NO_FROM, id="400-invalid-parameters"),
    pytest.param(401, "Authentication failed; ", None, "Authentication failed", id="401"),
    pytest.param(402, "Plan limit exceeded", None, "Plan limit exceeded", id="402"),
    pytest.param(403, TRAI, None, TRAI, id="403-dnd"),
    pytest.param(403, "Not KYC compliant; ", None, "Not KYC compliant", id="403-kyc"),
    pytest.param(404, "Resource not found", None, "Resource not found", id="404"),
    pytest.param(409, "Conflict", None, "Conflict", id="409"),
    pytest.param(500, "Could not originate; ", None, "Could not originate", id="500"),
    pytest.param(503, "Service Unavailable; ", 35008, "Service Unavailable", id="503-code"),
    pytest.param(
        504, "Call could not be originated", None, "Call could not be originated", id="504"
    ),
]


@pytest.mark.parametrize("encode", [xml_error, json_error], ids=["xml", "json"])
@pytest.mark.parametrize(("status", "sent", "code", "message"), REFUSALS)
async def test_an_error_status_is_rejected_with_its_fields(
    exotel_client: ExotelClient,
    server: FakeExotel,
    encode: Callable[[int, str, int | None], bytes],
    status: int,
    sent: str,
    code: int | None,
    message: str,
) -> None:
    server.answer = raw(status, encode(status, sent, code))
    with pytest.raises(ExotelRejected) as caught:
        await exotel_client.connect(MINIMAL)
    assert type(caught.value) is ExotelRejected
    assert (caught.value.status, caught.value.code, caught.value.message) == (status, code, message)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", id="502-html"),
        pytest.param(500, b"<html><body><hr></body></html>", id="500-broken-html"),
        pytest.param(503, b"", id="503-empty"),
        pytest.param(401, b"Unauthorized", id="401-text"),
        pytest.param(504, b'{"error": "upstream timed out"}', id="504-foreign-json"),
    ],
)
async def test_an_error_status_without_rest_exception_is_rejected_with_that_status(
    exotel_client: ExotelClient, server: FakeExotel, status: int, body: bytes
) -> None:
    server.answer = raw(status, body, {"Content-Type": "text/html"})
    with pytest.raises(ExotelRejected) as caught:
        await exotel_client.connect(MINIMAL)
    assert (caught.value.status, caught.value.code) == (status, None)
    assert caught.value.message


async def test_the_http_status_wins_over_the_body_status(
    exotel_client: ExotelClient, server: FakeExotel
) -> None:
    server.answer = raw(403, json_error(200, TRAI))
    with pytest.raises(ExotelRejected) as caught:
        await exotel_client.connect(MINIMAL)
    assert (caught.value.status, caught.value.message) == (403, TRAI)


async def test_a_rest_exception_on_a_2xx_is_still_a_refusal(
    exotel_client: ExotelClient, server: FakeExotel
) -> None:
    server.answer = raw(200, xml_error(403, TRAI))
    with pytest.raises(ExotelRejected) as caught:
        await exotel_client.connect(MINIMAL)
    assert (caught.value.status, caught.value.message) == (403, TRAI)


# --- Rate limiting ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "retry_after"),
    [
        pytest.param({"Retry-After": "7"}, 7.0, id="seconds"),
        pytest.param({"Retry-After": "2.5"}, 2.5, id="fraction"),
        pytest.param({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0, id="past-date"),
        pytest.param({}, None, id="absent"),
        pytest.param({"Retry-After": ""}, None, id="empty"),
        pytest.param({"Retry-After": "soon"}, None, id="garbage"),
        # No timer can hold these: nothing said, or the longest wait.
        pytest.param({"Retry-After": "inf"}, None, id="infinite"),
        pytest.param({"Retry-After": "nan"}, None, id="nan"),
        pytest.param({"Retry-After": "1e12"}, LONGEST_SECONDS, id="huge"),
        pytest.param({"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}, LONGEST_SECONDS, id="far"),
        pytest.param({"Retry-After": "-5"}, 0.0, id="negative"),
    ],
)
@pytest.mark.parametrize("encode", [xml_error, json_error], ids=["xml", "json"])
async def test_429_is_rate_limited_with_retry_after(
    exotel_client: ExotelClient,
    server: FakeExotel,
    encode: Callable[[int, str, int | None], bytes],
    headers: dict[str, str],
    retry_after: float | None,
) -> None:
    server.answer = raw(429, encode(429, "Too Many Requests; ", None), headers)
    with pytest.raises(ExotelRateLimited) as caught:
        await exotel_client.connect(MINIMAL)
    assert (caught.value.status, caught.value.message) == (429, "Too Many Requests")
    assert caught.value.retry_after == retry_after


async def test_429_with_an_http_date_waits_until_then(
    exotel_client: ExotelClient, server: FakeExotel
) -> None:
    in_an_hour = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    server.answer = raw(429, b"", {"Retry-After": in_an_hour})
    with pytest.raises(ExotelRateLimited) as caught:
        await exotel_client.connect(MINIMAL)
    assert caught.value.retry_after is not None
    # The date has whole seconds, and some time passes between writing and reading it.
    assert 3500 < caught.value.retry_after <= 3600


# --- Transport failures -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        # No connection was made: Exotel certainly did not dial.
        (httpx.ConnectError("connection refused"), ExotelUnreachable),
        (httpx.ConnectTimeout("connect timed out"), ExotelUnreachable),
        (httpx.PoolTimeout("no free connection"), ExotelUnreachable),
        # The request may have reached Exotel: it may be dialling.
        (httpx.ReadTimeout("read timed out"), ExotelOutcomeUnknown),
        (httpx.WriteTimeout("write timed out"), ExotelOutcomeUnknown),
        (httpx.RemoteProtocolError("peer closed connection"), ExotelOutcomeUnknown),
        (httpx.ReadError("connection reset"), ExotelOutcomeUnknown),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else value.__name__,
)
@pytest.mark.parametrize("operation", OPERATIONS.values(), ids=OPERATIONS.keys())
async def test_transport_failures(
    exotel_client: ExotelClient,
    server: FakeExotel,
    operation: Operation,
    failure: Exception,
    expected: type[Exception],
) -> None:
    server.answer = failure
    with pytest.raises(expected) as caught:
        await operation(exotel_client)
    assert caught.value.__cause__ is failure
    assert len(server.requests) == 1


# --- Call details -----------------------------------------------------------------------------

DETAILS_JSON = as_json(
    call_json(
        SID,
        status="completed",
        EndTime="2024-09-16 15:51:00",
        Duration="58",
        Price="0.6",
        RecordingUrl="https://recordings.exotel.test/x.mp3",
        Details={
            "ConversationDuration": 32,
            "Leg1Status": "completed",
            "Leg2Status": "completed",
            "Legs": [{"Leg": {"Id": 1, "OnCallDuration": 41}}],
        },
    )
)

DETAILS_XML = f"""<TwilioResponse><Call><Sid>{SID}</Sid><Status>completed</Status>
<EndTime>2024-09-16 15:51:00</EndTime><Duration>58</Duration><Price>0.6</Price>
<RecordingUrl>https://recordings.exotel.test/x.mp3</RecordingUrl>
<Details><ConversationDuration>32</ConversationDuration><Leg1Status>completed</Leg1Status>
<Leg2Status>completed</Leg2Status></Details></Call></TwilioResponse>""".encode()


@pytest.mark.parametrize("body", [DETAILS_JSON, DETAILS_XML], ids=["json", "xml"])
async def test_get_call_asks_for_details(
    exotel_client: ExotelClient, server: FakeExotel, body: bytes
) -> None:
    server.answer = raw(200, body)
    call = await exotel_client.get_call(SID)
    request = server.request
    assert request.method == "GET"
    assert request.url.copy_with(query=None) == httpx.URL(f"{CALLS_URL}/{SID}.json")
    assert dict(request.url.params) == {"details": "true"}
    assert call is not None
    assert (call.sid, call.status, call.duration, call.conversation_duration) == (
        SID,
        "completed",
        58,
        32,
    )
    assert (call.end_time_raw, call.price) == ("2024-09-16 15:51:00", Decimal("0.6"))
    assert call.recording_url == "https://recordings.exotel.test/x.mp3"


@pytest.mark.parametrize(
    "body",
    [json_error(404, "Resource not found"), xml_error(404, "Resource not found"), b""],
    ids=["json", "xml", "empty"],
)
async def test_get_call_of_an_unknown_sid_is_none(
    exotel_client: ExotelClient, server: FakeExotel, body: bytes
) -> None:
    server.answer = raw(404, body)
    assert await exotel_client.get_call(SID) is None


@pytest.mark.parametrize(
    ("status", "expected"),
    [(401, ExotelRejected), (403, ExotelRejected), (429, ExotelRateLimited), (503, ExotelRejected)],
)
async def test_get_call_raises_other_refusals(
    exotel_client: ExotelClient, server: FakeExotel, status: int, expected: type[ExotelRejected]
) -> None:
    server.answer = raw(status, json_error(status, "no"))
    with pytest.raises(expected) as caught:
        await exotel_client.get_call(SID)
    assert caught.value.status == status


async def test_list_calls_sends_every_filter(
    exotel_client: ExotelClient, server: FakeExotel
) -> None:
    server.answer = raw(200, as_json({"Calls": []}))
    await exotel_client.list_calls(
        sids=["a1g", "b2m", "c3g"],
        from_number="+919052161119",
        created_after=datetime(2024, 9, 16, 10, 20, 2, tzinfo=UTC),
        created_before=datetime(2024, 9, 17, 0, 0, 0, tzinfo=IST),
        page_size=50,
    )
    request = server.request
    assert request.method == "GET"
    assert request.url.copy_with(query=None) == httpx.URL(f"{CALLS_URL}.json")
    assert dict(request.url.params) == {
        "Sid": "a1g,b2m,c3g",
        "From": "+919052161119",
        # Exotel's times have no zone and are IST.
        "DateCreated": "gte:2024-09-16 15:50:02;lte:2024-09-17 00:00:00",
        "PageSize": "50",
    }


@pytest.mark.parametrize(
    ("bounds", "date_created"),
    [
        (
            {"created_after": datetime(2024, 9, 16, 10, 20, 2, tzinfo=UTC)},
            "gte:2024-09-16 15:50:02",
        ),
        (
            {"created_before": datetime(2024, 9, 16, 18, 29, 59, tzinfo=UTC)},
            "lte:2024-09-16 23:59:59",
        ),
        ({}, None),
    ],
)
async def test_list_calls_sends_only_the_bounds_given(
    exotel_client: ExotelClient,
    server: FakeExotel,
    bounds: dict[str, datetime],
    date_created: str | None,
) -> None:
    server.answer = raw(200, as_json({"Calls": []}))
    await exotel_client.list_calls(**bounds)
    assert server.request.url.params.get("DateCreated") == date_created


async def test_list_calls_without_filters_asks_for_one_full_page(
    exotel_client: ExotelClient, server: FakeExotel
) -> None:
    server.answer = raw(200, as_json({"Calls": []}))
    assert await exotel_client.list_calls() == CallsPage(calls=[], next_page_uri=None)
    assert dict(server.request.url.params) == {"PageSize": "100"}


@pytest.mark.parametrize(("asked", "sent"), [(1, "1"), (20, "20"), (100, "100"), (500, "100")])
async def test_list_calls_page_size_is_at_most_100(
    exotel_client: ExotelClient, server: FakeExotel, asked: int, sent: str
) -> None:
    server.answer = raw(200, as_json({"Calls": []}))
    await exotel_client.list_calls(page_size=asked)
    assert server.request.url.params["PageSize"] == sent


@pytest.mark.parametrize(
    "body",
    [
        as_json({"Calls": [call_json("a1g")["Call"], call_json("b2m", "completed")["Call"]]}),
        b"<TwilioResponse><Call><Sid>a1g</Sid><Status>in-progress</Status></Call>"
        b"<Call><Sid>b2m</Sid><Status>completed</Status></Call></TwilioResponse>",
    ],
    ids=["json", "xml"],
)
async def test_list_calls_returns_every_call_of_the_page(
    exotel_client: ExotelClient, server: FakeExotel, body: bytes
) -> None:
    server.answer = raw(200, body)
    page = await exotel_client.list_calls(sids=["a1g", "b2m"])
    assert [(call.sid, call.status) for call in page.calls] == [
        ("a1g", "in-progress"),
        ("b2m", "completed"),
    ]


async def test_list_calls_takes_100_sids(exotel_client: ExotelClient, server: FakeExotel) -> None:
    sids = [f"{i:030d}9g" for i in range(100)]
    server.answer = raw(200, as_json({"Calls": []}))
    await exotel_client.list_calls(sids=sids)
    assert server.request.url.params["Sid"].split(",") == sids


async def test_list_calls_refuses_more_than_100_sids(
    exotel_client: ExotelClient, server: FakeExotel
) -> None:
    sids = [f"{i:030d}9g" for i in range(101)]
    with pytest.raises(ValueError, match="100"):
        await exotel_client.list_calls(sids=sids)
    assert server.requests == []


# --- Bulk call details, page by page ----------------------------------------------------------

BULK_PATH = f"/v1/Accounts/{FAKE_ACCOUNT_SID}/Calls.json"


def page_uri(**params: str) -> str:
    """A page URI as Exotel gives it: a path and query relative to the API host."""
    return f"{BULK_PATH}?{urlencode(params)}"


def json_page(sids: list[str], next_page_uri: str | None) -> bytes:
    metadata = {"PageSize": 2, "FirstPageUri": page_uri(PageSize="2")}
    return as_json(
        {
            "Metadata": metadata | {"PrevPageUri": None, "NextPageUri": next_page_uri},
            "Calls": [call_json(sid, "completed")["Call"] for sid in sids],
        }
    )


def xml_page(sids: list[str], next_page_uri: str) -> bytes:
    calls = "".join(f"<Call><Sid>{sid}</Sid><Status>completed</Status></Call>" for sid in sids)
    uri = next_page_uri.replace("&", "&amp;")
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<TwilioResponse><Metadata>'
        f"<NextPageUri>{uri}</NextPageUri></Metadata><Calls>{calls}</Calls></TwilioResponse>"
    ).encode()


class PagedExotel:
    """Bulk call details in pages, each found by its `After` cursor (None: the first page)."""

    def __init__(self, pages: dict[str | None, bytes]) -> None:
        self.pages = pages
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = self.pages.get(request.url.params.get("After"))
        if body is None:
            return raw(404, json_error(404, "no such page"))
        return raw(200, body)


def client_of(http: httpx.AsyncClient, base_url: str = BASE_URL, **options: Any) -> ExotelClient:
    return ExotelClient(
        http,
        base_url=base_url,
        account_sid=FAKE_ACCOUNT_SID,
        api_key=FAKE_API_KEY,
        api_token=FAKE_API_TOKEN,
        timeout_seconds=TIMEOUT_SECONDS,
        recording_hosts=RECORDING_HOSTS,
        **options,
    )


@pytest.mark.parametrize(
    "last_page",
    [
        pytest.param(json_page(["e5g"], None), id="null"),
        pytest.param(json_page(["e5g"], ""), id="empty-string"),
        pytest.param(as_json({"Calls": [call_json("e5g", "completed")["Call"]]}), id="no-metadata"),
        pytest.param(
            b"<TwilioResponse><Metadata><NextPageUri/></Metadata><Calls><Call><Sid>e5g</Sid>"
            b"</Call></Calls></TwilioResponse>",
            id="xml-empty-element",
        ),
    ],
)
async def test_next_page_uris_are_followed_until_there_is_none(last_page: bytes) -> None:
    second = page_uri(PageSize="2", After="YjJt")
    third = page_uri(PageSize="2", After="ZDRn")
    exotel = PagedExotel(
        {
            None: json_page(["a1g", "b2m"], second),
            "YjJt": xml_page(["c3g", "d4g"], third),  # either format, whatever was asked for
            "ZDRn": last_page,
        }
    )
    observed: list[tuple[str, int | None]] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(exotel)) as http:
        client = client_of(http, observe=lambda op, status, _: observed.append((op, status)))
        page = await client.list_calls(page_size=2)
        sids = [call.sid for call in page.calls]
        next_uris = [page.next_page_uri]
        while page.next_page_uri:
            page = await client.next_page(page.next_page_uri)
            sids += [call.sid for call in page.calls]
            next_uris.append(page.next_page_uri)

    assert sids == ["a1g", "b2m", "c3g", "d4g", "e5g"]
    assert next_uris == [second, third, None]
    # One request per page, each on the account's bulk path, credentials in the header only.
    assert [dict(request.url.params) for request in exotel.requests] == [
        {"PageSize": "2"},
        {"PageSize": "2", "After": "YjJt"},
        {"PageSize": "2", "After": "ZDRn"},
    ]
    for request in exotel.requests:
        assert request.method == "GET"
        assert request.url.copy_with(query=None) == httpx.URL(BASE_URL + BULK_PATH)
        assert request.headers["authorization"] == BASIC_AUTH
        assert request.url.userinfo == b""
    assert observed == [("bulk_call_details", 200)] * 3


async def test_next_page_is_a_single_request_even_when_more_pages_follow(
    exotel_client: ExotelClient, server: FakeExotel
) -> None:
    following = page_uri(PageSize="2", After="ZDRn")
    server.answer = raw(200, json_page(["c3g", "d4g"], following))
    page = await exotel_client.next_page(page_uri(PageSize="2", After="YjJt"))
    assert [call.sid for call in page.calls] == ["c3g", "d4g"]
    assert page.next_page_uri == following
    assert server.request.url.params["After"] == "YjJt"


async def test_next_page_sends_the_query_exotel_gave(
    exotel_client: ExotelClient, server: FakeExotel
) -> None:
    server.answer = raw(200, json_page([], None))
    uri = (
        f"{BULK_PATH}?From=%2B919052161119&DateCreated=gte:2024-09-16 15:50:02;"
        "lte:2024-09-17 00:00:00&PageSize=100&After=YjJt"
    )
    await exotel_client.next_page(uri)
    assert dict(server.request.url.params) == {
        "From": "+919052161119",
        "DateCreated": "gte:2024-09-16 15:50:02;lte:2024-09-17 00:00:00",
        "PageSize": "100",
        "After": "YjJt",
    }


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param(f"{BASE_URL}{BULK_PATH}?After=YjJt", id="absolute"),
        pytest.param(f"{BASE_URL.upper()}{BULK_PATH}?After=YjJt", id="absolute-upper-case-host"),
        pytest.param(f"{BULK_PATH}?After=YjJt#top", id="fragment"),
    ],
)
async def test_next_page_takes_an_absolute_uri_on_its_own_host(
    exotel_client: ExotelClient, server: FakeExotel, uri: str
) -> None:
    server.answer = raw(200, json_page([], None))
    await exotel_client.next_page(uri)
    assert str(server.request.url) == f"{BASE_URL}{BULK_PATH}?After=YjJt"
    assert server.request.headers["authorization"] == BASIC_AUTH


async def test_next_page_is_relative_to_a_base_url_with_a_path(server: FakeExotel) -> None:
    server.answer = raw(200, json_page([], None))
    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as http:
        client = client_of(http, base_url="https://proxy.exotel.test/exotel/")
        await client.next_page(f"{BULK_PATH}?After=YjJt")
    assert str(server.request.url) == f"https://proxy.exotel.test/exotel{BULK_PATH}?After=YjJt"


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param(f"https://evil.example{BULK_PATH}?After=YjJt", id="another-host"),
        pytest.param(f"https://api.exotel.test.evil.example{BULK_PATH}", id="host-suffix"),
        pytest.param(f"//evil.example{BULK_PATH}?After=YjJt", id="protocol-relative"),
        pytest.param(f"http://api.exotel.test{BULK_PATH}", id="plain-http"),
        pytest.param(f"https://api.exotel.test:8443{BULK_PATH}", id="another-port"),
        pytest.param(
            f"https://{FAKE_API_KEY}:{FAKE_API_TOKEN}@api.exotel.test{BULK_PATH}", id="userinfo"
        ),
        pytest.param(f"https:{BULK_PATH}", id="scheme-without-host"),
        pytest.param("/v1/Accounts/another-account/Calls.json?After=YjJt", id="another-account"),
        pytest.param(f"/v1/Accounts/{FAKE_ACCOUNT_SID}-2/Calls.json", id="account-prefix"),
        pytest.param(f"/v1/Accounts/{FAKE_ACCOUNT_SID}", id="account-itself"),
        pytest.param(f"/v1/Accounts/{FAKE_ACCOUNT_SID}/../other/Calls.json", id="dot-dot"),
        pytest.param(
            f"/v1/Accounts/{FAKE_ACCOUNT_SID}/%2e%2e/other/Calls.json", id="dot-dot-encoded"
        ),
        pytest.param("/v2/accounts/fake-account/calls", id="another-api"),
        pytest.param("Calls.json?After=YjJt", id="relative-path"),
        pytest.param(f"v1/Accounts/{FAKE_ACCOUNT_SID}/Calls.json", id="no-leading-slash"),
        pytest.param(f"\\\\evil.example{BULK_PATH}", id="backslashes"),
        pytest.param(f"{BULK_PATH}?After=\x00", id="unprintable"),
        pytest.param("", id="empty"),
    ],
)
async def test_next_page_refuses_a_uri_off_its_own_account(
    exotel_client: ExotelClient, server: FakeExotel, uri: str
) -> None:
    # The request would carry the API credentials: it never leaves for anywhere else.
    with pytest.raises(ValueError, match="not a page") as caught:
        await exotel_client.next_page(uri)
    assert server.requests == []
    assert FAKE_API_TOKEN not in str(caught.value)


async def test_next_page_refusals_are_typed(
    exotel_client: ExotelClient, server: FakeExotel
) -> None:
    server.answer = raw(429, json_error(429, "Too Many Requests; "), {"Retry-After": "3"})
    with pytest.raises(ExotelRateLimited) as caught:
        await exotel_client.next_page(page_uri(PageSize="2", After="YjJt"))
    assert (caught.value.status, caught.value.retry_after) == (429, 3.0)


# --- Recordings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://s3-ap-southeast-1.amazonaws.com/exotelrecordings/acme1/a.mp3", True),
        ("https://recordings.exotel.com/acme1/a.mp3", True),
        ("https://a.b.exotel.com/a.mp3", True),
        (f"{BASE_URL}/recordings/a.wav", True),  # the API's own origin
        ("http://s3-ap-southeast-1.amazonaws.com/exotelrecordings/acme1/a.mp3", False),  # no TLS
        ("https://s3-ap-southeast-1.amazonaws.com/another-bucket/a.mp3", False),
        ("https://s3-ap-southeast-1.amazonaws.com/exotelrecordings/../evil/a.mp3", False),
        ("https://exotel.com.evil.example/a.mp3", False),
        ("https://evilexotel.com/a.mp3", False),
        ("https://user:pass@recordings.exotel.com/a.mp3", False),
        ("javascript:alert(1)", False),
        ("", False),
    ],
)
async def test_credentials_go_only_to_the_recording_hosts(url: str, allowed: bool) -> None:
    async with httpx.AsyncClient() as http:
        assert client_of(http).recording_url_allowed(url) is allowed


async def test_a_recording_is_streamed_to_a_file_with_the_credentials() -> None:
    body = bytes(range(256)) * 1000
    seen: list[httpx.Request] = []

    def serve(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=body, headers={"Content-Type": "audio/mpeg"})

    url = "https://recordings.exotel.com/acme1/a.mp3"
    async with httpx.AsyncClient(transport=httpx.MockTransport(serve)) as http:
        into = io.BytesIO()
        fetched = await client_of(http).fetch_recording(url, into)
    assert into.getvalue() == body
    assert fetched.size == len(body)
    assert fetched.sha256 == hashlib.sha256(body).hexdigest()
    assert fetched.content_type == "audio/mpeg"
    (request,) = seen
    expected = base64.b64encode(f"{FAKE_API_KEY}:{FAKE_API_TOKEN}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected}"


async def test_a_redirect_elsewhere_is_followed_without_the_credentials() -> None:
    seen: list[httpx.Request] = []

    def serve(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "recordings.exotel.com":
            return httpx.Response(302, headers={"Location": "https://storage.example/a.mp3?sig=x"})
        return httpx.Response(200, content=b"ID3audio")

    async with httpx.AsyncClient(transport=httpx.MockTransport(serve)) as http:
        into = io.BytesIO()
        await client_of(http).fetch_recording("https://recordings.exotel.com/acme1/a.mp3", into)
    assert into.getvalue() == b"ID3audio"
    assert "authorization" in seen[0].headers
    assert "authorization" not in seen[1].headers


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (httpx.Response(404), ExotelRejected),
        (httpx.Response(401), ExotelRejected),
        (httpx.Response(503), ExotelRejected),
        (httpx.Response(200, content=b"abc", headers={"Content-Length": "10"}), RecordingCutShort),
        (httpx.ReadTimeout("timed out"), ExotelOutcomeUnknown),
        (httpx.ConnectError("refused"), ExotelUnreachable),
    ],
)
async def test_a_recording_that_is_not_served_whole_raises_by_kind(
    answer: httpx.Response | Exception, error: type[Exception]
) -> None:
    def serve(request: httpx.Request) -> httpx.Response:
        if isinstance(answer, Exception):
            raise answer
        return answer

    async with httpx.AsyncClient(transport=httpx.MockTransport(serve)) as http:
        with pytest.raises(error) as raised:
            await client_of(http).fetch_recording(
                "https://recordings.exotel.com/a.mp3", io.BytesIO()
            )
    if isinstance(answer, httpx.Response) and answer.status_code != 200:
        assert isinstance(raised.value, ExotelRejected)
        assert raised.value.status == answer.status_code


async def test_a_recording_url_off_the_list_is_never_asked() -> None:
    seen: list[httpx.Request] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(seen.append)) as http:  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="not a recording URL"):
            await client_of(http).fetch_recording("https://evil.example/a.mp3", io.BytesIO())
    assert seen == []
