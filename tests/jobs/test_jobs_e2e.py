"""Each kind of work held by a replica that is SIGKILLed is taken by another replica: its worker
stops beating, and the other's sweep finds the claim lost (app/jobs). What it means is the
kind's: a dispatch may have dialled, so its call is `unknown` and never sent again; a delivery
is sent again, as a retry; a recording is fetched again; reconciliation runs on the other.

The victim starts alone and is killed holding its claim (kept long by a slow Exotel, a held
subscriber, or a budget it waits on); the other replica starts after the kill. Both beat every
second with a lease of four (JOBS_BEAT_SECONDS, JOBS_LEASE_SECONDS; 5 and 15 by default): the
other takes the claim within the lease and a beat of its own start. Each test prints how long
that took, from the kill."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.session import create_engine
from tests.conftest import AUTH
from tests.support.eventually import eventually
from tests.support.processes import Deployment

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

HEARTBEAT = {"JOBS_BEAT_SECONDS": "1", "JOBS_LEASE_SECONDS": "4"}
# Bounds the wait for the other replica (its start, the lease, a beat), allowing for a loaded
# machine; never asserted on: the time taken is printed.
TAKEN_WITHIN = 60


@pytest.fixture(autouse=True)
def _short_lease(deployment: Deployment) -> None:
    deployment.env |= HEARTBEAT


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url)
    yield engine
    await engine.dispose()


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

    await eventually(holds, what="the replica holding the claim")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    return time.monotonic()


def client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30)


async def test_a_call_held_by_a_killed_replica_becomes_unknown_and_is_never_sent_again(
    deployment: Deployment, engine: AsyncEngine
) -> None:
    # Exotel takes 8 s to answer: the send is in flight when the replica dies (and the call's
    # status callbacks come later still). A margin no stall here reaches: no grant goes stale
    # before its send, so each grant is a send.
    deployment.env |= {"EXOTEL_RATE_MARGIN_SECONDS": "60"}
    deployment.start_simulator("--response-delay", "8", "--callback-delay", "600")
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

        await eventually(taken, what="the other replica taking the lost claim", within=TAKEN_WITHIN)
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
        # The subscriber holds every delivery until told: one is in flight at the kill.
        await subscriber.post("/answer", json={"status": 200, "hold": True})
        hook = {"url": f"{subscriber_url}/hook", "event_types": ["call.completed"]}
        assert (await api.post("/webhook-endpoints", json=hook)).status_code == 201
        body = {"from": "09052161110", "app_id": "926"}
        call_id = (await api.post("/calls", json=body)).json()["id"]
        # Killed once its attempt is at the subscriber: claimed is not yet sent.
        await eventually(lambda: _held(subscriber), what="the first attempt held at the subscriber")
        killed_at = await kill_holding(
            deployment, engine, "SELECT claimed_by FROM delivery WHERE state = 'sending'"
        )
        await subscriber.post("/answer", json={"status": 200})

        async with client(deployment.start_server()) as other:

            async def delivered() -> bool:
                events = (await other.get(f"/calls/{call_id}/events")).json()
                called_back = any(e["kind"] == "status_callback" for e in events)
                return called_back and (await _delivered(engine))

            await eventually(
                delivered, what="the other replica delivering the event", within=TAKEN_WITHIN
            )
            print(f"delivery: delivered {time.monotonic() - killed_at:.1f} s after the kill")
        async with engine.connect() as db:
            attempts = list(await db.scalars(text("SELECT error FROM delivery_attempt")))
        assert any(error and error.startswith("interrupted") for error in attempts), attempts
        # Sent twice, each time the same event: the second a retry (its webhook-id repeats).
        await eventually(_received_twice(subscriber), what="the killed replica's attempt answered")
        received = (await subscriber.get("/received")).json()
        assert len({r["headers"]["webhook-id"] for r in received}) == 1


async def _held(subscriber: httpx.AsyncClient) -> bool:
    return bool((await subscriber.get("/held")).json())


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
        # Exotel's storage takes 10 s to answer the first fetch: it is under way at the kill.
        fault = {"delay": 10, "times": 1}
        assert (await exotel.post("/_simulator/recording-faults", json=fault)).status_code == 200
        body = {"from": "09052161110", "app_id": "926"}
        call_id = (await api.post("/calls", json=body)).json()["id"]
        killed_at = await kill_holding(deployment, engine, "SELECT claimed_by FROM recording_job")

    async with client(deployment.start_server()) as other:

        async def archived() -> bool:
            recording = (await other.get(f"/calls/{call_id}")).json()["recording"]
            return bool(recording) and recording["status"] == "archived"

        await eventually(
            archived, what="the other replica archiving the recording", within=TAKEN_WITHIN
        )
        print(f"archive: archived {time.monotonic() - killed_at:.1f} s after the kill")


async def test_reconciliation_held_by_a_killed_replica_runs_on_another(
    deployment: Deployment, engine: AsyncEngine
) -> None:
    deployment.env |= {
        # Two requests in 15 s: the calls spend them, and a round waits for a look-up's (a
        # round waits for a slot that frees within its interval).
        "EXOTEL_RATE_LIMIT": "2",
        "EXOTEL_RATE_WINDOW_SECONDS": "15",
        "RECONCILE_INTERVAL_SECONDS": "60",
        "RECONCILE_FIRST_LOOKUP_SECONDS": "0",
    }
    # The calls go on for ten minutes: they are due for look-ups all the while.
    deployment.start_simulator("--callback-delay", "600")
    async with client(deployment.start_server()) as api:
        for number in ("09052161110", "09052161120"):
            placed = await api.post("/calls", json={"from": number, "app_id": "926"})
            assert placed.status_code == 201, placed.text
    # A round now, rather than at the next interval: it waits for the budget the calls spent,
    # holding its claim for about the window.
    async with engine.begin() as db:
        await db.execute(text("UPDATE periodic SET due_at = now() WHERE name = 'reconcile'"))
    killed_at = await kill_holding(
        deployment, engine, "SELECT claimed_by FROM periodic WHERE name = 'reconcile'"
    )

    async with client(deployment.start_server()) as other:

        async def reconciled() -> bool:
            metrics = (await other.get("/metrics")).text
            return 'exocall_jobs_total{kind="reconcile",outcome="done"}' in metrics

        await eventually(
            reconciled, what="the other replica running a round", within=TAKEN_WITHIN + 30
        )
        print(f"reconcile: a round {time.monotonic() - killed_at:.1f} s after the kill")
