"""PostgreSQL goes away in the middle of a stream of status callbacks, and exocall is restarted
while it is away: every callback answered 200 is applied once the database is back, once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import CallEvent
from tests.conftest import AUTH, callback_path
from tests.pg_proxy import PgProxy
from tests.processes import Deployment

pytestmark = [pytest.mark.e2e, pytest.mark.postgresql_only, pytest.mark.anyio]

CALLS = 30
SETTLE_DEADLINE_SECONDS = 30.0  # bounds waiting; never asserted on


@pytest.fixture
def proxy() -> Iterator[PgProxy]:
    proxy = PgProxy()
    proxy.start()
    yield proxy
    proxy.stop()


def terminal(sid: str) -> dict[str, Any]:
    fields = {
        "CallSid": sid,
        "Status": "completed",
        "RecordingUrl": f"https://rec.test/{sid}.mp3",
        "DateUpdated": "2024-09-16 15:51:00",
    }
    return {"files": {name: (None, value) for name, value in fields.items()}}


async def test_no_callback_is_lost_across_an_outage_and_a_restart(
    deployment: Deployment,
    db_url: str,
    proxy: PgProxy,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    deployment.env["DATABASE_URL"] = db_url.replace(":5432/", f":{proxy.port}/")
    deployment.start_simulator("--callback-delay", "600")  # the test sends the callbacks itself
    api_url = deployment.start_server()
    async with httpx.AsyncClient(base_url=api_url, timeout=30, headers=AUTH) as api:
        calls = []
        for n in range(CALLS):
            response = await api.post("/calls", json={"from": f"90521{n:04d}0", "app_id": "926"})
            assert response.status_code == 201, response.text
            calls.append(response.json())

    answers: list[dict[str, Any]] = []

    async def send(url: str, batch: list[dict[str, Any]]) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as exotel:
            for call in batch:
                response = await exotel.post(callback_path(call["id"]), **terminal(call["sid"]))
                assert response.status_code == 200, response.text
                answers.append(response.json() | {"call_id": call["id"]})

    third = CALLS // 3
    await send(api_url, calls[:third])
    proxy.cut()  # the database is gone
    await send(api_url, calls[third : 2 * third])
    deployment.processes[-1].stop()  # and exocall restarts while it is gone
    api_url = deployment.start_server(ready_path="/healthz")
    await send(api_url, calls[2 * third :])
    spooled = sum(answer["spooled"] for answer in answers)
    proxy.restore()

    async with httpx.AsyncClient(base_url=api_url, timeout=30, headers=AUTH) as api:
        await _wait_until_completed(api, [call["id"] for call in calls])
    assert list((deployment.workdir / "spool").glob("*.json")) == []
    async with sessionmaker() as session:
        events = list(await session.scalars(select(CallEvent)))
    by_receipt = {event.receipt_id: event for event in events}
    assert len(events) == len(by_receipt) == CALLS  # each stored once, nothing else
    for answer in answers:
        event = by_receipt[uuid.UUID(answer["receipt_id"])]
        assert event.call_id == uuid.UUID(answer["call_id"])
    assert spooled == CALLS - third  # everything sent while the database was away


async def _wait_until_completed(api: httpx.AsyncClient, call_ids: list[str]) -> None:
    deadline = time.monotonic() + SETTLE_DEADLINE_SECONDS
    while True:
        statuses = [
            (await api.get(f"/calls/{call_id}")).json().get("status") for call_id in call_ids
        ]
        if statuses == ["completed"] * len(call_ids):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not all calls completed: {statuses}")
        await asyncio.sleep(0.5)
