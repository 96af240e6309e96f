"""`/ui`, the status page: who may see it, what it shows, that it escapes what it shows; and, in
a real Chromium against the real server and simulator, what a person sees (`make screenshot`
runs that test to write docs/ui.png)."""

from __future__ import annotations

import base64
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import httpx
import pytest
from fastapi import FastAPI
from playwright.async_api import Browser
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.calls import queries
from app.calls.callback_auth import passthru_url
from app.calls.dispatch import budget_of
from app.calls.ratelimit import THROTTLE
from app.calls.reconcile import reconcile_once
from app.config import Settings
from app.db.models import Batch, Call, CallStatus, Dial, ExotelRequest, Throttle
from app.exotel.wire import IST, format_exotel_time
from app.main import create_app, exotel_client
from tests.conftest import (
    AUTH,
    FAKE_CALLBACK_SECRET,
    FAKE_CALLER_ID,
    FAKE_INTERNAL_API_KEY,
    SCREENSHOT_PATH,
    callback_path,
    make_settings,
    place_body,
    serving,
)
from tests.support.eventually import eventually
from tests.support.exotel_double import ExotelDouble, accepted, call_json, new_sid, rest_exception
from tests.support.processes import Deployment

pytestmark = pytest.mark.anyio

MASKED = re.compile(r"\+91\*{6}\d{4}")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- reading the HTML ----------------------------------------------------------------------


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        parts = [c if isinstance(c, str) else c.text() for c in self.children]
        return " ".join("".join(parts).split())

    def walk(self) -> list[Node]:
        found = [self]
        for child in self.children:
            if isinstance(child, Node):
                found += child.walk()
        return found

    def by_id(self, id_: str) -> Node:
        (node,) = [n for n in self.walk() if n.attrs.get("id") == id_]
        return node

    def all(self, tag: str) -> list[Node]:
        return [n for n in self.walk() if n.tag == tag]

    def rows(self) -> list[list[str]]:
        """A table's body rows, as the text of their cells."""
        (body,) = self.all("tbody")
        return [[cell.text() for cell in row.all("td")] for row in body.all("tr")]


class _TreeBuilder(HTMLParser):
    VOID = {"meta", "link", "br", "img", "input", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.root = Node("#document", {})
        self.open = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {name: value or "" for name, value in attrs})
        self.open[-1].children.append(node)
        if tag not in self.VOID:
            self.open.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.open[-1].children.append(Node(tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag: str) -> None:
        assert tag in [n.tag for n in self.open], f"</{tag}> closes nothing"
        while self.open.pop().tag != tag:
            pass

    def handle_data(self, data: str) -> None:
        self.open[-1].children.append(data)


def parse(html: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    assert builder.open == [builder.root], "unclosed elements"
    return builder.root


async def page(client: httpx.AsyncClient, path: str) -> tuple[httpx.Response, Node]:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    return response, parse(response.text)


# --- access ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ui", "/ui/calls/5a1e0000-0000-4000-8000-0000000000c1"])
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-key",
        basic("ops", "wrong-key"),
        basic(FAKE_INTERNAL_API_KEY, ""),  # the key as the user name is not the password
        "Basic " + base64.b64encode(FAKE_INTERNAL_API_KEY.encode()).decode(),  # no colon
        "Basic not*base64",
        f"Digest {FAKE_INTERNAL_API_KEY}",
    ],
)
async def test_the_page_needs_a_key_and_asks_the_browser_for_one(
    client: httpx.AsyncClient, path: str, authorization: str | None
) -> None:
    client.headers.pop("Authorization")
    headers = {"Authorization": authorization} if authorization else {}
    response = await client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="exocall"'
    assert response.headers["Cache-Control"] == "no-store"
    assert response.json()["error"]["code"] == "unauthenticated"


@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer {FAKE_INTERNAL_API_KEY}",
        basic("ops", FAKE_INTERNAL_API_KEY),
        basic("", FAKE_INTERNAL_API_KEY),
    ],
)
async def test_a_bearer_key_or_basic_auth_with_a_key_as_password_opens_it(
    client: httpx.AsyncClient, authorization: str
) -> None:
    client.headers.pop("Authorization")
    response = await client.get("/ui", headers={"Authorization": authorization})
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "script-src" not in policy  # none at all, by default-src
    assert "frame-ancestors 'none'" in policy
    assert "<script" not in response.text


