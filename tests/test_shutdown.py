"""SIGTERM under load: the server stops claiming calls, finishes the dispatches under way,
answers the requests in flight and exits; another replica then finishes the queue. Nothing is
lost, nothing is left claimed, and nobody is dialled twice (the simulator's own log says)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Call
from tests.conftest import AUTH
from tests.support.processes import Deployment

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

CALLS = 60
WAITING = 4  # requests that wait for their call to be sent (POST /calls without wait=false)
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
        "DISPATCH_CONCURRENCY": "8",
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
        await asyncio.sleep(0.5)  # the dispatcher is busy with the queue
        sigterm_at = time.time()
        first.popen.send_signal(signal.SIGTERM)
        answered = await asyncio.gather(*waiting)

    # Every request in flight was answered: sent (201) or still queued (202).
    assert {r.status_code for r in answered} <= {201, 202}
    try:
        first.popen.wait(EXIT_BOUND_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no exit {EXIT_BOUND_SECONDS} s after SIGTERM:\n{first.output()}")
    exited_at = time.time()
    # Dispatches under way were finished, not abandoned: no call is left claimed.
    async with sessionmaker() as session:
        claimed = await session.scalar(
            select(func.count()).select_from(Call).where(Call.claimed_by.is_not(None))
        )
        stored = await session.scalar(select(func.count()).select_from(Call))
    assert (claimed, stored) == (0, CALLS)
    assert "shutdown" in first.output().lower()

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
    # Nothing was claimed after SIGTERM: the simulator logs a request when it answers, a second
    # after it arrived, so whatever the first replica sent later it claimed after the signal.
    late = [e for e in connects if sigterm_at + RESPONSE_DELAY + 0.5 < e["at"] < exited_at]
    assert late == []


async def _connects_answered(simulator_url: str, expected: int) -> list[dict[str, Any]]:
    """The simulator's log of `Calls/connect`, once it holds `expected` of them (or after a
    while: the assertions then say what is missing)."""
    deadline = asyncio.get_running_loop().time() + 10
    async with httpx.AsyncClient(base_url=simulator_url, timeout=30) as simulator:
        while True:
            log: list[dict[str, Any]] = (await simulator.get("/_simulator/log")).json()
            connects = [e for e in log if e["path"].endswith("/Calls/connect.json")]
            if len(connects) >= expected or asyncio.get_running_loop().time() > deadline:
                return connects
            await asyncio.sleep(0.2)


async def _wait_until_all_ended(api: httpx.AsyncClient, ids: list[str]) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + 120
    while True:
        calls = [(await api.get(f"/calls/{call_id}")).json() for call_id in ids]
        if all(call["status"] in ENDED for call in calls):
            return calls
        if asyncio.get_running_loop().time() > deadline:
            pending = Counter(call["status"] for call in calls if call["status"] not in ENDED)
            pytest.fail(f"calls still not ended: {pending}")
        await asyncio.sleep(0.5)
