from __future__ import annotations

import base64
import io
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.session import create_engine
from app.logs import ContextFilter, JsonFormatter, RedactingFilter, TextFormatter, about, redact
from tests.conftest import callback_path, place_body
from tests.support.eventually import eventually
from tests.support.feed import feed_caught_up
from tests.support.processes import Deployment

SID = "4116345558c26f623df7d2a6b8c184km"  # digits runs in a SID are not phone numbers


# Every spelling of a number the API takes, wherever a log line may hold it, masked as spelled.
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("dialling +919052161119 now", "dialling +91******1119 now"),
        ("From=09052161119&x=1", "From=0******1119&x=1"),
        ("9052161110 first", "9*****1110 first"),
        ("919052161110", "9*******1110"),
        ("GET /calls?from=%2B919052161119 HTTP/1.1", "GET /calls?from=%2B91******1119 HTTP/1.1"),
        ("GET /calls?from=%2b919052161119", "GET /calls?from=%2b91******1119"),
        ("GET /calls?from=090-5216-1110 HTTP/1.1", "GET /calls?from=0**-****-1110 HTTP/1.1"),
        ("?from=%2B91%2090521%2061110 HTTP/1.1", "?from=%2B91%20*****%20*1110 HTTP/1.1"),
        ("?from=+91+90521+61110&limit=5", "?from=+91+*****+*1110&limit=5"),
        ("?from=0091%2090521%2061110", "?from=0***%20*****%20*1110"),
        ("?from=%2890%29%205216%201110", "?from=%289*%29%20****%201110"),
        ("?from=090%2D5216%2d1110&x=%2E", "?from=0**%2D****%2d1110&x=%2E"),
        ("?from=090%2E5216%2E1110", "?from=0**%2E****%2E1110"),
        ('{"from": "+91 90521 61110"}', '{"from": "+91 ***** *1110"}'),
        ('{"from": "+91-90521-61110"}', '{"from": "+91-*****-*1110"}'),
        ("from (0)9052161110.", "from (0)******1110."),
        ("0091 90521 61110", "0*** ***** *1110"),
        ("090.5216.1110", "0**.****.1110"),
        ("90521.61110", "9****.*1110"),
        ("905.216.111.0", "9**.***.111.0"),  # not an address: 905 is no octet
        ("(080) 3075 2400", "(0**) **** 2400"),
        ("+1 415 555 0100", "+1 4** *** 0100"),
        # Numbers in other scripts too (Devanagari digits).
        (
            "9\u0966\u096b\u0968\u0967\u096c\u0967\u0967\u0967\u0966",
            "9*****\u0967\u0967\u0967\u0966",
        ),
        ("order-9052161110", "order-9*****1110"),
        ("Key (number)=(+919052161110)", "Key (number)=([redacted])"),
        # In a URL escaped inside another one.
        ("url%3Fcall_id%3D1%26from%3D09052161110%26", "url%3Fcall_id%3D1%26from%3D0******1110%26"),
        ("input_value='090-5216-1110'", "input_value='0**-****-1110'"),
        ("CustomField=cust_09052161110&x=1", "CustomField=cust_0******1110&x=1"),
        # As many separators in a row as app.calls.phone takes.
        ("from=9---052161110", "from=9---*****1110"),
    ],
)
def test_every_spelling_of_a_number_is_masked(line: str, expected: str) -> None:
    assert redact(line) == expected
    assert redact(expected) == expected  # masked once and for all


