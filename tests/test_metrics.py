"""`GET /metrics`: a scripted run through the app, then a scrape that must count each thing the
run did, exactly."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Call
from app.main import create_app
from tests.conftest import callback_path, make_settings, place_body, serving
from tests.support.eventually import eventually
from tests.support.exotel_double import ExotelDouble, accepted, call_json, new_sid, rest_exception
from tests.support.exotel_requests import callback, multipart

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0)


@pytest.fixture
def app(db_url: str, exotel: ExotelDouble) -> FastAPI:
    settings = make_settings(
        db_url,
        reconcile_interval_seconds=0.2,
        reconcile_grace_seconds=0,
        # Two requests in five seconds: three calls at once make the dispatcher wait for the
        # budget, however slowly a loaded machine sends the first two.
        exotel_rate_limit=2,
        exotel_rate_window_seconds=5,
        exotel_rate_margin_seconds=1,
    )
    return create_app(settings, exotel_transport=httpx.MockTransport(exotel.handle))


async def test_a_scrape_counts_what_a_run_did(
    client: httpx.AsyncClient,
    exotel: ExotelDouble,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    # Accepted; refused (DND); held back by a 429 and then accepted.
    sid_a, sid_c = new_sid(), new_sid()
    exotel.answer_connect(accepted(sid_a))
    a = (await client.post("/calls", json=place_body("+919052161110"))).json()
    exotel.answer_connect(rest_exception(403, "Number is in DND", 1010))
    b = await client.post("/calls", json=place_body("+919052161111"))
    assert b.status_code >= 400
    exotel.answer_connect(
        rest_exception(429, "Too many requests", headers={"Retry-After": "1"}), accepted(sid_c)
    )
    c = (await client.post("/calls?wait=false", json=place_body("+919052161112"))).json()

    async def c_sent() -> bool:
        return (await client.get(f"/calls/{c['id']}")).json()["sid"] == sid_c

    await eventually(c_sent, what="C sent after its 429")

    # Callbacks: applied, duplicate, stale, for a SID nobody knows, and one refused.
    for status in ("completed", "completed", "in-progress"):
        fields = callback(sid_a, status)
        response = await client.post(callback_path(a["id"]), **multipart(fields))
        assert response.status_code == 200
    orphan = await client.post(callback_path(None), **multipart(callback(new_sid(), "busy")))
    assert orphan.json()["outcome"] == "unknown_sid"
    forged = await client.post(
        callback_path(a["id"], secret="not-the-secret"), **multipart(callback(sid_a, "failed"))
    )
    assert forged.status_code == 403
    # One of an event type we do not act on, and one with no status at all.
    dial = await client.post(
        callback_path(a["id"]), **multipart(callback(sid_a, "completed") | {"EventType": "Dial"})
    )
    assert dial.json()["outcome"] == "ignored"
    no_status = await client.post(callback_path(a["id"]), **multipart({"CallSid": sid_a}))
    assert no_status.status_code == 422

    # C's callback never comes: at its look-up, reconciliation finds it completed in Exotel's
    # call details.
    exotel.listed = [call_json(sid_c, "completed", Duration="30")["Call"]]
    async with sessionmaker() as session, session.begin():
        due = datetime.now(UTC)
        await session.execute(
            update(Call).where(Call.id == uuid.UUID(c["id"])).values(next_lookup_at=due)
        )

    async def c_repaired() -> bool:
        return (await client.get(f"/calls/{c['id']}")).json()["status"] == "completed"

    await eventually(c_repaired, what="C repaired by reconciliation")

    # Three at once (one batch: ready together however slow the machine), within a budget of
    # two in five seconds: the third waits.
    exotel.accept_connects()
    numbers = ("+919052161114", "+919052161115", "+919052161116")
    batch = await client.post("/calls/batch", json={"calls": [place_body(n) for n in numbers]})
    assert batch.status_code == 202, batch.text

    async def all_sent() -> bool:
        return len(exotel.connects) == 7

    await eventually(all_sent, what="seven connects")

    # E waits in the queue: Exotel asks for a minute's pause.
    exotel.answer_connect(rest_exception(429, "Too many requests", headers={"Retry-After": "60"}))
    e = await client.post("/calls?wait=false", json=place_body("+919052161113"))
    assert e.status_code == 202

    async def e_back_in_the_queue() -> bool:
        error = (await client.get(f"/calls/{e.json()['id']}")).json()["error"]
        return error is not None and error["code"] == "exotel_rate_limited"

    await eventually(e_back_in_the_queue, what="E back in the queue after its 429")
    samples = await scrape(client)

    received = "exocall_callbacks_received_total"
    assert value(samples, received, outcome="applied") == 1
    assert value(samples, received, outcome="duplicate") == 1
    assert value(samples, received, outcome="stale") == 1
    assert value(samples, received, outcome="unknown_sid") == 1
    assert value(samples, received, outcome="rejected") == 1
    assert value(samples, received, outcome="ignored") == 1
    assert value(samples, received, outcome="unreadable") == 1

    requests = "exocall_exotel_requests_total"
    assert value(samples, requests, operation="connect", status="200") == 5
    assert value(samples, requests, operation="connect", status="403") == 1
    assert value(samples, requests, operation="connect", status="429") == 2
    assert value(samples, requests, operation="bulk_call_details", status="200") == len(
        exotel.lookups
    )
    assert len(exotel.lookups) >= 1
    duration = "exocall_exotel_request_duration_seconds_count"
    assert value(samples, duration, operation="connect") == 8

    assert value(samples, "exocall_jobs_wait_seconds_total", kind="dispatch") > 0
    assert value(samples, "exocall_reconcile_repairs_total", kind="repaired") == 1

    assert value(samples, "exocall_calls", status="completed") == 2
    assert value(samples, "exocall_calls", status="rejected") == 1
    assert value(samples, "exocall_calls", status="in-progress") == 3
    assert value(samples, "exocall_calls", status="queued") == 1
    # E is queued, and not due before Exotel's minute is over.
    assert value(samples, "exocall_jobs_due", kind="dispatch") == 0
    assert value(samples, "exocall_jobs_running", kind="dispatch") == 0


async def test_metrics_need_an_api_key_unless_public(db_url: str, exotel: ExotelDouble) -> None:
    for public, expected in ((False, 401), (True, 200)):
        settings = make_settings(db_url, metrics_public=public)
        app = create_app(settings, exotel_transport=httpx.MockTransport(exotel.handle))
        async with serving(app) as client:
            del client.headers["Authorization"]
            response = await client.get("/metrics")
            assert response.status_code == expected
            if public:
                assert 'exocall_jobs_due{kind="dispatch"} 0.0' in response.text


async def test_a_scrape_counts_what_exotel_charged(db_url: str, exotel: ExotelDouble) -> None:
    settings = make_settings(
        db_url, reconcile_interval_seconds=0.2, reconcile_price_delay_seconds=0
    )
    app = create_app(settings, exotel_transport=httpx.MockTransport(exotel.handle))
    async with serving(app) as client:
        assert value(await scrape(client), "exocall_call_price_inr_total") == 0
        sid = new_sid()
        exotel.answer_connect(accepted(sid))
        call = (await client.post("/calls", json=place_body())).json()
        exotel.listed = [call_json(sid, "completed", Duration="41", Price="0.600")["Call"]]
        response = await client.post(
            callback_path(call["id"]), **multipart(callback(sid, "completed"))
        )
        assert response.status_code == 200

        async def priced() -> bool:
            return (await client.get(f"/calls/{call['id']}")).json()["price"] is not None

        await eventually(priced, what="the call's price learnt")
        samples = await scrape(client)

    assert value(samples, "exocall_call_price_inr_total") == 0.6
    assert value(samples, "exocall_reconcile_repairs_total", kind="priced") == 1
