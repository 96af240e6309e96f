"""Each kind of work held by a replica that is SIGKILLed is taken by another replica: its worker
stops beating, and the other's sweep finds the claim lost (app/jobs). What it means is the
kind's: a dispatch may have dialled, so its call is `unknown` and never sent again; a delivery
is sent again, as a retry; a recording is fetched again; reconciliation runs on the other.

The victim starts alone and is killed holding its claim (kept long by a slow Exotel, a slow
subscriber, or a budget it waits on); the other replica starts after the kill. Each test prints
how long the other took, from the kill: the goal is 30 s (LEASE_SECONDS + BEAT_SECONDS)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.session import create_engine
from tests.conftest import AUTH
from tests.support.processes import Deployment

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

# Goal 30 s; the wait allows for a loaded machine, and the time taken is printed.
TAKEN_WITHIN = 60


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url)
    yield engine
    await engine.dispose()


async def until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Seconds until `check` held; fails after `within`."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, f"not within {within} s: {what}"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def holder(engine: AsyncEngine, query: str, **params: str) -> int | None:
    """The pid of the replica whose worker holds the claim `query` selects (its claimed_by)."""
    async with engine.connect() as db:
        claimed_by = await db.scalar(text(query), params)
    return int(claimed_by.split(":")[-2]) if claimed_by else None


async def kill_holding(
    deployment: Deployment, engine: AsyncEngine, query: str, **params: str
) -> float:
    """Wait for the only replica to hold the claim `query` selects, SIGKILL it; when."""
    victim = deployment.processes[-1].popen

    async def holds() -> bool:
        return await holder(engine, query, **params) == victim.pid

    await until(holds, 60, "the replica held the claim")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    return time.monotonic()


def client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30)


async def test_a_call_held_by_a_killed_replica_becomes_unknown_and_is_never_sent_again(
    deployment: Deployment, engine: AsyncEngine
) -> None:
    # Exotel takes 25 s to answer: the send is in flight when the replica dies (and the call's
    # status callbacks come later still).
    deployment.start_simulator("--response-delay", "25", "--callback-delay", "600")
    async with client(deployment.start_server()) as api:
        body = {"from": "09052161110", "app_id": "926"}
        placed = await api.post("/calls", json=body, params={"wait": "false"})
        assert placed.status_code == 202, placed.text
    call_id = placed.json()["id"]
    killed_at = await kill_holding(
        deployment, engine, "SELECT claimed_by FROM call WHERE id = :id", id=call_id
    )

    async with client(deployment.start_server()) as other:

        async def taken() -> bool:
            return (await other.get(f"/calls/{call_id}")).json()["status"] != "queued"

        await until(taken, TAKEN_WITHIN, "the other replica took the lost claim")
        print(f"dispatch: taken {time.monotonic() - killed_at:.1f} s after the kill")
        call = (await other.get(f"/calls/{call_id}")).json()
    assert (call["status"], call["error"]["code"]) == ("unknown", "dispatch_interrupted")
    # Sent once: every send is granted from the account's budget, and logged as it is.
    async with engine.connect() as db:
        sends = await db.scalar(text("SELECT count(*) FROM exotel_request WHERE kind = 'connect'"))
    assert sends == 1


async def test_a_delivery_held_by_a_killed_replica_is_sent_again_by_another(
    deployment: Deployment, engine: AsyncEngine
) -> None:
    deployment.start_simulator("--callback-delay", "0.2")
    subscriber_url = deployment.start_subscriber()
    async with (
        client(deployment.start_server()) as api,
        httpx.AsyncClient(base_url=subscriber_url) as subscriber,
    ):
        # The subscriber holds every delivery for half a minute: one is in flight at the kill.
        await subscriber.post("/answer", json={"status": 200, "delay": 30})
        hook = {"url": f"{subscriber_url}/hook", "event_types": ["call.completed"]}
        assert (await api.post("/webhook-endpoints", json=hook)).status_code == 201
        body = {"from": "09052161110", "app_id": "926"}
        call_id = (await api.post("/calls", json=body)).json()["id"]
        killed_at = await kill_holding(
            deployment, engine, "SELECT claimed_by FROM delivery WHERE state = 'sending'"
        )
        await subscriber.post("/answer", json={"status": 200})

        async with client(deployment.start_server()) as other:

            async def delivered() -> bool:
                events = (await other.get(f"/calls/{call_id}/events")).json()
                return bool(events) and (await _delivered(engine))

            await until(delivered, TAKEN_WITHIN, "the other replica delivered the event")
            print(f"delivery: delivered {time.monotonic() - killed_at:.1f} s after the kill")
        async with engine.connect() as db:
            attempts = list(await db.scalars(text("SELECT error FROM delivery_attempt")))
        assert any(error and error.startswith("interrupted") for error in attempts), attempts
        # Sent twice, each time the same event: the second a retry (its webhook-id repeats).
        await until(_received_twice(subscriber), 60, "the killed replica's attempt arrived")
        received = (await subscriber.get("/received")).json()
        assert len({r["headers"]["webhook-id"] for r in received}) == 1


def _received_twice(subscriber: httpx.AsyncClient) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len((await subscriber.get("/received")).json()) >= 2

    return check


async def _delivered(engine: AsyncEngine) -> bool:
    async with engine.connect() as db:
        states = list(await db.scalars(text("SELECT state FROM delivery")))
    return states == ["delivered"]


async def test_a_recording_held_by_a_killed_replica_is_archived_by_another(
    deployment: Deployment, engine: AsyncEngine
) -> None:
    deployment.env |= {"JOBS_POLL_SECONDS": "0.2"}
    simulator = deployment.start_simulator("--callback-delay", "0.2")
    async with (
        client(deployment.start_server()) as api,
        httpx.AsyncClient(base_url=simulator) as exotel,
    ):
        # Exotel's storage takes a minute to answer the first fetch: it is under way at the kill.
        fault = {"delay": 60, "times": 1}
        assert (await exotel.post("/_simulator/recording-faults", json=fault)).status_code == 200
        body = {"from": "09052161110", "app_id": "926"}
        call_id = (await api.post("/calls", json=body)).json()["id"]
        killed_at = await kill_holding(deployment, engine, "SELECT claimed_by FROM recording_job")

    async with client(deployment.start_server()) as other:

        async def archived() -> bool:
            recording = (await other.get(f"/calls/{call_id}")).json()["recording"]
            return bool(recording) and recording["status"] == "archived"

        await until(archived, TAKEN_WITHIN, "the other replica archived the recording")
        print(f"archive: archived {time.monotonic() - killed_at:.1f} s after the kill")


async def test_reconciliation_held_by_a_killed_replica_runs_on_another(
    deployment: Deployment, engine: AsyncEngine
) -> None:
    deployment.env |= {
        # Two requests a minute: the calls spend them, and the round waits for a look-up's.
        "EXOTEL_RATE_LIMIT": "2",
        "RECONCILE_INTERVAL_SECONDS": "10",
        "RECONCILE_FIRST_LOOKUP_SECONDS": "0",
    }
    # The calls go on for ten minutes: they are due for look-ups all the while.
    deployment.start_simulator("--callback-delay", "600")
    async with client(deployment.start_server()) as api:
        for number in ("09052161110", "09052161120"):
            placed = await api.post("/calls", json={"from": number, "app_id": "926"})
            assert placed.status_code == 201, placed.text
    killed_at = await kill_holding(
        deployment, engine, "SELECT claimed_by FROM periodic WHERE name = 'reconcile'"
    )

    async with client(deployment.start_server()) as other:

        async def reconciled() -> bool:
            metrics = (await other.get("/metrics")).text
            return 'exocall_jobs_total{kind="reconcile",outcome="done"}' in metrics

        await until(reconciled, TAKEN_WITHIN + 20, "the other replica ran a round")
        print(f"reconcile: a round {time.monotonic() - killed_at:.1f} s after the kill")
