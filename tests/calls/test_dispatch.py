"""The dispatch queue: what is retried (only what certainly did not dial), the account's rate
limit, idempotency keys and batches. Exotel is a double that records every request."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db.models import Call
from app.main import create_app
from app.retry_after import LONGEST_SECONDS
from tests.conftest import make_settings, place_body, serving
from tests.support.eventually import eventually
from tests.support.exotel_double import ExotelDouble, accepted, form_of, rest_exception

pytestmark = pytest.mark.anyio


async def wait_for(
    client: httpx.AsyncClient, call_id: str, status: str, *, failed: bool = False
) -> dict[str, Any]:
    """The call once it is `status` (and, if `failed`, says why)."""

    async def call() -> dict[str, Any]:
        return dict((await client.get(f"/calls/{call_id}")).json())

    return await eventually(
        call,
        what=f"call {call_id} {status}" + (" with an error" if failed else ""),
        until=lambda c: c["status"] == status and (c["error"] is not None or not failed),
    )


@pytest.fixture
def tight_settings(db_url: str) -> Settings:
    """A small budget (3 requests a second) and few connection attempts."""
    return make_settings(
        db_url,
        exotel_rate_limit=3,
        exotel_rate_window_seconds=1,
        # Generous: the double's clock is not the database's, and CI machines are busy.
        exotel_rate_margin_seconds=0.5,
        dispatch_max_attempts=2,
    )


@pytest.fixture
async def tight(tight_settings: Settings, exotel: ExotelDouble) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(tight_settings, exotel_transport=httpx.MockTransport(exotel.handle))
    async with serving(app) as client:
        yield client


# --- what is retried, and what never is ----------------------------------------------------


@pytest.mark.parametrize("retry_after", ["1", None])
async def test_429_puts_the_call_back_in_the_queue(
    client: httpx.AsyncClient, exotel: ExotelDouble, retry_after: str | None
) -> None:
    headers = {"Retry-After": retry_after} if retry_after else None
    exotel.answer_connect(rest_exception(429, "Too Many Requests; ", headers=headers), accepted())

    response = await client.post("/calls", json=place_body(), params={"wait": "false"})
    assert response.status_code == 202
    queued = await wait_for(client, response.json()["id"], "queued")

    call = await wait_for(client, queued["id"], "in-progress")
    assert call["error"] is None
    assert len(exotel.connects) == 2
    # Retry-After (1 s) is honoured; without it exocall backs off on its own (2 s).
    assert exotel.times[1] - exotel.times[0] >= (1.0 if retry_after else 2.0)
    # Both answers are kept: the 429 sent the call back to the queue, the next placed it.
    limited, placed = (await client.get(f"/calls/{call['id']}/events")).json()
    assert (limited["kind"], limited["status"], limited["outcome"]) == ("dispatch", None, "applied")
    assert (limited["payload"]["Status"], limited["problem"]) == (429, "Too Many Requests")
    assert (placed["kind"], placed["status"], placed["payload"]["Sid"]) == (
        "dispatch",
        "in-progress",
        call["sid"],
    )


async def test_a_retry_after_no_timer_holds_is_the_services_own_backoff(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    # `inf` once overflowed the time it was added to, in the transaction recording the 429:
    # the call, certainly not dialled, ended `unknown` and was never sent.
    limited = rest_exception(429, "Too Many Requests", headers={"Retry-After": "inf"})
    exotel.answer_connect(limited, accepted())

    response = await client.post("/calls", json=place_body(), params={"wait": "false"})

    call = await wait_for(client, response.json()["id"], "in-progress")
    assert call["error"] is None
    assert len(exotel.connects) == 2


async def test_a_retry_after_beyond_the_longest_wait_leaves_the_call_queued(
    client: httpx.AsyncClient,
    exotel: ExotelDouble,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    limited = rest_exception(429, "Too Many Requests", headers={"Retry-After": "1e12"})
    exotel.answer_connect(limited)

    response = await client.post("/calls", json=place_body(), params={"wait": "false"})

    call = await wait_for(client, response.json()["id"], "queued", failed=True)
    assert call["error"]["code"] == "exotel_rate_limited"
    async with sessionmaker() as session:
        stored = await session.get(Call, uuid.UUID(call["id"]))
    assert stored is not None
    assert stored.next_attempt_at is not None
    assert stored.error_at is not None
    # Held back for the longest wait, from when the 429 was recorded.
    assert stored.next_attempt_at - stored.error_at == timedelta(seconds=LONGEST_SECONDS)
    assert len(exotel.connects) == 1


async def test_429_holds_back_every_call_not_only_the_refused_one(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    refused = asyncio.Event()

    async def refuse_once(_: httpx.Request) -> httpx.Response:
        exotel.accept_connects()  # every later request is accepted
        refused.set()
        return rest_exception(429, "Too Many Requests", headers={"Retry-After": "2"})

    exotel.on_connect = refuse_once
    first = await client.post("/calls", json=place_body(), params={"wait": "false"})
    await refused.wait()
    # Once the 429 is recorded (a request sent before it arrived would be fair game):
    await wait_for(client, first.json()["id"], "queued", failed=True)
    second = await client.post("/calls", json=place_body("9052161111"), params={"wait": "false"})

    for call in (first, second):  # sent after the pause, in either order
        await wait_for(client, call.json()["id"], "in-progress")
    # Nothing at all was sent during the pause Exotel asked for.
    assert len(exotel.connects) == 3
    assert min(exotel.times[1:]) - exotel.times[0] >= 2.0


async def test_a_connection_never_made_is_retried(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    exotel.answer_connect(httpx.ConnectError("connection refused"), accepted())
    response = await client.post("/calls", json=place_body(), params={"wait": "false"})
    call = await wait_for(client, response.json()["id"], "in-progress")
    assert call["sid"]
    assert len(exotel.connects) == 2


async def test_exotel_unreachable_for_good_rejects_the_call(
    tight: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    exotel.answer_connect(httpx.ConnectTimeout("no route"))
    response = await tight.post("/calls", json=place_body(), params={"wait": "false"})
    call = await wait_for(tight, response.json()["id"], "rejected")
    assert call["error"]["code"] == "exotel_unreachable"
    assert len(exotel.connects) == 2  # dispatch_max_attempts
    # No answer either time: what came of each attempt is kept, the last one rejecting it.
    attempts = (await tight.get(f"/calls/{call['id']}/events")).json()
    assert [(a["kind"], a["payload"], a["outcome"]) for a in attempts] == [
        ("dispatch", {}, "applied"),
        ("dispatch", {}, "applied"),
    ]
    assert {a["problem"] for a in attempts} == {"could not connect to Exotel: ConnectTimeout"}


async def test_wait_false_answers_202_at_once(client: httpx.AsyncClient) -> None:
    response = await client.post("/calls", json=place_body(), params={"wait": "false"})
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    await wait_for(client, response.json()["id"], "in-progress")


# --- the account's rate limit ----------------------------------------------------------------


def busiest_window(times: list[float], window: float) -> int:
    """The most requests in any `window` seconds."""
    return max(sum(1 for t in times if start <= t < start + window) for start in times)


async def test_no_window_holds_more_requests_than_the_limit(
    tight: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    numbers = [f"90521611{n:02d}" for n in range(10)]
    ids = [
        (await tight.post("/calls", json=place_body(n), params={"wait": "false"})).json()["id"]
        for n in numbers
    ]
    for call_id in ids:
        await wait_for(tight, call_id, "in-progress")
    assert len(exotel.connects) == 10
    assert busiest_window(exotel.times, 1.0) <= 3
    # Dialled once each.
    assert sorted(form_of(r)["From"] for r in exotel.connects) == ["0" + n for n in numbers]


async def test_a_call_waiting_for_budget_is_answered_201_once_sent(
    tight: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    for n in range(3):
        await tight.post("/calls", json=place_body(f"905216110{n}"), params={"wait": "false"})
    # The budget is spent for 1.5 s (window and margin); the request waits that out.
    response = await tight.post("/calls", json=place_body("9052161109"))
    assert response.status_code == 201
    assert busiest_window(exotel.times, 1.0) <= 3


# --- idempotency keys ---------------------------------------------------------------------------


async def test_a_repeated_key_returns_the_stored_call(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    headers = {"Idempotency-Key": "order-123-confirmation"}
    first = await client.post("/calls", json=place_body("09052161110"), headers=headers)
    # The same request, with the number spelt another way.
    again = await client.post("/calls", json=place_body("+91 90521 61110"), headers=headers)

    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(exotel.connects) == 1


async def test_a_key_reused_with_another_body_is_409(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    headers = {"Idempotency-Key": "k-1"}
    first = await client.post("/calls", json=place_body(), headers=headers)
    other = await client.post("/calls", json=place_body(custom_field="other"), headers=headers)
    assert other.status_code == 409
    error = other.json()["error"]
    assert (error["code"], error["call_id"]) == ("idempotency_conflict", first.json()["id"])
    assert len(exotel.connects) == 1


async def test_a_rejected_call_is_rejected_again_on_repeat(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    exotel.answer_connect(rest_exception(403, "Call cannot be made because of TRAI NDNC"))
    headers = {"Idempotency-Key": "dnd-1"}
    first = await client.post("/calls", json=place_body(), headers=headers)
    again = await client.post("/calls", json=place_body(), headers=headers)
    assert first.status_code == again.status_code == 422
    assert first.json() == again.json()
    assert len(exotel.connects) == 1


async def test_concurrent_requests_with_one_key_make_one_call(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    headers = {"Idempotency-Key": "burst"}
    responses = await asyncio.gather(
        *(client.post("/calls", json=place_body(), headers=headers) for _ in range(10))
    )
    assert {r.status_code for r in responses} <= {201, 202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum("Idempotent-Replayed" not in r.headers for r in responses) == 1
    await wait_for(client, responses[0].json()["id"], "in-progress")
    assert len(exotel.connects) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "has space"])
async def test_bad_idempotency_keys_are_refused(client: httpx.AsyncClient, key: str) -> None:
    response = await client.post("/calls", json=place_body(), headers={"Idempotency-Key": key})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "idempotency-key"


# --- batches --------------------------------------------------------------------------------


def batch_of(count: int, **fields: Any) -> dict[str, Any]:
    return {"calls": [place_body(f"90521{n:05d}", **fields) for n in range(count)]}


async def test_a_batch_is_queued_and_dispatched(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    response = await client.post("/calls/batch", json=batch_of(5))

    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["size"] == 5
    assert [c["from"] for c in batch["calls"]] == [f"+9190521{n:05d}" for n in range(5)]
    for call in batch["calls"]:
        await wait_for(client, call["id"], "in-progress")
    listed = (await client.get("/calls", params={"batch_id": batch["id"]})).json()["items"]
    assert {c["id"] for c in listed} == {c["id"] for c in batch["calls"]}
    summary = (await client.get(f"/batches/{batch['id']}")).json()
    assert summary["counts"] == {"in-progress": 5}
    assert len(exotel.connects) == 5


async def test_a_batch_costs_what_its_calls_cost_as_far_as_known(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    batch = (await client.post("/calls/batch", json=batch_of(3))).json()
    for call in batch["calls"]:
        await wait_for(client, call["id"], "in-progress")
    assert (await client.get(f"/batches/{batch['id']}")).json()["price"] is None  # none known

    # Reconciliation learns two calls' prices (tests/calls/test_price.py); the third's is not
    # known yet.
    async with sessionmaker() as session, session.begin():
        for call, price in zip(batch["calls"], ("0.600", "1.200"), strict=False):
            await session.execute(
                update(Call).where(Call.id == uuid.UUID(call["id"])).values(price=Decimal(price))
            )

    summary = (await client.get(f"/batches/{batch['id']}")).json()
    assert summary["price"] == 1.8
    assert summary["counts"] == {"in-progress": 3}


async def test_an_invalid_item_refuses_the_whole_batch(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    body = batch_of(5)
    body["calls"][3]["from"] = "12345"
    response = await client.post("/calls/batch", json=body)
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["error"]["details"]] == ["calls.3.from"]
    assert (await client.get("/calls")).json()["items"] == []
    assert exotel.requests == []


async def test_batch_size_is_bounded(client: httpx.AsyncClient) -> None:
    assert (await client.post("/calls/batch", json={"calls": []})).status_code == 422
    too_many = await client.post("/calls/batch", json=batch_of(1001))
    assert too_many.status_code == 422
    assert too_many.json()["error"]["details"][0]["field"] == "calls"


async def test_batch_items_share_keys_with_single_calls(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    single = await client.post(
        "/calls", json=place_body("9052100000"), headers={"Idempotency-Key": "a"}
    )
    body = batch_of(3)
    body["calls"][0]["idempotency_key"] = "a"  # the call above
    body["calls"][1]["idempotency_key"] = "b"
    body["calls"].append(body["calls"][1])  # the same item twice

    batch = (await client.post("/calls/batch", json=body)).json()

    ids = [c["id"] for c in batch["calls"]]
    assert ids[0] == single.json()["id"]
    assert ids[3] == ids[1]
    assert len(set(ids)) == 3
    for call_id in set(ids):
        await wait_for(client, call_id, "in-progress")
    assert len(exotel.connects) == 3


async def test_a_batch_reusing_a_key_with_another_body_is_409(client: httpx.AsyncClient) -> None:
    await client.post("/calls", json=place_body(), headers={"Idempotency-Key": "a"})
    body = batch_of(2)
    body["calls"][1]["idempotency_key"] = "a"
    response = await client.post("/calls/batch", json=body)
    assert response.status_code == 409
    assert response.json()["error"]["index"] == 1
    assert len((await client.get("/calls")).json()["items"]) == 1


async def test_unknown_batch_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/batches/3f1c1c1e-0000-4000-8000-000000000000")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "batch_not_found"


async def test_a_call_exotel_accepted_is_first_looked_up_a_minute_after(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    response = await client.post("/calls", json=place_body())
    assert response.status_code == 201
    async with sessionmaker() as session:
        call = await session.get(Call, uuid.UUID(response.json()["id"]))
    assert call is not None
    assert call.dispatched_at is not None
    assert call.next_lookup_at is not None
    # RECONCILE_FIRST_LOOKUP_SECONDS, unless a callback ends it first.
    assert call.next_lookup_at - call.dispatched_at == timedelta(seconds=60)