async def test_every_configured_key_opens_it(db_url: str, exotel: ExotelDouble) -> None:
    settings = make_settings(db_url, api_keys="old-fake-key,new-fake-key")
    app = create_app(settings, exotel_transport=httpx.MockTransport(exotel.handle))
    async with serving(app) as client:
        client.headers.pop("Authorization")
        for key in ("old-fake-key", "new-fake-key"):
            assert (await client.get("/ui", headers={"Authorization": basic("x", key)})).is_success


async def test_the_pages_are_not_in_the_api_schema(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not [path for path in paths if path.startswith("/ui")]


# --- what the status page shows --------------------------------------------------------------


def _call(status: CallStatus, digit: int, age: timedelta, **fields: Any) -> Call:
    created = datetime.now(UTC) - age
    return Call(
        id=uuid.uuid4(),
        status=status,
        from_number=f"+9190521611{digit:02d}",
        caller_id=FAKE_CALLER_ID,
        app_id="926",
        created_at=created,
        updated_at=created,
        send_tries=0,
        # Queued calls stay queued: the app's dispatcher leaves them until then.
        next_attempt_at=created + timedelta(days=1) if status == CallStatus.QUEUED else None,
        **fields,
    )


async def test_the_status_page_counts_calls_the_queue_batches_and_the_rate(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    batch = Batch(id=uuid.uuid4(), size=4, created_at=datetime.now(UTC) - timedelta(minutes=5))
    minute = timedelta(minutes=1)
    in_batch = {"batch_id": batch.id}
    calls = [
        _call(CallStatus.COMPLETED, 10, 4 * minute, sid=new_sid(), **in_batch),
        _call(CallStatus.COMPLETED, 11, 4 * minute, sid=new_sid(), **in_batch),
        _call(CallStatus.BUSY, 12, 4 * minute, sid=new_sid(), **in_batch),
        _call(CallStatus.QUEUED, 13, 4 * minute, **in_batch),
        _call(CallStatus.COMPLETED, 14, 3 * minute, sid=new_sid()),
        _call(CallStatus.BUSY, 15, 3 * minute, sid=new_sid()),
        _call(CallStatus.QUEUED, 16, 0 * minute),
        _call(CallStatus.IN_PROGRESS, 17, 2 * minute, sid=new_sid()),
        _call(CallStatus.UNKNOWN, 18, 2 * minute, error_code="exotel_outcome_unknown"),
        _call(CallStatus.REJECTED, 19, 2 * minute, error_code="exotel_rejected"),
        _call(CallStatus.COMPLETED, 20, timedelta(days=2), sid=new_sid()),  # before the last 24 h
    ]
    now = datetime.now(UTC)
    async with sessionmaker() as session, session.begin():
        session.add(batch)
        await session.flush()
        session.add_all(calls)
        # Granted in the last 60 s: 3 connects and a look-up; the 2 older ones are not.
        session.add_all(
            ExotelRequest(at=now - timedelta(seconds=age), kind="connect")
            for age in (1, 5, 30, 90, 300)
        )
        session.add(ExotelRequest(at=now - timedelta(seconds=2), kind="lookup"))
        await session.merge(Throttle(name=THROTTLE, paused_until=now + timedelta(seconds=45)))

    response, html = await page(client, "/ui")

    by_status = {row[0]: row[1:3] for row in html.by_id("by-status").rows()}
    assert by_status == {
        "queued": ["2", "2"],
        "scheduled": ["0", "0"],
        "in-progress": ["1", "1"],
        "completed": ["4", "3"],
        "busy": ["2", "2"],
        "no-answer": ["0", "0"],
        "failed": ["0", "0"],
        "canceled": ["0", "0"],
        "rejected": ["1", "1"],
        "unknown": ["1", "1"],
        "expired": ["0", "0"],
        "total": ["11", "10"],
    }
    queue = html.by_id("queue").text()
    assert "2 waiting" in queue
    assert re.search(
        r"oldest waiting 4 min \d+ s, since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+05:30", queue
    )
    assert html.by_id("rate-line").text() == "3 / 200 in the last 60 s"
    rate = html.by_id("rate").text()
    assert "1 call look-up drew from it too" in rate
    assert re.search(r"Exotel answered 429: every replica waits 4\d s more", rate)

    (batch_row,) = html.by_id("batches").all("tbody")[0].all("tr")
    assert batch_row.attrs["id"] == f"batch-{batch.id}"
    assert batch_row.all("td")[2].text() == "4"  # size
    assert [b.text() for b in batch_row.all("b")] == ["3 / 4"]  # ended
    assert "75%" in batch_row.text()
    chips = [s.text() for s in batch_row.all("span") if "chip" in s.attrs.get("class", "")]
    assert chips == ["queued 1", "completed 2", "busy 1"]
    bar = batch_row.all("rect")
    assert [(r.attrs["class"], r.attrs["width"]) for r in bar] == [
        ("st-completed", "50.00"),
        ("st-busy", "25.00"),
        ("st-queued", "25.00"),
    ]

    rows = html.by_id("calls").rows()
    newest_first = sorted(calls, key=lambda call: call.created_at, reverse=True)
    assert [row[1] for row in rows] == [f"+91******{c.from_number[-4:]}" for c in newest_first]
    assert [row[2] for row in rows] == [c.status for c in newest_first]
    assert [row[3] for row in rows] == [c.sid or "" for c in newest_first]
    assert [row[4] for row in rows] == [c.error_code or "" for c in newest_first]
    links = [row.all("a")[0].attrs["href"] for row in html.by_id("calls").all("tr")[1:]]
    assert links == [f"/ui/calls/{c.id}" for c in newest_first]
    for call in calls:  # numbers are personal data: masked, everywhere on this page
        assert call.from_number not in response.text
        assert call.from_number[1:] not in response.text
    # Every time is IST, with its offset.
    times = [t.attrs["datetime"] for t in html.all("time")]
    assert times
    assert all(t.endswith("+05:30") for t in times)


async def test_an_empty_service_says_so(client: httpx.AsyncClient) -> None:
    _, html = await page(client, "/ui")
    assert html.by_id("status-total").text() == "total 0 0"
    assert "nothing waits to be sent" in html.by_id("queue").text()
    assert html.by_id("rate-line").text() == "0 / 200 in the last 60 s"
    assert "No batches yet" in html.text()
    assert "No calls yet" in html.text()


def _scheduled(digit: int, at: datetime, **fields: Any) -> Call:
    """A call waiting, `scheduled`, for `at` (later than any test lasts: the app's dispatcher
    leaves it)."""
    call = _call(CallStatus.SCHEDULED, digit, timedelta(minutes=10), **fields)
    call.next_attempt_at = at
    return call


async def test_the_status_page_shows_the_scheduled_calls_next_due_and_why_they_wait(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    hour = timedelta(hours=1)
    ended = now - timedelta(minutes=5)
    busy = {"n": 1, "sid": new_sid(), "status": "busy", "ended_at": ended.isoformat()}
    retry = {"max_attempts": 3, "on": ["busy", "no-answer"], "intervals": [7200]}
    # Every day's opening of 00:00-23:59 in Kolkata is 18:30 UTC.
    window = {"start": "00:00", "end": "23:59", "timezone": "Asia/Kolkata"}
    opening = datetime.combine(now.date(), time(18, 30), tzinfo=UTC)
    opening += timedelta(days=1) if opening <= now + 3 * hour else timedelta()
    calls = {
        "not_before": _scheduled(30, now + hour, not_before=now + hour),
        # Attempt 2, due the retry's 2 h after attempt 1 ended busy.
        "retry": _scheduled(31, ended + 2 * hour, retry=retry, max_attempts=3, attempts=[busy]),
        "window": _scheduled(32, opening, window=window, not_before=now + 2 * hour),
        # Due when nothing of its own says: held back by the number's limit.
        "limit": _scheduled(33, now + 3 * hour, expires_at=now + 4 * hour),
        "later": _scheduled(34, now + 48 * hour, not_before=now + 48 * hour),
    }
    async with sessionmaker() as session, session.begin():
        session.add_all(calls.values())
        session.add(_call(CallStatus.QUEUED, 35, timedelta(minutes=1)))

    _, html = await page(client, "/ui")

    card = html.by_id("scheduled").text()
    assert card.startswith("Scheduled 5 waiting for their time")
    assert "next due" in card
    assert "due now" not in card
    assert "1 waiting" in html.by_id("queue").text()  # the queue is the queued calls alone
    rows = html.by_id("next-scheduled").rows()
    # Soonest first: in 1 h, 1 h 55 min, 3 h, the window's next opening (3 to 27 h), 48 h.
    assert [row[2] for row in rows] == [f"+91******11{digit}" for digit in (30, 31, 33, 32, 34)]
    by_number = {row[2][-2:]: row for row in rows}
    assert by_number["30"][3:5] == ["1 of 1", "its not_before"]
    assert by_number["31"][3:5] == ["2 of 3", "the retry interval after busy"]
    assert by_number["32"][3:5] == ["1 of 1", "its window to open"]
    assert by_number["33"][3:5] == ["1 of 1", "the number's limit"]
    assert by_number["33"][5].endswith("+05:30")  # its expires_at
    assert by_number["30"][1].startswith("in 59 min") or by_number["30"][1].startswith("in 1 h")
    (link,) = html.by_id(f"scheduled-{calls['retry'].id}").all("a")
    assert link.attrs["href"] == f"/ui/calls/{calls['retry'].id}"

    async with sessionmaker() as session:
        due = await queries.schedule(session, now=now + 30 * hour, limit=2)
    assert due.due == 4
    assert [call.id for call in due.soonest] == [calls["not_before"].id, calls["retry"].id]


async def test_without_scheduled_calls_the_page_says_none_waits(client: httpx.AsyncClient) -> None:
    _, html = await page(client, "/ui")
    assert html.by_id("scheduled").text() == (
        "Scheduled 0 waiting for their time no call waits for a time, a window, a number's "
        "limit or a retry"
    )
    assert not [n for n in html.walk() if n.attrs.get("id") == "next-scheduled"]


@pytest.mark.parametrize("statement", ["soonest", "due"])
async def test_the_scheduled_calls_are_read_through_their_partial_index(
    engine: AsyncEngine, statement: str
) -> None:
    """Even in a prepared statement's generic plan, made for any parameters: the condition
    `status = 'scheduled'` is in the statement, as the index's own condition is."""
    query, argument = {
        "soonest": (queries.soonest_scheduled(10), "10"),
        "due": (
            select(func.count()).where(queries.SCHEDULED, Call.next_attempt_at <= func.now()),
            "",
        ),
    }[statement]
    sql = str(query.compile(dialect=engine.dialect, compile_kwargs={"render_postcompile": True}))
    async with engine.connect() as connection:
        raw = (await connection.get_raw_connection()).driver_connection
        assert raw is not None
        # Neither a scan of the table nor a sort, wherever an index can serve: on a test's few
        # rows, sorting the one scheduled call costs the planner no more than the index's order,
        # and it took either, by the statistics of the moment.
        await raw.execute("SET enable_seqscan = off")
        await raw.execute("SET enable_sort = off")
        await raw.execute("SET plan_cache_mode = force_generic_plan")
        await raw.execute(f"PREPARE scheduled AS {sql}")
        execute = f"EXECUTE scheduled({argument})" if argument else "EXECUTE scheduled"
        plan = "\n".join(row[0] for row in await raw.fetch(f"EXPLAIN {execute}"))
    assert "Seq Scan" not in plan, plan
    if statement == "soonest":  # in the index's order, with no sort
        assert "Index Scan using ix_call_scheduled_next_attempt_at" in plan, plan
        assert "Sort" not in plan, plan


async def test_refresh_can_be_stopped(client: httpx.AsyncClient) -> None:
    _, html = await page(client, "/ui")
    (refresh,) = [m for m in html.all("meta") if m.attrs.get("http-equiv") == "refresh"]
    assert refresh.attrs["content"] == "10"
    _, html = await page(client, "/ui?refresh=0")
    assert not [m for m in html.all("meta") if m.attrs.get("http-equiv") == "refresh"]
    assert (await client.get("/ui?refresh=-1")).status_code == 422


# --- a call's page ---------------------------------------------------------------------------


def _callback(sid: str, status: str, date: str, recording: str = "") -> dict[str, Any]:
    return {
        "files": {
            "CallSid": (None, sid),
            "Status": (None, status),
            "RecordingUrl": (None, recording),
            "DateUpdated": (None, date),
        }
    }


async def test_a_calls_page_shows_its_details_and_every_callback_in_order(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    sid = new_sid()
    exotel.answer_connect(accepted(sid))
    placed = await client.post("/calls", json=place_body("09052161117", custom_field="order-9"))
    assert placed.status_code == 201, placed.text
    call_id = placed.json()["id"]
    recording = "https://recordings.example.test/a.mp3"
    sends = [
        ("completed", "2026-11-27 02:06:35", recording),
        ("completed", "2026-11-27 02:06:35", recording),  # again: a duplicate
        ("in-progress", "2026-11-27 02:06:20", ""),  # a late `answered`: stale
    ]
    for status, date, url in sends:
        response = await client.post(callback_path(call_id), **_callback(sid, status, date, url))
        assert response.status_code == 200, response.text

    _, html = await page(client, f"/ui/calls/{call_id}")

    assert html.by_id("status").text() == "completed"
    facts = html.by_id("facts").text()
    assert "+919052161117" in facts  # behind the key, the whole number
    assert sid in facts
    assert html.by_id("custom-field").text() == "order-9"
    (link,) = [a for a in html.all("a") if a.attrs["href"] == recording]
    assert link.attrs["rel"] == "noreferrer noopener"
    rows = html.by_id("timeline").rows()
    assert [row[1].split(" ")[0] for row in rows] == [
        "created",
        "dispatched",
        "dispatch",
        "status",
        "status",
        "status",
    ]
    # How it became in-progress: Exotel's answer to Calls/connect, kept as it came.
    dispatch = rows[2]
    assert dispatch[1] == "dispatch Exotel's answer to Calls/connect"
    assert (dispatch[2], dispatch[4]) == ("in-progress", "applied")
    assert f'"Sid": "{sid}"' in html.by_id("timeline").all("pre")[0].text()
    callbacks = rows[3:]
    assert [row[2] for row in callbacks] == ["completed", "completed", "in-progress"]
    assert [row[4] for row in callbacks] == ["applied", "duplicate", "stale"]
    assert [row[5] for row in callbacks] == [
        "2026-11-27 02:06:35+05:30",
        "2026-11-27 02:06:35+05:30",
        "2026-11-27 02:06:20+05:30",
    ]
    assert all(row[1] == "status callback multipart/form-data" for row in callbacks)
    received = [row[0] for row in rows]
    assert received == sorted(received)
    # A call that has ended is not refreshed.
    assert not [m for m in html.all("meta") if m.attrs.get("http-equiv") == "refresh"]


async def test_a_calls_page_shows_its_policy_its_attempts_and_why_it_waits(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    sid = new_sid()
    exotel.answer_connect(accepted(sid))
    expires_at = datetime.now(UTC) + timedelta(days=1)
    retry = {"max_attempts": 2, "on": ["busy"], "intervals": [1800]}
    body = place_body("09052161112", retry=retry, expires_at=expires_at.isoformat())
    placed = await client.post("/calls", json=body)
    assert placed.status_code == 201, placed.text
    call_id = placed.json()["id"]
    busy = _callback(sid, "busy", format_exotel_time(datetime.now(UTC)))
    assert (await client.post(callback_path(call_id), **busy)).status_code == 200

    _, html = await page(client, f"/ui/calls/{call_id}")

    assert html.by_id("status").text() == "scheduled"
    assert html.by_id("attempt-count").text() == "1 of 2"
    ((n, shown_sid, status, dispatched, ended, duration, error, price),) = html.by_id(
        "attempts"
    ).rows()
    assert (n, shown_sid, status, duration, error, price) == ("1", sid, "busy", "—", "—", "—")
    assert dispatched.endswith("+05:30")
    assert ended.endswith("+05:30")
    assert html.by_id("retry").text() == "2 attempts in all, another after busy; waits 30 min"
    assert html.by_id("window").text() == "any hour"
    assert html.by_id("not-before").text() == "—"
    assert html.by_id("expires-at").text() == _ist_text(expires_at)
    waits = html.by_id("next-attempt").text()
    assert re.search(
        r"in (29|30) min \d+ s: attempt 2, waiting for the retry interval after busy", waits
    )
    assert html.by_id("canceled-at").text() == "—"
    (refresh,) = [m for m in html.all("meta") if m.attrs.get("http-equiv") == "refresh"]
    assert refresh.attrs["content"] == "10"  # it can still change

    canceled = await client.post(f"/calls/{call_id}/cancel")
    assert canceled.status_code == 200, canceled.text

    _, html = await page(client, f"/ui/calls/{call_id}")

    assert html.by_id("status").text() == "canceled"
    assert html.by_id("canceled-at").text().endswith("+05:30")
    assert html.by_id("next-attempt").text() == "—"
    what = [row[1] for row in html.by_id("timeline").rows()]
    assert what[-1] == "cancel"


def _ist_text(instant: datetime) -> str:
    return instant.astimezone(IST).strftime("%Y-%m-%d %H:%M:%S+05:30")


async def test_a_calls_page_shows_each_attempts_price_and_error_escaped(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    first, second = new_sid(), new_sid()
    dispatched = datetime.now(UTC) - timedelta(hours=1)
    ended = dispatched + timedelta(seconds=20)
    hostile = {"code": "exotel_rejected", "message": HOSTILE, "exotel_status": 403}
    attempts = [
        {"n": 1, "sid": first, "status": "busy", "dispatched_at": dispatched.isoformat(),
         "ended_at": ended.isoformat(), "duration": 20, "error": hostile, "price": 0.6},
        {"n": 2, "sid": second, "status": "completed", "dispatched_at": None,
         "ended_at": ended.isoformat(), "duration": 61, "error": None, "price": None},
    ]  # fmt: skip
    call = _call(
        CallStatus.COMPLETED,
        36,
        timedelta(hours=2),
        sid=second,
        attempts=attempts,
        max_attempts=3,
        price=Decimal("0.6"),
        retry={"max_attempts": 3, "on": ["busy", "no-answer"], "intervals": [60, 5400]},
        window={"start": "21:00", "end": "06:00", "timezone": "Asia/Dubai"},
    )
    async with sessionmaker() as session, session.begin():
        session.add(call)
        await session.flush()
        number = call.from_number
        session.add(Dial(call_id=call.id, n=1, number=number, sent_at=dispatched, sid=first))

    response, html = await page(client, f"/ui/calls/{first}")  # by an earlier attempt's SID

    assert "<script" not in response.text
    assert "<img" not in response.text
    rows = html.by_id("attempts").rows()
    assert [row[:3] for row in rows] == [["1", first, "busy"], ["2", second, "completed"]]
    assert [row[5] for row in rows] == ["20 s", "61 s"]
    assert rows[0][6] == f"exotel_rejected {HOSTILE}"
    assert [row[7] for row in rows] == ["₹0.60", "—"]
    assert html.by_id("price").text() == "₹0.60"
    assert html.by_id("retry").text() == (
        "3 attempts in all, another after busy, no-answer; waits 1 min, then 1 h 30 min "
        "(the last repeats)"
    )
    assert html.by_id("window").text() == "21:00-06:00 Asia/Dubai"
    assert html.by_id("attempt-count").text() == "2 of 3"
    timeline = html.by_id("timeline").rows()
    assert [row[1] for row in timeline if row[1].startswith("dispatched")] == ["dispatched"]
    assert [row[2] for row in timeline if row[1] == "dispatched"] == ["attempt 1 sent to Exotel"]


async def test_a_calls_page_shows_what_the_customer_keyed_in_its_flow(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    sid = new_sid()
    exotel.answer_connect(accepted(sid))
    call_id = (await client.post("/calls", json=place_body())).json()["id"]
    path = passthru_url("", FAKE_CALLBACK_SECRET.encode())
    for digits in ('"1"', '""', '"2"'):
        query = urlencode({"CallSid": sid, "digits": digits})
        assert (await client.get(f"{path}&{query}")).status_code == 200

    _, html = await page(client, f"/ui/calls/{call_id}")

    assert html.by_id("digits").text() == "2"
    rows = html.by_id("timeline").rows()
    assert [row[1] for row in rows[3:]] == [
        "passthru keyed 1",
        "passthru nothing keyed",
        "passthru keyed 2",
    ]


async def test_a_refused_calls_page_shows_its_error(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    exotel.answer_connect(rest_exception(403, "Call to [09052161115] cannot be made <DND>"))
    placed = await client.post("/calls", json=place_body("09052161115"))
    assert placed.status_code == 422, placed.text
    call_id = placed.json()["error"]["call_id"]

    response, html = await page(client, f"/ui/calls/{call_id}")

    assert html.by_id("status").text() == "rejected"
    error = html.by_id("error").text()
    assert error.startswith("exotel_rejected: Call to [09052161115] cannot be made <DND>")
    assert "Exotel HTTP 403" in error
    assert "&lt;DND&gt;" in response.text
    rows = html.by_id("timeline").rows()
    assert [row[1] for row in rows] == [
        "created",
        "error",
        "dispatch Exotel's answer to Calls/connect: Call to [09052161115] cannot be made <DND>",
    ]
    assert [row[4] for row in rows[2:]] == ["applied"]


async def test_a_call_ended_by_a_look_up_says_so_in_its_timeline(
    app: FastAPI, client: httpx.AsyncClient, exotel: ExotelDouble, settings: Settings
) -> None:
    """Its callback lost, the call's end was learnt from Exotel's call details: the timeline
    says so, with what Exotel answered."""
    sid = new_sid()
    exotel.answer_connect(accepted(sid))
    call_id = (await client.post("/calls", json=place_body())).json()["id"]
    exotel.listed = [call_json(sid, "completed", Duration=41)["Call"]]
    runtime = app.state.runtime
    async with runtime.sessionmaker() as session, session.begin():  # due now
        await session.execute(update(Call).where(Call.id == call_id).values(next_lookup_at=None))
    async with httpx.AsyncClient(transport=httpx.MockTransport(exotel.handle)) as http:
        repairs = await reconcile_once(
            sessionmaker=runtime.sessionmaker,
            exotel=exotel_client(settings, http),
            settings=settings.reconcile,
            budget=budget_of(settings.exotel),
        )
    assert repairs.repaired == 1

    _, html = await page(client, f"/ui/calls/{call_id}")

    assert html.by_id("status").text() == "completed"
    rows = html.by_id("timeline").rows()
    assert [row[1].split(" ")[0] for row in rows] == [
        "created",
        "dispatched",
        "dispatch",
        "look-up",
    ]
    looked_up = rows[3]
    assert looked_up[1] == "look-up Exotel's call details (reconciliation)"
    assert (looked_up[2], looked_up[4]) == ("completed", "applied")
    answered = html.by_id("timeline").all("pre")[-1].text()
    assert json.loads(answered) == exotel.listed[0]


async def test_a_call_is_found_by_its_sid_too(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    sid = new_sid()
    exotel.answer_connect(accepted(sid))
    call = (await client.post("/calls", json=place_body())).json()
    _, html = await page(client, f"/ui/calls/{sid}")
    assert call["id"] in html.text()


@pytest.mark.parametrize(
    "ref", ["5a1e0000-0000-4000-8000-0000000000c2", "no-such-sid", "bad%00ref", "x" * 65]
)
async def test_an_unknown_call_is_the_one_json_error(client: httpx.AsyncClient, ref: str) -> None:
    response = await client.get(f"/ui/calls/{ref}")
    assert response.status_code == 404
    assert response.headers["Cache-Control"] == "no-store"
    assert response.json()["error"]["code"] == "call_not_found"


HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


async def test_what_the_page_shows_is_escaped(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    sid = new_sid()
    exotel.answer_connect(accepted(sid))
    placed = await client.post("/calls", json=place_body(custom_field=HOSTILE[:128]))
    assert placed.status_code == 201, placed.text
    call_id = placed.json()["id"]
    fields = {
        "CallSid": sid,
        "Status": "completed",
        "DateUpdated": "2026-11-27 02:06:35",
        "RecordingUrl": "javascript:alert(1)",
        "CustomField": HOSTILE,
        HOSTILE: HOSTILE,
    }
    response = await client.post(callback_path(call_id), json=fields)
    assert response.status_code == 200, response.text

    response, html = await page(client, f"/ui/calls/{call_id}")

    assert "<script" not in response.text
    assert "<img" not in response.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in response.text
    assert html.by_id("custom-field").text() == HOSTILE
    _, fields_shown = html.by_id("timeline").all("pre")  # the callback's payload, as text
    assert json.loads("".join(str(c) for c in fields_shown.children)) == fields
    # A recording URL that is not http(s) is shown, never linked.
    assert not [a for a in html.all("a") if "javascript" in a.attrs["href"]]
    assert "javascript:alert(1)" in html.by_id("timeline").text()

    listing, _ = await page(client, "/ui")
    assert "<script" not in listing.text


# --- in a browser ----------------------------------------------------------------------------


async def _settle(api: httpx.AsyncClient, call_ids: list[str], events: dict[str, int]) -> None:
    """Until every call has ended and the given calls have their callbacks."""

    async def seen() -> tuple[dict[str, str], dict[str, int]]:
        statuses = {i: (await api.get(f"/calls/{i}")).json()["status"] for i in call_ids}
        counts = {i: len((await api.get(f"/calls/{i}/events")).json()) for i in events}
        return statuses, counts

    def settled(seen: tuple[dict[str, str], dict[str, int]]) -> bool:
        statuses, counts = seen
        going_on = [s for s in statuses.values() if s in ("queued", "in-progress", "unknown")]
        return not going_on and counts == events

    await eventually(seen, what="the calls ended, with their callbacks", until=settled)


@pytest.fixture
def screenshot(tmp_path: Path) -> Path:
    """A path in the test's own directory: a test writes no tracked file."""
    return Path(os.environ.get(SCREENSHOT_PATH) or tmp_path / "ui.png")


@pytest.mark.e2e
async def test_in_chromium_a_person_sees_the_calls_and_a_calls_timeline(
    deployment: Deployment, browser: Browser, screenshot: Path
) -> None:
    deployment.start_simulator("--callback-delay", "0.3")
    api_url = deployment.start_server()
    async with httpx.AsyncClient(base_url=api_url, headers=AUTH, timeout=30) as api:
        singles = {}
        for digit in "02357":
            response = await api.post(
                "/calls", json={"from": f"0905216111{digit}", "app_id": "926"}
            )
            assert response.status_code in (201, 422), response.text
            body = response.json()
            singles[digit] = body["id"] if "id" in body else body["error"]["call_id"]
        batch = await api.post(
            "/calls/batch",
            json={"calls": [{"from": f"0905216112{d}", "app_id": "926"} for d in "0124"]},
        )
        assert batch.status_code == 202, batch.text
        batch_id = batch.json()["id"]
        call_ids = [*singles.values(), *(call["id"] for call in batch.json()["calls"])]
        # The call to ...7 gets its terminal callback twice, then a late `answered`, after
        # Exotel's answer to its Calls/connect.
        await _settle(api, call_ids, {singles["7"]: 4})

    console: list[str] = []
    context = await browser.new_context(
        viewport={"width": 1280, "height": 800},
        http_credentials={"username": "ops", "password": FAKE_INTERNAL_API_KEY},
    )
    tab = await context.new_page()
    tab.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    tab.on("pageerror", lambda e: console.append(f"pageerror: {e}"))

    response = await tab.goto(f"{api_url}/ui")
    assert response is not None
    assert response.status == 200

    async def cells(row: str) -> list[str]:
        return [t.strip() for t in await tab.locator(f"{row} td").all_inner_texts()]

    assert (await cells("#status-completed"))[1:3] == ["4", "4"]
    assert (await cells("#status-busy"))[1:3] == ["2", "2"]
    assert (await cells("#status-failed"))[1:3] == ["1", "1"]
    assert (await cells("#status-no-answer"))[1:3] == ["1", "1"]
    assert (await cells("#status-rejected"))[1:3] == ["1", "1"]
    assert (await cells("#status-queued"))[1:3] == ["0", "0"]
    assert (await cells("#status-total"))[1:3] == ["9", "9"]
    assert await tab.locator("#rate-line").inner_text() == "9 / 200 in the last 60 s"
    assert "nothing waits to be sent" in await tab.locator("#queue").inner_text()
    progress = await tab.locator(f"#batch-{batch_id} .progress").inner_text()
    assert "4 / 4 ended" in progress
    assert "100%" in progress
    numbers = await tab.locator("#calls tbody td:nth-child(2)").all_inner_texts()
    assert len(numbers) == 9
    assert all(MASKED.fullmatch(n.strip()) for n in numbers), numbers
    assert "+91905216" not in await tab.content()
    # The stylesheet was let in by the page's policy (its hash), and nothing else.
    header = await tab.locator("header.top").evaluate("e => getComputedStyle(e).backgroundColor")
    assert header == "rgb(23, 32, 44)"
    await tab.screenshot(path=str(screenshot), full_page=True)
    assert (await anyio.Path(screenshot).read_bytes()).startswith(b"\x89PNG")

    await tab.locator("#calls tr", has_text="******1117").locator("a").click()
    await tab.wait_for_url(f"{api_url}/ui/calls/{singles['7']}")
    assert await tab.locator("#status").inner_text() == "completed"
    timeline = tab.locator("#timeline tbody tr")
    what = [t.split()[0] for t in await timeline.locator("td.what").all_inner_texts()]
    # On a slow machine the first callback may come in before the answer to
    # Calls/connect is recorded: a callback's place among the milestones is its time.
    assert what[0] == "created"
    # `answered`: when the customer answered, which the late `answered` event told.
    assert sorted(what) == [
        "answered",
        "created",
        "dispatch",
        "dispatched",
        "status",
        "status",
        "status",
    ]
    assert "+919052161117" in await tab.locator("#facts").inner_text()
    callbacks = tab.locator("#timeline tbody tr.event", has_text="status callback")
    outcomes = await callbacks.locator("td:nth-child(5)").all_inner_texts()
    # The late `answered` event tells when the customer answered (docs/simulator.md).
    assert [o.strip() for o in outcomes] == ["applied", "duplicate", "applied"]
    statuses = await callbacks.locator("td:nth-child(3)").all_inner_texts()
    assert [s.strip() for s in statuses] == ["completed", "completed", "in-progress"]
    await callbacks.first.locator("summary").click()
    assert '"Status": "completed"' in await callbacks.first.locator("pre").inner_text()
    assert not console, console
