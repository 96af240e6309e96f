"""PostgreSQL goes away in the middle of a stream of status callbacks, and exocall is restarted
while it is away: every callback answered 200 is applied once the database is back, exactly once.

The database is reached through a TCP proxy (tests/support/pg_proxy.py) that the test cuts and
restores; the real PostgreSQL server keeps running for everyone else. The simulator places the
calls but sends no callbacks of its own (a long `--callback-delay`): the test sends them, as
Exotel would.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import Call, EventOutcome, Receipt, RequestKind
from app.exotel.wire import format_exotel_time
from tests.conftest import AUTH, callback_path, place_body
from tests.support.eventually import eventually
from tests.support.pg_proxy import PgProxy
from tests.support.processes import Deployment

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

CALLS = 30


def number(n: int) -> str:
    """Distinct numbers ending in 0 or 1: the simulator answers and completes those calls."""
    return f"0905216{n:03d}{n % 2}"


def terminal_callback(sid: str) -> dict[str, Any]:
    """Exotel's terminal StatusCallback for `sid`, as multipart/form-data."""
    fields = {
        "CallSid": sid,
        "Status": "completed",
        "RecordingUrl": recording_url(sid),
        "DateUpdated": format_exotel_time(datetime.now(UTC)),
    }
    return {"files": {name: (None, value) for name, value in fields.items()}}


def recording_url(sid: str) -> str:
    return f"https://recordings.exotel.test/{sid}.mp3"


def spooled_receipts(spool: Path) -> set[uuid.UUID]:
    # Files are named `<time>-<receipt_id>.json`.
    return {uuid.UUID(path.stem.partition("-")[2]) for path in spool.glob("*.json")}


async def test_no_accepted_callback_is_lost_across_an_outage_and_a_restart(
    proxy: PgProxy,
    deployment: Deployment,
    db_url: str,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    spool = deployment.workdir / "spool"  # the server's working directory is the workdir
    deployment.env |= {"DATABASE_URL": proxy.url_for(db_url), "SPOOL_DIR": str(spool)}
    deployment.start_simulator("--callback-delay", "600")  # the test sends the callbacks itself
    api_url = deployment.start_server()

    async with httpx.AsyncClient(base_url=api_url, timeout=30, headers=AUTH) as api:
        calls = []
        for n in range(CALLS):
            response = await api.post("/calls", json=place_body(number(n)), params={"wait": True})
            assert response.status_code == 201, response.text
            assert response.json()["sid"], response.text
            calls.append(response.json())

    answers: dict[str, dict[str, Any]] = {}  # by call id: what each callback was answered

    async def send(url: str, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        sent = []
        async with httpx.AsyncClient(base_url=url, timeout=30) as exotel:
            for call in batch:
                response = await exotel.post(
                    callback_path(call["id"]), **terminal_callback(call["sid"])
                )
                assert response.status_code == 200, f"{call['id']}: {response.text}"
                answers[call["id"]] = response.json()
                sent.append(response.json())
        return sent

    third = CALLS // 3
    first, second, last = calls[:third], calls[third : 2 * third], calls[2 * third :]

    # The database is up: stored and applied before the answer.
    for answer in await send(api_url, first):
        assert answer["spooled"] is False
        assert answer["outcome"] == EventOutcome.APPLIED

    proxy.cut()  # the database is gone, mid-stream
    for answer in await send(api_url, second):
        assert answer["spooled"] is True
        assert answer["outcome"] is None
    readiness = [await _get(api_url, "/readyz")]

    # exocall restarts while the database is away; what it spooled stays on disk.
    server = deployment.processes[-1]
    server.stop()  # SIGTERM: uvicorn shuts down, then exits by the signal it caught
    assert server.popen.returncode in (0, -signal.SIGTERM), server.output()
    assert "Application shutdown complete" in server.output()  # not killed
    api_url = deployment.start_server(ready_path="/healthz")  # /readyz fails without a database
    readiness.append(await _get(api_url, "/readyz"))
    for answer in await send(api_url, last):
        assert answer["spooled"] is True
    assert spooled_receipts(spool) == {
        uuid.UUID(answers[call["id"]]["receipt_id"]) for call in second + last
    }

    proxy.restore()
    call_ids = [call["id"] for call in calls]
    async with httpx.AsyncClient(base_url=api_url, timeout=30, headers=AUTH) as api:
        final = await _wait_until_settled(api, call_ids, spool)
        assert (await api.get("/readyz")).status_code == httpx.codes.OK  # the engine recovered
    assert list(spool.glob("*.json")) == []
    assert list((spool / "failed").iterdir()) == []  # nothing set aside as unstorable

    for call in calls:
        assert final[call["id"]]["recording_url"] == recording_url(call["sid"])
    async with sessionmaker() as session:  # straight to the database, not through the proxy
        sent = Receipt.kind == RequestKind.STATUS_CALLBACK  # not Exotel's answers
        events = list(await session.scalars(select(Receipt).where(sent)))
        stored_calls = {c.id: c for c in await session.scalars(select(Call))}
    # Every callback answered 200 is stored exactly once; nothing else is.
    receipts = Counter(event.receipt_id for event in events)
    assert receipts == Counter(uuid.UUID(answer["receipt_id"]) for answer in answers.values())
    assert len(events) == CALLS
    by_receipt = {event.receipt_id: event for event in events}
    for call in calls:
        event = by_receipt[uuid.UUID(answers[call["id"]]["receipt_id"])]
        assert event.call_id == uuid.UUID(call["id"])  # attached to its call
        assert (event.sid, event.status) == (call["sid"], "completed")
        assert event.outcome == EventOutcome.APPLIED  # and it is what completed the call
        stored = stored_calls[uuid.UUID(call["id"])]
        assert (stored.status, stored.recording_url) == ("completed", recording_url(call["sid"]))

    # While the database was down, before and after the restart, /readyz said so.
    seen = [(r.status_code, r.json().get("error", {}).get("code")) for r in readiness]
    assert seen == [(503, "database_unavailable")] * 2


async def _get(url: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        return await http.get(path)


async def _wait_until_settled(
    api: httpx.AsyncClient, call_ids: list[str], spool: Path
) -> dict[str, dict[str, Any]]:
    """Every call completed and the spool empty; returns the calls."""

    async def where_things_stand() -> tuple[dict[str, dict[str, Any]], Counter[str], int]:
        calls = {}
        for call_id in call_ids:
            response = await api.get(f"/calls/{call_id}")
            if response.status_code == httpx.codes.OK:
                calls[call_id] = response.json()
        statuses = Counter(call.get("status") for call in calls.values())
        left = await asyncio.to_thread(spooled_receipts, spool)
        return calls, statuses, len(left)

    calls, _, _ = await eventually(
        where_things_stand,
        what="every call completed and nothing left spooled (calls, statuses, files spooled)",
        until=lambda seen: seen[1] == {"completed": len(call_ids)} and not seen[2],
    )
    return calls