# What operators search logs by, and other runs of digits: left whole.
@pytest.mark.parametrize(
    "line",
    [
        f"sid {SID} stays",
        f"GET /v1/Accounts/fake-account/Calls/{SID}.json",
        "call 9dea1c2e-1234-5678-9abc-123456789012 queued",
        "call 12345678-1234-1234-1234-123456789012 queued",
        "call 12345678-1234-abcd-1234-123456789012 queued",
        "nil 00000000-0000-0000-0000-000000000000",
        "request d3291ef2347b41b3a6bde24a505fee4d, event evt_5b1e0c0f2f6a4bdfa1d1d0f8e3b2c9a7",
        "at 2024-09-16 15:50:02",
        "at 2024-09-16 15:50:02.123456+05:30",
        "2026-12-05 12:51:56,123 INFO app.calls.placing: call queued",
        '"time": "2026-12-01T13:27:05.061+00:00"',
        "DateUpdated=2024-09-16+15%3A50%3A02&Status=completed",
        "DateUpdated=2024-09-16%2015%3A50%3A02",
        "created 2024-09-16 1234 calls",
        "Expires=1733400000.123",
        "took 0.123456789012 s",
        "after 12.123456789012 s",
        "took 1733400000.123456 s",
        "the database is reachable again, after 1.5 s",
        '127.0.0.1:54321 - "GET /healthz HTTP/1.1" 200',
        "from 192.168.100.200 and 10.100.200.150:8000, [::1]:19602",
        "the body is larger than 1048576 bytes",
        "spool: 3 callbacks stored, 12 left",
        "<AnyIOStream object at 0x7f8a2c3d4e50>",
        "cursor=WzgxMzQ1NiwgMTJd&limit=50",
        "+05:30 and +0530",
    ],
)
def test_only_numbers_are_masked(line: str) -> None:
    assert redact(line) == line


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            'POST /status-callback?call_id=9dea&token=ZlR5KML8_K6X HTTP/1.1" 200',
            'POST /status-callback?call_id=9dea&token=[redacted] HTTP/1.1" 200',
        ),
        ("GET /calls?api_key=fake-api-key HTTP/1.1", "GET /calls?api_key=[redacted] HTTP/1.1"),
        (
            "?API_KEY=a&apikey=b&apiKey=c&key=d",
            "?API_KEY=[redacted]&apikey=[redacted]&apiKey=[redacted]&key=[redacted]",
        ),
        (
            "?access_token=a&secret=b&password=c",
            "?access_token=[redacted]&secret=[redacted]&password=[redacted]",
        ),
        (
            "?signature=a&sig=b&auth=c&Authorization=d",
            "?signature=[redacted]&sig=[redacted]&auth=[redacted]&Authorization=[redacted]",
        ),
        (
            "?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=ab12&X-Amz-Security-Token=t",
            "?X-Amz-Credential=[redacted]&X-Amz-Signature=[redacted]&X-Amz-Security-Token=[redacted]",
        ),
        (
            "?AWSAccessKeyId=AKIA&Signature=a%2Bb&x=1",
            "?AWSAccessKeyId=[redacted]&Signature=[redacted]&x=1",
        ),
        ("grant_type=x&client_secret=s3cr3t", "grant_type=x&client_secret=[redacted]"),
        # Names that are no credentials keep their values.
        (
            "?cursor=abc&call_id=c-1&status=busy&digits=12&after=x",
            "?cursor=abc&call_id=c-1&status=busy&digits=12&after=x",
        ),
        (  # a URL escaped in another: its credential's value to the outer parameter's end
            "StatusCallback=http%3A%2F%2Fh%2Fstatus-callback%3Fcall_id%3Dc-1%26token%3Dabc%26x%3D1",
            "StatusCallback=http%3A%2F%2Fh%2Fstatus-callback%3Fcall_id%3Dc-1%26token%3D[redacted]",
        ),
        (
            "GET /calls?api%5Fkey=k1&API%5FKEY=k2&x%2Dapi%2Dkey=k3",
            "GET /calls?api%5Fkey=[redacted]&API%5FKEY=[redacted]&x%2Dapi%2Dkey=[redacted]",
        ),
        # An escaped `&` may be a secret's own.
        ("?secret_key=a%26b%3Dc&x=1", "?secret_key=[redacted]&x=1"),
        (
            '{"secret": "whsec_abc+/=", "url": "http://x"}',
            '{"secret": "[redacted]", "url": "http://x"}',
        ),
        ("{'api_key': 'k', 'from': 'x'}", "{'api_key': '[redacted]', 'from': 'x'}"),
        ("(b'authorization', b'Basic ZmFrZTpmYWtl')", "(b'authorization', b'[redacted]')"),
        ("Authorization: Basic ZmFrZTpmYWtl", "Authorization: Basic [redacted]"),
        ("authorization: bearer k1, next", "authorization: bearer [redacted], next"),
        ("sent Bearer fake-internal-key", "sent Bearer [redacted]"),
        (
            "GET https://fake-key:fake-token@api.exotel.com/v1/Accounts/a/Calls.json",
            "GET https://[redacted]@api.exotel.com/v1/Accounts/a/Calls.json",
        ),
        (
            "postgresql+asyncpg://exocall:pw@db/exocall",
            "postgresql+asyncpg://[redacted]@db/exocall",
        ),
        ("a secret whsec_ZmFrZQ== here", "a secret whsec_[redacted] here"),
        (
            "[SQL: INSERT INTO webhook_endpoint ...]\n[parameters: ('whsec_x', 'a)')]\n(Background",
            "[SQL: INSERT INTO webhook_endpoint ...]\n[parameters: [redacted]]\n(Background",
        ),
        (
            "DETAIL:  Failing row contains (0b6f, http://x, whsec_x, [], t).",
            "DETAIL:  Failing row contains ([redacted]).",
        ),
        (
            "invalid input for query argument $3: 'whsec_abc' (expected str, got int)",
            "invalid input for query argument $3: [redacted]",
        ),
    ],
)
def test_credentials_are_redacted(line: str, expected: str) -> None:
    assert redact(line) == expected
    assert redact(expected) == expected


