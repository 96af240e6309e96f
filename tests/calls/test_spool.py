"""Callbacks received while the database is unreachable are spooled to disk, answered 200, and
stored exactly once when it is back: nothing accepted is lost."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.calls.callback_auth import passthru_url
from app.calls.received import ReceivedCallback
from app.calls.spool import Spool
from app.db.models import Receipt, RequestKind
from app.main import create_app
from tests.conftest import (
    FAKE_CALLBACK_SECRET,
    UNUSED_DATABASE,
    callback_path,
    make_settings,
    place_body,
    serving,
)
from tests.support.eventually import eventually
from tests.support.exotel_double import ExotelDouble, accepted, new_sid

pytestmark = pytest.mark.anyio


def terminal(sid: str, status: str = "completed") -> dict[str, str]:
    return {
        "CallSid": sid,
        "Status": status,
        "RecordingUrl": "",
        "DateUpdated": "2024-09-16 15:51:00",
    }


async def placed_calls(db_url: str, exotel: ExotelDouble, count: int) -> list[dict[str, str]]:
    app = create_app(make_settings(db_url), exotel_transport=httpx.MockTransport(exotel.handle))
    calls = []
    async with serving(app) as client:
        for n in range(count):
            exotel.answer_connect(accepted(new_sid()))
            calls.append((await client.post("/calls", json=place_body(f"905216{n:04d}"))).json())
    return calls


def spooled(spool_dir: Path) -> list[Path]:
    return list(spool_dir.glob("*.json"))


async def replayed(spool_dir: Path) -> None:
    """Until the spool is empty."""
    await eventually(
        lambda: spooled(spool_dir), what="the spool replayed", until=lambda left: not left
    )


async def events_of(sessionmaker: async_sessionmaker[AsyncSession]) -> list[Receipt]:
    """What Exotel sent that was stored (not its answers to the calls' dispatch)."""
    sent = Receipt.kind.not_in([RequestKind.DISPATCH, RequestKind.LOOKUP])
    async with sessionmaker() as session:
        return list(await session.scalars(select(Receipt).where(sent).order_by(Receipt.id)))


async def test_callbacks_during_an_outage_are_spooled_then_stored_once(
    db_url: str,
    tmp_path: Path,
    exotel: ExotelDouble,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    calls = await placed_calls(db_url, exotel, 3)
    spool_dir = tmp_path / "spool"

    # The database goes away; Exotel keeps calling back.
    down = create_app(make_settings(UNUSED_DATABASE, spool_dir=spool_dir))
    async with serving(down) as client:
        for call in calls:
            response = await client.post(callback_path(call["id"]), data=terminal(call["sid"]))
            assert response.status_code == 200
            assert response.json()["spooled"] is True
    assert len(list(spool_dir.glob("*.json"))) == 3
    assert await events_of(sessionmaker) == []

    # The database is back (a new process, as after a restart): the spool is replayed.
    back = create_app(make_settings(db_url, spool_dir=spool_dir, spool_replay_seconds=0.05))
    async with serving(back) as client:
        await replayed(spool_dir)
        statuses = [(await client.get(f"/calls/{call['id']}")).json()["status"] for call in calls]

    assert statuses == ["completed"] * 3
    events = await events_of(sessionmaker)
    assert sorted(e.call_id for e in events) == sorted(uuid.UUID(c["id"]) for c in calls)
    assert list(spool_dir.glob("*.json")) == []


async def test_a_replay_interrupted_after_its_commit_stores_nothing_twice(
    tmp_path: Path, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.open()
    received = ReceivedCallback(None, "POST", "multipart/form-data", terminal(new_sid()))
    await spool.put(received)
    assert await spool.replay(engine) == 1
    # As if the process died between the commit and deleting the file.
    await spool.put(received)
    await spool.replay(engine)

    async with sessionmaker() as session:
        count = await session.scalar(select(func.count()).select_from(Receipt))
    assert count == 1
    assert spool.pending() == []


async def test_a_spooled_file_that_cannot_be_stored_is_set_aside(
    tmp_path: Path, engine: AsyncEngine
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.open()
    (spool.directory / "00000000000000000001-broken.json").write_text("{not json")
    await spool.put(ReceivedCallback(None, "POST", "application/json", terminal(new_sid())))

    assert await spool.replay(engine) == 1
    assert spool.pending() == []
    assert [p.name for p in spool.failed.iterdir()] == ["00000000000000000001-broken.json"]


async def test_a_spooled_callback_the_database_refuses_is_kept_unreadable_not_set_aside(
    db_url: str,
    tmp_path: Path,
    exotel: ExotelDouble,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """Acknowledged, so kept: one spooled before the receiver checked what it refuses now, or
    that fails for a cause nobody foresaw, is stored as received, `unreadable`."""
    (call,) = await placed_calls(db_url, exotel, 1)
    spool = Spool(tmp_path / "spool")
    spool.open()
    fields = terminal(call["sid"]) | {"Duration": 10**25}  # no integer column holds it
    received = ReceivedCallback(uuid.UUID(call["id"]), "POST", "application/json", fields)
    await spool.put(received)

    assert await spool.replay(engine) == 1

    assert spool.pending() == []
    assert list(spool.failed.iterdir()) == []
    (event,) = await events_of(sessionmaker)
    assert (event.receipt_id, event.outcome) == (received.receipt_id, "unreadable")
    assert event.call_id == received.call_id
    assert event.problem is not None


async def test_with_nowhere_to_keep_it_the_callback_is_refused_so_exotel_retries(
    db_url: str, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    app = create_app(make_settings(UNUSED_DATABASE, spool_dir=spool_dir))
    async with serving(app) as client:
        spool_dir.chmod(0o500)  # read-only (root ignores modes: replace it with a file)
        spool_dir.rename(tmp_path / "elsewhere")
        spool_dir.write_text("not a directory")
        response = await client.post(callback_path(None), data=terminal(new_sid()))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"


def test_spool_files_hold_what_was_received(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    received = ReceivedCallback(uuid.uuid4(), "GET", None, {"CallSid": "x", "Legs": [{}]})
    spool._write(received)
    (path,) = spool.pending()
    record = json.loads(path.read_text())
    assert record["receipt_id"] == str(received.receipt_id)
    assert record["payload"] == {"CallSid": "x", "Legs": [{}]}
    assert (record["method"], record["content_type"]) == ("GET", None)
    assert path.name.endswith(f"-{received.receipt_id}.json")
    assert list(tmp_path.glob(".*.partial")) == []


async def test_a_passthru_during_an_outage_is_answered_200_spooled_and_applied_once_back(
    db_url: str, tmp_path: Path, exotel: ExotelDouble
) -> None:
    """Exotel's flow cannot wait for the database: the default branch, and nothing lost."""
    (call,) = await placed_calls(db_url, exotel, 1)
    spool_dir = tmp_path / "spool"
    query = urlencode({"CallSid": call["sid"], "digits": '"2"'})
    path = f"{passthru_url('', FAKE_CALLBACK_SECRET.encode())}&{query}"
    down = make_settings(
        UNUSED_DATABASE,
        spool_dir=spool_dir,
        passthru_redirect_digits={"926": ["2"]},  # not applied: the call cannot be read
    )
    async with serving(create_app(down)) as client:
        response = await client.get(path)
    assert response.status_code == 200
    assert response.json()["spooled"] is True

    back = create_app(make_settings(db_url, spool_dir=spool_dir, spool_replay_seconds=0.05))
    async with serving(back) as client:
        await replayed(spool_dir)
        stored = (await client.get(f"/calls/{call['id']}")).json()
        dispatch, request = (await client.get(f"/calls/{call['id']}/events")).json()
    assert stored["digits"] == "2"
    assert dispatch["kind"] == "dispatch"
    assert (request["kind"], request["outcome"]) == ("passthru", "applied")
