"""`POST /calls`, `GET /calls`, `GET /calls/{id}`: through the app, on real databases, with
Exotel replaced by a double that checks what was sent."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from app.db.models import Call
from app.db.session import create_engine
from app.main import create_app
from tests.conftest import (
    FAKE_ACCOUNT_SID,
    FAKE_API_KEY,
    FAKE_API_TOKEN,
    make_settings,
    place_body,
    serving,
)
from tests.support.eventually import eventually
from tests.support.exotel_double import (
    ExotelDouble,
    accepted,
    call_json,
    form_of,
    new_sid,
    rest_exception,
)

pytestmark = pytest.mark.anyio


async def test_a_placed_call_is_sent_to_exotel_and_answered_201(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    sid = new_sid()
    exotel.answer_connect(accepted(sid))
    body = place_body("9052161110", time_limit=300, time_out=30, custom_field="order-123")

    response = await client.post("/calls", json=body)

    assert response.status_code == 201, response.text
    call = response.json()
    assert call["sid"] == sid
    assert call["status"] == "in-progress"
    assert call["from"] == "+919052161110"
    assert call["dispatched_at"] is not None
    (sent,) = exotel.connects
    assert sent.url.path == f"/v1/Accounts/{FAKE_ACCOUNT_SID}/Calls/connect.json"
    expected_auth = base64.b64encode(f"{FAKE_API_KEY}:{FAKE_API_TOKEN}".encode()).decode()
    assert sent.headers["authorization"] == f"Basic {expected_auth}"
    form = form_of(sent)
    assert form["From"] == "09052161110"  # Exotel's documented form for Indian numbers
    assert form["CallerId"] == "08030752400"
    assert form["Url"] == f"http://my.exotel.com/{FAKE_ACCOUNT_SID}/exoml/start_voice/926"
    assert form["CallType"] == "trans"
    assert (form["TimeLimit"], form["TimeOut"], form["CustomField"]) == ("300", "30", "order-123")
    assert form["StatusCallback"].startswith(
        f"http://exocall.test/status-callback?call_id={call['id']}&token="
    )
    assert "StatusCallbackEvents[0]" not in form


async def test_a_call_exotel_has_not_answered_within_the_wait_is_answered_202(
    db_url: str, exotel: ExotelDouble
) -> None:
    """POST /calls waits DISPATCH_WAIT_SECONDS for Exotel's answer; past it, the call is
    answered 202 as queued, and is sent all the same."""
    answered, sid = asyncio.Event(), new_sid()

    async def held(_: httpx.Request) -> httpx.Response:
        await answered.wait()
        return accepted(sid)

    exotel.on_connect = held
    settings = make_settings(db_url, dispatch_wait_seconds=0.1)
    app = create_app(settings, exotel_transport=httpx.MockTransport(exotel.handle))
    async with serving(app) as client:
        try:
            response = await client.post("/calls", json=place_body())
            assert response.status_code == 202, response.text
            assert (response.json()["status"], response.json()["sid"]) == ("queued", None)
            await eventually(lambda: exotel.connects, what="the call sent to Exotel")
        finally:
            answered.set()

        async def placed() -> dict[str, Any]:
            return dict((await client.get(f"/calls/{response.json()['id']}")).json())

        await eventually(placed, what="Exotel's SID for the call", until=lambda c: c["sid"] == sid)


async def test_the_call_is_stored_before_exotel_is_asked(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    seen_while_dialling: list[dict[str, Any]] = []

    async def connect(request: httpx.Request) -> httpx.Response:
        call_id = form_of(request)["StatusCallback"].split("call_id=")[1].split("&")[0]
        seen_while_dialling.append((await client.get(f"/calls/{call_id}")).json())
        return accepted()

    exotel.on_connect = connect
    response = await client.post("/calls", json=place_body())

    assert response.status_code == 201
    assert seen_while_dialling[0]["status"] == "queued"
    assert seen_while_dialling[0]["id"] == response.json()["id"]


async def test_flow_url_is_sent_as_given(client: httpx.AsyncClient, exotel: ExotelDouble) -> None:
    body = place_body(flow_url="https://flows.example.test/start/42")
    del body["app_id"]
    response = await client.post("/calls", json=body)
    assert response.status_code == 201, response.text
    assert form_of(exotel.connects[0])["Url"] == "https://flows.example.test/start/42"


@pytest.mark.parametrize(
    ("number", "stored"),
    [
        ("+919052161110", "+919052161110"),
        ("09052161110", "+919052161110"),
        ("919052161110", "+919052161110"),
        ("90521 61110", "+919052161110"),
        ("080-3075-2400", "+918030752400"),  # Bengaluru landline with its STD code
        ("+14155550100", "+14155550100"),
    ],
)
async def test_numbers_are_stored_in_e164(
    client: httpx.AsyncClient, number: str, stored: str
) -> None:
    response = await client.post("/calls", json=place_body(number))
    assert response.status_code == 201, response.text
    assert response.json()["from"] == stored


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"from": "12345"}, "from"),
        ({"from": "0052161110"}, "from"),
        ({"from": "+91905216111"}, "from"),
        ({"from": None}, "from"),
        ({"time_out": 0}, "time_out"),
        ({"time_out": 61}, "time_out"),
        ({"time_limit": 14401}, "time_limit"),
        ({"time_limit": "long"}, "time_limit"),
        ({"custom_field": "x" * 129}, "custom_field"),
        ({"app_id": "abc"}, "app_id"),
        ({"caller_id": "exophone"}, "caller_id"),
        ({"flow_url": "ftp://flows.test/1"}, "flow_url"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_invalid_input_is_refused_naming_the_field(
    client: httpx.AsyncClient, exotel: ExotelDouble, change: dict[str, Any], field: str
) -> None:
    body = place_body() | change
    response = await client.post("/calls", json=body)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert field in [detail["field"] for detail in error["details"]]
    assert exotel.requests == []
    assert (await client.get("/calls")).json()["items"] == []


@pytest.mark.parametrize("flows", [{}, {"app_id": "926", "flow_url": "https://flows.test/1"}])
async def test_exactly_one_flow_is_required(
    client: httpx.AsyncClient, flows: dict[str, str]
) -> None:
    body = {"from": "9052161110", "caller_id": "08030752400"} | flows
    response = await client.post("/calls", json=body)
    assert response.status_code == 422
    assert "exactly one of app_id and flow_url" in response.json()["error"]["message"]


async def test_caller_id_is_required_without_a_default(client: httpx.AsyncClient) -> None:
    body = place_body()
    del body["caller_id"]
    response = await client.post("/calls", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "caller_id"


async def test_malformed_json_is_a_clear_error(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/calls", content=b'{"from": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize(
    ("exotel_status", "message", "code", "http_status"),
    [
        (403, "Call to [09052161110] cannot be made because of TRAI NDNC regulations", None, 422),
        (400, "Invalid Call Parameters: No 'From' specified", None, 422),
        (402, "Your plan does not allow this call", None, 502),
        (401, "Authentication failed", None, 502),
    ],
)
async def test_exotel_refusal_keeps_the_call_as_rejected(
    client: httpx.AsyncClient,
    exotel: ExotelDouble,
    exotel_status: int,
    message: str,
    code: int | None,
    http_status: int,
) -> None:
    exotel.answer_connect(rest_exception(exotel_status, message + "; ", code))

    response = await client.post("/calls", json=place_body())

    assert response.status_code == http_status
    error = response.json()["error"]
    assert error["code"] == "exotel_rejected"
    assert error["message"] == message
    assert error["exotel_status"] == exotel_status
    stored = (await client.get(f"/calls/{error['call_id']}")).json()
    assert stored["status"] == "rejected"
    assert stored["sid"] is None
    failed_at = datetime.fromisoformat(stored["error_at"])
    assert stored["error"] == {
        "code": "exotel_rejected",
        "message": message,
        "exotel_status": exotel_status,
        "exotel_code": code,
    }
    # On the database's clock, as the call's other times are.
    created_at = datetime.fromisoformat(stored["created_at"])
    assert created_at <= failed_at <= datetime.fromisoformat(stored["updated_at"])


@pytest.mark.parametrize(
    "answer",
    [
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("server disconnected"),
        rest_exception(500, "Could not originate call"),
        rest_exception(504, "Gateway Timeout"),
        httpx.Response(502, text="<html>Bad Gateway</html>"),
        httpx.Response(200, text="not a body Exotel would send"),
    ],
    ids=["read-timeout", "disconnect", "500", "504", "502-html", "unreadable-200"],
)
async def test_ambiguous_answers_make_the_call_unknown_not_rejected(
    client: httpx.AsyncClient, exotel: ExotelDouble, answer: httpx.Response | Exception
) -> None:
    # Exotel may have dialled: neither we nor the caller (invited by a 5xx) may try again.
    exotel.answer_connect(answer)

    response = await client.post("/calls", json=place_body())

    assert response.status_code == 202
    call = response.json()
    assert call["status"] == "unknown"
    assert call["error"]["code"] == "exotel_outcome_unknown"
    # The dispatcher claims the oldest call first: had this one gone back to the queue, it
    # would have been sent again before (or with) a later call.
    exotel.accept_connects()
    later = await client.post("/calls", json=place_body("9052161111"))
    assert later.status_code == 201, later.text
    assert [form_of(r)["From"] for r in exotel.connects] == ["09052161110", "09052161111"]


# --- how a call's status was learnt: Exotel's answers among what was received for it ---------


async def received(client: httpx.AsyncClient, call_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/calls/{call_id}/events")
    assert response.status_code == 200, response.text
    return list(response.json())


async def test_exotels_answer_to_calls_connect_is_kept_with_the_call(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    sid = new_sid()
    answer = call_json(sid, "in-progress", DateUpdated="2026-12-05 15:30:00")
    exotel.answer_connect(httpx.Response(200, json=answer))

    call = (await client.post("/calls", json=place_body())).json()

    (dispatch,) = await received(client, call["id"])
    assert dispatch["kind"] == "dispatch"
    assert (dispatch["method"], dispatch["content_type"]) == ("POST", None)  # our request
    assert dispatch["payload"] == answer["Call"]  # as Exotel answered it
    assert (dispatch["status"], dispatch["outcome"], dispatch["problem"]) == (
        "in-progress",
        "applied",
        None,
    )
    assert dispatch["date_updated_raw"] == "2026-12-05 15:30:00"
    assert dispatch["received_at"] == call["dispatched_at"]  # recorded with its outcome


@pytest.mark.parametrize(
    ("answer", "status", "payload", "problem"),
    [
        (
            rest_exception(403, "Call to [09052161110] cannot be made <DND>; "),
            "rejected",
            {
                "Status": 403,
                "Message": "Call to [09052161110] cannot be made <DND>; ",
                "Code": None,
            },
            "Call to [09052161110] cannot be made <DND>",
        ),
        (
            rest_exception(504, "Gateway Timeout"),
            "unknown",
            {"Status": 504, "Message": "Gateway Timeout", "Code": None},
            "Gateway Timeout",
        ),
        (httpx.Response(502, text="<html>Bad Gateway</html>"), "unknown", {}, "Bad Gateway"),
        (httpx.ReadTimeout("timed out"), "unknown", {}, "no answer from Exotel: ReadTimeout"),
    ],
    ids=["refused", "5xx", "not-exotels", "no-answer"],
)
async def test_an_answer_that_is_no_call_is_kept_with_what_it_said(
    client: httpx.AsyncClient,
    exotel: ExotelDouble,
    answer: httpx.Response | Exception,
    status: str,
    payload: dict[str, Any],
    problem: str,
) -> None:
    """How a call became `rejected` or `unknown`: Exotel's answer, or that none came."""
    exotel.answer_connect(answer)

    response = (await client.post("/calls", json=place_body())).json()
    call_id = response.get("id") or response["error"]["call_id"]

    (dispatch,) = await received(client, call_id)
    assert (await client.get(f"/calls/{call_id}")).json()["status"] == status
    assert (dispatch["kind"], dispatch["outcome"], dispatch["status"]) == (
        "dispatch",
        "applied",
        None,
    )
    assert (dispatch["payload"], dispatch["problem"]) == (payload, problem)


