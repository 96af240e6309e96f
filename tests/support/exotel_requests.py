"""What the tests send as Exotel would, and read back: a placed call, a status callback's
fields, and what was received about a call."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from app.exotel.wire import format_exotel_time
from tests.conftest import place_body
from tests.support.exotel_double import ExotelDouble, accepted, new_sid


async def place(
    client: httpx.AsyncClient, exotel: ExotelDouble, sid: str | None = None
) -> dict[str, Any]:
    exotel.answer_connect(accepted(sid or new_sid()))
    response = await client.post("/calls", json=place_body())
    assert response.status_code == 201, response.text
    return dict(response.json())


def exotel_clock(seconds: float = 0) -> str:
    """Exotel's clock (IST, no zone) `seconds` from now: near enough to now to be believed (a
    minute or so after a call placed now)."""
    return format_exotel_time(datetime.now(UTC) + timedelta(seconds=seconds))


def in_ist(exotel_time: str) -> str:
    """How the call resource shows a time of Exotel's clock."""
    return exotel_time.replace(" ", "T") + "+05:30"


def multipart(fields: dict[str, str]) -> dict[str, Any]:
    return {"files": {key: (None, value) for key, value in fields.items()}}


def callback(
    sid: str, status: str, date: str = "2019-04-08 03:18:35", recording: str = ""
) -> dict[str, str]:
    """The four fields Exotel always sends."""
    return {"CallSid": sid, "Status": status, "RecordingUrl": recording, "DateUpdated": date}


async def events(client: httpx.AsyncClient, call_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/calls/{call_id}/events")
    assert response.status_code == 200
    return list(response.json())


async def kept(client: httpx.AsyncClient, call_id: str) -> list[tuple[str, str]]:
    """What was received about the call, oldest first: (kind, outcome)."""
    return [(e["kind"], e["outcome"]) for e in await events(client, call_id)]
