"""SIGTERM under load: the server stops claiming calls, finishes the dispatches under way,
answers the requests in flight and exits; another replica then finishes the queue. Nothing is
lost, nothing is left claimed, and nobody is dialled twice (the simulator's own log says)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Call
from tests.conftest import AUTH
from tests.support.eventually import eventually
from tests.support.processes import Deployment

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

CALLS = 60
WAITING = 4  # requests that wait for their call to be sent (POST /calls without wait=false)
CONCURRENCY = 8
GRACE, EXOTEL_TIMEOUT = 5, 5
RESPONSE_DELAY = 1.0  # the simulator's, for Calls/connect
# What a graceful shutdown may take: the requests' grace, the dispatcher's last claim, the sends'
# Exotel timeout, and the process's start-up slack. A hang fails the test; nothing is timed.
EXIT_BOUND_SECONDS = GRACE + 5 + EXOTEL_TIMEOUT + 10
ENDED = {"completed", "busy", "no-answer", "failed"}


async def test_sigterm_under_load_loses_nothing_and_dials_nobody_twice(
    deployment: Deployment, db_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    deployment.env |= {
        "SHUTDOWN_GRACE_SECONDS": str(GRACE),
        "EXOTEL_TIMEOUT_SECONDS": str(EXOTEL_TIMEOUT),
        "DISPATCH_CONCURRENCY": str(CONCURRENCY),
        "RECONCILE_INTERVAL_SECONDS": "1",
        "RECONCILE_GRACE_SECONDS": "1",
        "RECONCILE_FIRST_LOOKUP_SECONDS": "1",
        "RECONCILE_RECHECK_SECONDS": "1",
    }
    # Each Calls/connect takes a second: when SIGTERM comes, dispatches are under way.
    simulator_url = deployment.start_simulator(
        "--response-delay", str(RESPONSE_DELAY), "--callback-delay", "0.3"
    )
    first_url = deployment.start_server()
    first = deployment.processes[-1]
    numbers = [f"9052{n:05d}{n % 5}" for n in range(CALLS)]  # last digit 0-4: every call ends

    async with httpx.AsyncClient(base_url=first_url, timeout=60, headers=AUTH) as api:

        async def place(number: str, *, wait: bool) -> httpx.Response:
            body = {"from": number, "app_id": "926", "time_out": 1, "time_limit": 1}
            return await api.post("/calls", json=body, params={} if wait else {"wait": "false"})

        queued = await asyncio.gather(*(place(n, wait=False) for n in numbers[WAITING:]))
        assert {r.status_code for r in queued} == {202}
        waiting = [asyncio.create_task(place(n, wait=True)) for n in numbers[:WAITING]]
        # Every request has stored its call (those waiting are waiting), and sends are under way.
        await eventually(
            lambda: _calls(sessionmaker),
            what="every call stored and some being sent (stored, claimed or sent)",
            until=lambda counts: counts[0] == CALLS and counts[1] > 0,
        )
        # Frozen, so that what it claimed before the signal is known; then the signal.
        first.popen.send_signal(signal.SIGSTOP)
        _, taken_before = await _calls(sessionmaker)
        first.popen.send_signal(signal.SIGTERM)
        first.popen.send_signal(signal.SIGCONT)
        answered = await asyncio.gather(*waiting)

    # Every request in flight was answered: sent (201) or still queued (202).
    assert {r.status_code for r in answered} <= {201, 202}
    try:
        first.popen.wait(EXIT_BOUND_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no exit {EXIT_BOUND_SECONDS} s after SIGTERM:\n{first.output()}")
    # Dispatches under way were finished, not abandoned: no call is left claimed.
    async with sessionmaker() as session:
        claimed = await session.scalar(
            select(func.count()).select_from(Call).where(Call.claimed_by.is_not(None))
        )
        sent_by_first = await session.scalar(
            select(func.count()).select_from(Call).where(Call.dispatched_at.is_not(None))
        )
    assert claimed == 0
    assert "shutdown" in first.output().lower()
    # Nothing was claimed after SIGTERM: what it sent, it had claimed before, but for the one
    # claim that may have been committing as it froze (at most a claim's worth of calls). Had
    # it gone on claiming through its grace, it would have sent dozens more from the queue.
    assert sent_by_first is not None
    assert sent_by_first <= taken_before + CONCURRENCY

    # Another replica takes over what was still queued.
    second_url = deployment.start_server()
    call_ids = [r.json()["id"] for r in (*answered, *queued)]
    async with httpx.AsyncClient(base_url=second_url, timeout=60, headers=AUTH) as api:
        calls = await _wait_until_all_ended(api, call_ids)
    # A call can end (its callback) before Exotel's answer to its connect, which the simulator
    # logs when it answers: wait for those answers too.
    connects = await _connects_answered(simulator_url, len(numbers))

    assert {call["status"] for call in calls} <= ENDED
    assert Counter(e["from_number"] for e in connects) == Counter("0" + n for n in numbers)


async def _calls(sessionmaker: async_sessionmaker[AsyncSession]) -> tuple[int, int]:
    """How many calls are stored, and how many of them are claimed or sent."""
    taken = or_(Call.claimed_by.is_not(None), Call.dispatched_at.is_not(None))
    async with sessionmaker() as session:
        stored, claimed = (
            await session.execute(select(func.count(), func.count().filter(taken)))
        ).one()
    return int(stored), int(claimed)


async def _connects_answered(simulator_url: str, expected: int) -> list[dict[str, Any]]:
    """The simulator's log of `Calls/connect`, once it holds `expected` of them."""
    async with httpx.AsyncClient(base_url=simulator_url, timeout=30) as simulator:

        async def connects() -> list[dict[str, Any]]:
            log: list[dict[str, Any]] = (await simulator.get("/_simulator/log")).json()
            return [e for e in log if e["path"].endswith("/Calls/connect.json")]

        return await eventually(
            connects, what=f"{expected} connects answered", until=lambda c: len(c) >= expected
        )


async def _wait_until_all_ended(api: httpx.AsyncClient, ids: list[str]) -> list[dict[str, Any]]:
    async def not_ended() -> tuple[Counter[str], list[dict[str, Any]]]:
        calls = [(await api.get(f"/calls/{call_id}")).json() for call_id in ids]
        return Counter(c["status"] for c in calls if c["status"] not in ENDED), calls

    _, calls = await eventually(
        not_ended, what="every call ended (those not yet)", until=lambda seen: not seen[0]
    )
    return calls