@contextmanager
def redacted_log(name: str) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose lines go, through the redacting filter, to the stream yielded with it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def test_the_filter_redacts_formatted_arguments() -> None:
    with redacted_log("test_logs") as (logger, stream):
        logger.warning("calling %s via %s", "+919052161119", "/status-callback?token=s3cr3t")
    assert stream.getvalue() == "calling +91******1119 via /status-callback?token=[redacted]\n"


def test_tracebacks_are_redacted_too() -> None:
    with redacted_log("test_logs.traceback") as (logger, stream):
        try:
            raise ValueError("[parameters: ('+919052161119', 'token=s3cr3t')]")
        except ValueError:
            logger.exception("insert failed")
    logged = stream.getvalue()
    assert "ValueError" in logged
    assert "919052161119" not in logged
    assert "s3cr3t" not in logged


@contextmanager
def json_log() -> Iterator[io.StringIO]:
    """Every log line, as the service writes them with LOG_FORMAT=json, into the stream."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)  # setLevel, not `.level =`: loggers cache what is enabled
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_call_and_redact_what_they_say() -> None:
    call_id = uuid.uuid4()
    with json_log() as stream:
        logger = logging.getLogger("test_logs.json")
        logger.info("dialling %s", "+919052161119", extra=about(call_id, SID))
        try:
            raise ValueError("token=s3cr3t")
        except ValueError:
            logger.exception("failed\nacross lines")
    first, second = lines_of(stream)
    assert first["message"] == "dialling +91******1119"
    assert (first["call_id"], first["sid"], first["level"]) == (str(call_id), SID, "info")
    assert "request_id" not in first  # logged outside any request
    assert second["message"] == "failed\nacross lines"  # one event, one line
    assert "ValueError: token=[redacted]" in second["exception"]
    assert "s3cr3t" not in stream.getvalue()


def test_text_lines_name_their_context() -> None:
    record = logging.makeLogRecord({"msg": "sent", "call_id": "c-1", "sid": None})
    assert TextFormatter().format(record).endswith("sent [call_id=c-1]")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("given", "kept"), [("req-7f3a:retry/2", True), (None, False), ("two words", False)]
)
async def test_a_request_id_is_answered_and_logged(
    client: httpx.AsyncClient, given: str | None, kept: bool
) -> None:
    headers = {"X-Request-ID": given} if given else {}
    with json_log() as stream:
        response = await client.post("/calls?wait=false", json=place_body(), headers=headers)
    assert response.status_code == 202
    answered = response.headers["X-Request-ID"]
    assert (answered == given) is kept
    if not kept:
        assert len(answered) == 32  # a new one
    (queued,) = [line for line in lines_of(stream) if line["message"].startswith("call ")]
    assert queued["request_id"] == answered
    assert queued["call_id"] == response.json()["id"]
    assert "9052161110" not in queued["message"]


@pytest.mark.anyio
async def test_a_callers_request_id_is_answered_as_sent_and_logged_redacted(
    client: httpx.AsyncClient,
) -> None:
    with json_log() as stream:
        response = await client.post(
            "/calls?wait=false", json=place_body(), headers={"X-Request-ID": "+919052161110"}
        )
    assert response.headers["X-Request-ID"] == "+919052161110"
    (queued,) = [line for line in lines_of(stream) if line["message"].startswith("call ")]
    assert queued["request_id"] == "+91******1110"


@pytest.mark.anyio
async def test_a_database_error_holds_no_value_of_its_statement(engine: AsyncEngine) -> None:
    secret = "whsec_ZmFrZS1zZWNyZXQtZm9yLXRoZS10ZXN0"
    query = text("select * from no_such_table where secret = :secret")
    async with engine.connect() as connection:
        with pytest.raises(DBAPIError) as refused:
            await connection.execute(query, {"secret": secret})
    assert "no_such_table" in str(refused.value)
    assert secret not in str(refused.value)


# --- The whole API, as real processes, searched for what must never be logged --------------

API_KEY = "fake-api-key-for-the-log-test"
CALLBACK_SECRET = "fake-callback-secret-for-the-log-test"
EXOTEL_KEY = "fake-exotel-key-for-the-log-test"
EXOTEL_TOKEN = "fake-exotel-token-for-the-log-test"
BAD_TOKEN = "fake-bad-token-for-the-log-test"
# The simulator completes it, with a recording (its last digit, app/exotel/simulator.py).
NUMBER = "9052161110"
# Spellings the API takes, as they go into a URL or a JSON body.
IN_URLS = [
    "090-5216-1110",
    "%2B91%2090521%2061110",
    "+91+90521+61110",
    "0091%2090521%2061110",
    "(0)9052161110",
    "%280%299052161110",
    "090%2D5216%2D1110",
    "90521.61110",
    "919052161110",
    "%2B919052161110",
    "9052161110",
]
IN_BODIES = ["090-5216-1110", "+91 90521 61110", "0091 90521 61110", "+91-90521-61110"]
# The number, whatever is between its digits: any spelling of it that is not masked.
_GAPS = r"(?:[\s\-.()+]|%2[0289BDE])*"
ANY_SPELLING = re.compile(_GAPS.join(NUMBER), re.IGNORECASE)
# A description the database refuses (a constraint the test adds): the insert of an endpoint,
# with its new secret, fails in PostgreSQL.
REFUSED = "refused by the database"
_REFUSING = "log_test_refuses_a_description"


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_run_of_the_whole_api_logs_no_secret_and_no_number(
    deployment: Deployment, db_url: str
) -> None:
    """exocall serve and its Exotel simulator at LOG_LEVEL=DEBUG, with known credentials, every
    endpoint used, refusals included; then their whole output searched for each credential,
    token and secret, and for the number in any spelling."""
    deployment.env |= {
        "API_KEYS": API_KEY,
        "CALLBACK_SECRETS": CALLBACK_SECRET,
        "EXOTEL_API_KEY": EXOTEL_KEY,
        "EXOTEL_API_TOKEN": EXOTEL_TOKEN,
        "LOG_LEVEL": "DEBUG",
        "LOG_FORMAT": "json",
    }
    deployment.start_simulator("--callback-delay", "0.3")
    subscriber_url = deployment.start_subscriber()
    api_url = deployment.start_server()
    engine = create_engine(db_url)
    async with engine.begin() as connection:
        await connection.execute(
            text(
                f"ALTER TABLE webhook_endpoint ADD CONSTRAINT {_REFUSING} "
                f"CHECK (description IS DISTINCT FROM '{REFUSED}')"
            )
        )
    try:
        async with (
            httpx.AsyncClient(
                base_url=api_url, timeout=30, headers={"Authorization": f"Bearer {API_KEY}"}
            ) as api,
            httpx.AsyncClient(base_url=api_url, timeout=30) as anyone,
        ):
            seen = await _use_every_endpoint(api, anyone, subscriber_url, db_url)
    finally:
        async with engine.begin() as connection:
            await connection.execute(
                text(f"ALTER TABLE webhook_endpoint DROP CONSTRAINT {_REFUSING}")
            )
        await engine.dispose()
    deployment.stop()  # every line written
    logged = "".join(
        process.output() for process in deployment.processes if process.name != "subscriber"
    )

    basic = base64.b64encode(f"{EXOTEL_KEY}:{EXOTEL_TOKEN}".encode()).decode()
    secrets = [API_KEY, CALLBACK_SECRET, EXOTEL_KEY, EXOTEL_TOKEN, basic, BAD_TOKEN, *seen.secrets]
    assert [secret for secret in secrets if secret in logged] == []
    assert re.findall(r"whsec_[A-Za-z0-9+/]", logged) == []
    assert [spelling for spelling in IN_URLS + IN_BODIES if spelling in logged] == []
    assert ANY_SPELLING.findall(logged) == []
    # What was looked for was there to be found: the lines that carried it were logged.
    assert "api_key=[redacted]" in logged
    assert "from=0**-****-1110" in logged
    assert "from=%2B91%20*****%20*1110" in logged
    assert "unhandled error" in logged  # the endpoint the database refused
    assert "[SQL parameters hidden due to hide_parameters=True]" in logged
    # ... and what logs are searched by, whole.
    assert seen.call_id in logged
    assert seen.sid in logged


@dataclass
class Seen:
    """What a run of the API was shown: the secrets made for it, and its first call."""

    secrets: list[str]
    call_id: str
    sid: str


async def expect(status: int, response: Awaitable[httpx.Response]) -> Any:
    answer = await response
    assert answer.status_code == status, (answer.request.url, answer.text)
    json_body = answer.headers.get("content-type", "").startswith("application/json")
    return answer.json() if json_body else None


async def _use_every_endpoint(
    api: httpx.AsyncClient, anyone: httpx.AsyncClient, subscriber_url: str, db_url: str
) -> Seen:
    """Every endpoint, accepted and refused, with the number in several spellings and the API
    key where it does not belong."""
    shown: list[str] = []

    # Calls, with the number in several spellings, and refused.
    call = await expect(
        201,
        api.post(
            "/calls",
            json={"from": IN_BODIES[0], "app_id": "926"},
            headers={"Idempotency-Key": "log-test-1", "X-Request-ID": f"+91{NUMBER}"},
        ),
    )
    call_id, sid = call["id"], call["sid"]
    other = {"from": IN_BODIES[1], "app_id": "927"}
    await expect(409, api.post("/calls", json=other, headers={"Idempotency-Key": "log-test-1"}))
    batch = await expect(
        202,
        api.post("/calls/batch", json={"calls": [{"from": n, "app_id": "926"} for n in IN_BODIES]}),
    )
    await expect(422, api.post("/calls", json={"from": IN_BODIES[0][:-1], "app_id": "926"}))
    await expect(
        422, api.post("/calls", content=b"{", headers={"Content-Type": "application/json"})
    )
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    await expect(415, api.post("/calls", content=f"from={IN_URLS[0]}".encode(), headers=form))
    await expect(401, anyone.post("/calls", json={"from": IN_BODIES[1], "app_id": "926"}))
    await expect(401, anyone.get(f"/calls?api_key={API_KEY}&from={IN_URLS[1]}"))
    await expect(401, anyone.get("/calls", headers={"Authorization": f"Bearer {BAD_TOKEN}"}))
    for spelling in IN_URLS:
        await expect(200, api.get(f"/calls?from={spelling}&api_key={API_KEY}"))
    await expect(422, api.get("/calls?created_after=not-a-time"))
    for ref in (call_id, sid):
        await expect(200, api.get(f"/calls/{ref}"))
    await expect(404, api.get(f"/calls/{uuid.uuid4()}"))
    await expect(200, api.get(f"/batches/{batch['id']}"))
    await expect(404, api.get(f"/batches/{uuid.uuid4()}"))

    # Webhook endpoints: one that takes the events, and refused ones.
    endpoint = await expect(
        201, api.post("/webhook-endpoints", json={"url": f"{subscriber_url}/hook"})
    )
    shown.append(endpoint["secret"])
    for refused in (
        {"url": "http://169.254.169.254/latest"},
        {"url": f"http://{EXOTEL_KEY}:{EXOTEL_TOKEN}@127.0.0.1/hook"},
        {"url": f"{subscriber_url}/hook", "description": "a\u0000b"},
    ):
        await expect(422, api.post("/webhook-endpoints", json=refused))
    refused_by_db = {"url": f"{subscriber_url}/hook", "description": REFUSED}
    await expect(500, api.post("/webhook-endpoints", json=refused_by_db))
    endpoint_path = f"/webhook-endpoints/{endpoint['id']}"
    await expect(200, api.get("/webhook-endpoints"))
    await expect(200, api.get(endpoint_path))
    await expect(200, api.patch(endpoint_path, json={"description": f"calls to {IN_BODIES[1]}"}))
    shown.append((await expect(200, api.post(f"{endpoint_path}/rotate-secret")))["secret"])
    await expect(404, api.get(f"/webhook-endpoints/{uuid.uuid4()}"))

    # Exotel's callbacks and a flow's Passthru, with our tokens and with bad ones.
    await eventually(
        lambda: expect(200, api.get(f"/calls/{call_id}")),
        what="the first call completed",
        until=lambda call: call["status"] == "completed",
    )
    token = parse_qs(urlsplit(callback_path(call_id, CALLBACK_SECRET)).query)["token"][0]
    anywhere = parse_qs(urlsplit(callback_path(None, CALLBACK_SECRET)).query)["token"][0]
    shown += [token, anywhere]
    fields = {"CallSid": sid, "Status": "completed", "From": f"0{NUMBER}", "To": "08030752400"}
    await expect(200, anyone.post(f"/status-callback?call_id={call_id}&token={token}", data=fields))
    query = "&".join(f"{name}={value}" for name, value in fields.items())
    await expect(200, anyone.get(f"/status-callback?{query}&token={anywhere}"))
    await expect(
        403, anyone.post(f"/status-callback?call_id={call_id}&token={BAD_TOKEN}", data=fields)
    )
    await expect(401, anyone.get(f"/status-callback?{query}&From={IN_URLS[1]}"))
    passthru = f"/passthru?CallSid={sid}&From={IN_URLS[0]}&To=08030752400&digits=%221%22"
    await expect(200, anyone.get(f"{passthru}&token={anywhere}"))
    await expect(403, anyone.get(f"{passthru}&token={BAD_TOKEN}"))
    await expect(200, api.get(f"/calls/{call_id}/events"))
    await anyone.get(f"/calls/{call_id}/recording", auth=("", API_KEY))  # archived or not yet

    # Events, as pushed to the endpoint and as read.
    await eventually(
        lambda: expect(200, anyone.get(f"{subscriber_url}/received")),
        what="an event delivered",
        until=bool,
    )
    await feed_caught_up(db_url)  # the feed shows every event committed (tests/support/feed.py)
    events = await expect(200, api.get(f"/events?call_id={call_id}"))
    event_id = events["items"][0]["id"]
    await expect(200, api.get(f"/events/{event_id}"))
    await expect(202, api.post(f"/events/{event_id}/redeliver", json={}))
    await expect(404, api.get("/events/evt_00000000000000000000000000000000"))
    await expect(200, api.get(f"{endpoint_path}/attempts"))
    await expect(202, api.post(f"{endpoint_path}/recover", json={"since": "2020-01-01T00:00:00Z"}))
    await expect(204, api.delete(endpoint_path))

    # Health, metrics and the pages people read.
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        await anyone.get(path)
    for path in ("/ui", f"/ui/calls/{call_id}", f"/ui?from={IN_URLS[2]}"):
        await expect(200, anyone.get(path, auth=("", API_KEY)))
    await expect(401, anyone.get("/ui", auth=("", BAD_TOKEN)))
    return Seen(shown, call_id, sid)