async def test_an_answer_no_column_holds_as_sent_is_kept_all_the_same(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    """Exotel's answer is kept whatever it holds: what no column can hold is left unread, and
    what no JSON column can hold (NUL, half a surrogate pair, NaN, endless nesting) replaced."""
    sid = new_sid()
    deep: list[Any] = []
    for _ in range(39):
        deep = [deep]
    fields = {"Sid": sid, "Status": "x" * 40, "DateUpdated": "y" * 40, "To": "a\x00b"}
    fields |= {"From": "\ud800", "Price": float("nan"), "Details": deep}
    exotel.answer_connect(httpx.Response(200, text=json.dumps({"Call": fields})))

    call = (await client.post("/calls", json=place_body())).json()

    assert (call["sid"], call["status"]) == (sid, "in-progress")
    (dispatch,) = await received(client, call["id"])
    assert (dispatch["status"], dispatch["date_updated_raw"]) == (None, None)
    payload = dispatch["payload"]
    assert (payload["Status"], payload["DateUpdated"]) == ("x" * 40, "y" * 40)
    assert (payload["To"], payload["From"], payload["Price"]) == ("a\ufffdb", "\ufffd", "nan")
    assert json.dumps(payload["Details"]).count("[") == 31  # DEEPEST levels in the payload


async def test_get_call_by_id_and_by_sid(client: httpx.AsyncClient, exotel: ExotelDouble) -> None:
    sid = new_sid()
    exotel.answer_connect(accepted(sid))
    created = (await client.post("/calls", json=place_body())).json()

    by_id = await client.get(f"/calls/{created['id']}")
    by_sid = await client.get(f"/calls/{sid}")

    assert by_id.json() == by_sid.json() == created


@pytest.mark.parametrize("ref", ["5a1e0000-0000-4000-8000-0000000000a1", "no-such-sid"])
async def test_unknown_call_is_404(client: httpx.AsyncClient, ref: str) -> None:
    response = await client.get(f"/calls/{ref}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "call_not_found"


async def every_page(client: httpx.AsyncClient) -> list[str]:
    """The ids of every call, two a page, through the cursors."""
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/calls", params=params)).json()
        seen += [call["id"] for call in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


async def test_list_is_newest_first_with_cursor_pages(client: httpx.AsyncClient) -> None:
    ids = [(await client.post("/calls", json=place_body())).json()["id"] for _ in range(5)]

    seen = await every_page(client)

    assert seen == list(reversed(ids))


async def test_cursor_pages_through_calls_created_at_one_instant(
    client: httpx.AsyncClient, db_url: str
) -> None:
    ids = [(await client.post("/calls", json=place_body())).json()["id"] for _ in range(5)]
    engine = create_engine(db_url)
    async with engine.begin() as connection:  # a batch's calls share their created_at
        await connection.execute(update(Call).values(created_at=datetime.now(UTC)))
    await engine.dispose()

    seen = await every_page(client)

    assert seen == sorted(ids, key=uuid.UUID, reverse=True)


async def test_list_filters(client: httpx.AsyncClient, exotel: ExotelDouble) -> None:
    first = (await client.post("/calls", json=place_body("9052161110"))).json()
    exotel.answer_connect(rest_exception(403, "DND"))
    second = (await client.post("/calls", json=place_body("9052161111"))).json()["error"]

    async def ids(**params: Any) -> list[str]:
        response = await client.get("/calls", params=params)
        assert response.status_code == 200, response.text
        return [call["id"] for call in response.json()["items"]]

    assert await ids(status="rejected") == [second["call_id"]]
    assert await ids(status=["rejected", "in-progress"]) == [second["call_id"], first["id"]]
    assert await ids(**{"from": "09052161110"}) == [first["id"]]
    assert await ids(created_after=first["created_at"]) == [second["call_id"], first["id"]]
    assert await ids(created_before=first["created_at"]) == []
    assert await ids(created_after="2999-01-01T00:00:00+00:00") == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"status": "ringing"}, "status"),
        ({"from": "123"}, "from"),
        ({"limit": 0}, "limit"),
        ({"created_after": "2024-01-01T00:00:00"}, "created_after"),  # no offset: ambiguous
        # No call's digits can hold a NUL: PostgreSQL refused the query (500; found by
        # tests/test_fuzz.py).
        ({"digits": "1\x00"}, "digits"),
    ],
)
async def test_bad_list_parameters_are_named(
    client: httpx.AsyncClient, params: dict[str, Any], field: str
) -> None:
    response = await client.get("/calls", params=params)
    assert response.status_code == 422
    assert field in [d["field"] for d in response.json()["error"]["details"]]


async def test_unknown_route_uses_the_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/nowhere")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
