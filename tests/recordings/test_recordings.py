"""The recordings archive (app/recordings): each failure kind, the store down without a second
fetch, the bytes served equal to Exotel's, `Range`, two replicas, retention, backfill.

Exotel is the project's simulator, in process, serving a real WAV only with the right Basic
credentials; the store is a directory or a real S3 API (moto in server mode, on loopback). The
app runs with its own archive asleep, and each test runs an `Archive` itself, so that what is
due and when is the test's to say.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import func, select, update

from app.calls.dispatch import budget_of
from app.config import Settings
from app.db.clock import db_now
from app.db.models import Call, ExotelRequest, RecordingJob, Throttle
from app.exotel.simulator import RecordingFault, Simulator, SimulatorConfig, recording_bytes
from app.main import create_app, exotel_client
from app.metrics import Metrics
from app.recordings.archive import Archive
from app.recordings.backfill import queue_recordings_since
from app.recordings import retention
from app.recordings.retention import forget_old_recordings
from app.recordings.store import RecordingStore
from tests.conftest import (
    FAKE_API_KEY,
    FAKE_API_TOKEN,
    FAKE_INTERNAL_API_KEY,
    make_settings,
    no_dns,
    place_body,
    serving,
)
from tests.support.eventually import eventually
from tests.support.feed import feed_items
from tests.support.pg_proxy import PgProxy
from tests.support.processes import EXOCALL, STRAY_ENV, Process
from tests.support.s3_server import FAKE_S3_KEY_ID, FAKE_S3_SECRET, new_bucket, objects, start_moto

pytestmark = pytest.mark.anyio

CREDENTIALS = (FAKE_API_KEY, FAKE_API_TOKEN)
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 endpoint, for the whole session."""
    process: Process
    process, url = start_moto(tmp_path_factory.mktemp("moto"))
    yield url
    process.stop()


def local_settings(db_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "exotel_api_base_url": "http://simulator",  # the simulator reports recordings there
        "recording_store": str(tmp_path / "recordings"),
    }
    return make_settings(db_url, **(values | overrides))


def s3_settings(db_url: str, tmp_path: Path, endpoint: str, **overrides: Any) -> Settings:
    return local_settings(
        db_url,
        tmp_path,
        recording_store=f"s3://{new_bucket(endpoint)}/calls",
        recording_s3_endpoint=endpoint,
        recording_s3_region="us-east-1",
        recording_s3_access_key_id=FAKE_S3_KEY_ID,
        recording_s3_secret_access_key=FAKE_S3_SECRET,
        **overrides,
    )


@pytest.fixture(params=["directory", "s3"])
def any_store(request: pytest.FixtureRequest, db_url: str, tmp_path: Path) -> Settings:
    """Settings with each store: a directory, and a bucket of moto's."""
    if request.param == "s3":
        return s3_settings(db_url, tmp_path, request.getfixturevalue("moto"))
    return local_settings(db_url, tmp_path)


def stored_keys(settings: Settings, moto: str, tmp_path: Path) -> list[str]:
    """What the store holds: the bucket's keys, or the directory's files."""
    if settings.recordings.store.startswith("s3://"):
        bucket = settings.recordings.store.removeprefix("s3://").partition("/")[0]
        return [key.removeprefix("calls/") for key in objects(moto, bucket)]
    return sorted(path.name for path in (tmp_path / "recordings").iterdir())


async def drain(archive: Archive, *, worker: str) -> int:
    """Archive every recording due now, as the worker `worker` would, at once rather than on a
    runner's turns; how many."""
    done = 0
    while True:
        async with archive.sessionmaker() as session, session.begin():
            claimed = await archive.claim(session, worker=worker, limit=archive.concurrency)
        if not claimed:
            return done
        outcomes = await asyncio.gather(*(archive.run(job) for job in claimed))
        async with archive.sessionmaker() as session, session.begin():
            await archive.record(session, list(zip(claimed, outcomes, strict=True)))
        done += len(claimed)


@dataclass
class Archiving:
    api: httpx.AsyncClient
    simulator: Simulator
    archive: Archive
    settings: Settings
    worker: str  # whom the archive's claims are for

    async def completed_call(self, number: str = "+919052161110") -> str:
        """A call placed and completed, with its recording pending; its id."""
        placed = await self.api.post("/calls", json=place_body(number))
        assert placed.status_code == 201, placed.text
        call = await self.wait(placed.json()["id"], lambda c: c["status"] == "completed")
        assert call["recording"]["status"] == "pending"
        return str(call["id"])

    async def call(self, call_id: str) -> dict[str, Any]:
        answer = await self.api.get(f"/calls/{call_id}")
        assert answer.status_code == 200
        return dict(answer.json())

    async def feed(self, call_id: str) -> list[dict[str, Any]]:
        """The call's events in the feed, every one committed shown (tests/support/feed.py)."""
        assert self.settings.database.url
        return await feed_items(self.api, self.settings.database.url, call_id=call_id)

    async def wait(self, call_id: str, done: Any) -> dict[str, Any]:
        return await eventually(lambda: self.call(call_id), what=f"call {call_id}", until=done)

    def fetches(self, call: dict[str, Any]) -> list[int]:
        """The statuses the simulator answered the call's recording with, in order."""
        return [
            e.status
            for e in self.simulator.log
            if "/recordings/" in e.path and e.sid == call["sid"]
        ]

    def lookups(self, call: dict[str, Any]) -> list[int]:
        """The statuses the simulator answered the call's details with, in order."""
        return [
            e.status for e in self.simulator.log if e.path.endswith(f"/Calls/{call['sid']}.json")
        ]

    async def make_due(self) -> None:
        """Every queued recording due now (its backoff spent), and no pause."""
        async with self.archive.sessionmaker() as session, session.begin():
            now = await db_now(session)
            await session.execute(update(RecordingJob).values(due_at=now))
            await session.execute(update(Throttle).values(recordings_paused_until=now))

    async def run_due(self) -> int:
        """Archive every recording due now, as a worker of its own; how many."""
        return await drain(self.archive, worker=self.worker)

    async def run_rounds(self, rounds: int) -> None:
        """Run the archive, then make what it left due at once, `rounds` times."""
        for _ in range(rounds):
            await self.run_due()
            await self.make_due()

    async def queued(self) -> int:
        async with self.archive.sessionmaker() as session:
            return int(await session.scalar(select(func.count()).select_from(RecordingJob)) or 0)

    async def exotel_sha256(self, call: dict[str, Any]) -> str:
        """Of the bytes Exotel (the simulator) serves for the call's recording."""
        sid = call["sid"]
        size = 44 + 2 * int(self.simulator.config.recording_seconds * 8000)
        digest = hashlib.sha256()
        async for chunk in recording_bytes(sid, size):
            digest.update(chunk)
        return digest.hexdigest()


@asynccontextmanager
async def archiving(
    settings: Settings,
    *,
    recording_transport: httpx.AsyncBaseTransport | None = None,
    worker: str = "replica-a",
) -> AsyncIterator[Archiving]:
    """The app, with the simulator as Exotel (answering only to the account's credentials), and
    an archive of its own; `recording_transport` replaces how the archive reaches Exotel."""
    simulator = Simulator(SimulatorConfig(callback_delay=0, credentials=CREDENTIALS))
    exotel = httpx.ASGITransport(app=simulator.app())
    app = create_app(settings, exotel_transport=exotel, resolver=no_dns)
    async with (
        serving(app) as api,
        httpx.AsyncClient(transport=recording_transport or exotel) as http,
    ):
        simulator.bind(api)  # its status callbacks reach the app
        runtime = app.state.runtime
        archive = Archive(
            sessionmaker=runtime.sessionmaker,
            exotel=exotel_client(settings, http),
            store=runtime.recordings,
            settings=settings.recordings,
            budget=budget_of(settings.exotel),
            held_dir=settings.callbacks.spool_dir / "recordings",
            metrics=runtime.metrics,  # what /metrics counts
        )
        yield Archiving(api, simulator, archive, settings, worker)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- archived and served ------------------------------------------------------------------


async def test_a_recording_is_archived_once_and_served_byte_for_byte(
    any_store: Settings, tmp_path: Path, moto: str
) -> None:
    settings = any_store
    async with archiving(settings) as env:
        call_id = await env.completed_call()
        assert await env.run_due() == 1
        call = await env.call(call_id)
        exotel_sha = await env.exotel_sha256(call)
        recording = call["recording"]
        assert recording["status"] == "archived"
        assert recording["sha256"] == exotel_sha
        assert recording["size"] == 48044
        assert recording["content_type"] == "audio/wav"
        assert recording["attempts"] == 1
        assert recording["error"] is None
        assert recording["archived_at"] is not None
        assert env.fetches(call) == [200]

        served = await env.api.get(f"/calls/{call_id}/recording")
        assert served.status_code == 200
        assert served.headers["content-type"] == "audio/wav"
        assert served.headers["accept-ranges"] == "bytes"
        assert served.headers["etag"] == f'"{exotel_sha}"'
        assert sha256(served.content) == exotel_sha
        assert served.content.startswith(b"RIFF")
        assert served.content[8:12] == b"WAVE"

        # Nothing more to do: the job left the queue, and nothing fetches it again.
        assert await env.queued() == 0
        assert await env.run_due() == 0
        assert env.fetches(call) == [200]

        # Subscribers are told: the archived recording is a `call.updated`.
        events = await env.feed(call_id)
        assert [e["type"] for e in events][-1] == "call.updated"
        assert events[-1]["data"]["call"]["recording"]["status"] == "archived"
        assert events[-1]["data"]["call"]["recording"]["sha256"] == exotel_sha
    assert stored_keys(settings, moto, tmp_path) == [call_id]


async def test_range_requests_serve_the_bytes_asked_for(
    any_store: Settings, tmp_path: Path, moto: str
) -> None:
    settings = any_store
    async with archiving(settings) as env:
        call_id = await env.completed_call()
        await env.run_due()
        url = f"/calls/{call_id}/recording"
        whole = (await env.api.get(url)).content
        size = len(whole)

        for header, start, end in [
            ("bytes=0-9", 0, 9),
            ("bytes=100-", 100, size - 1),
            ("bytes=-10", size - 10, size - 1),
            ("bytes=40000-99999999", 40000, size - 1),
            (f"bytes={size - 1}-{size - 1}", size - 1, size - 1),
            # More digits than int() reads: beyond the end, as any large offset.
            (f"bytes=0-{'9' * 5000}", 0, size - 1),
            (f"bytes=-{'9' * 5000}", 0, size - 1),
        ]:
            part = await env.api.get(url, headers={"Range": header})
            assert part.status_code == 206, header
            assert part.content == whole[start : end + 1], header
            assert part.headers["content-range"] == f"bytes {start}-{end}/{size}", header
            assert part.headers["content-length"] == str(end - start + 1), header

        # Ranges this does not serve are ignored: the whole recording (RFC 9110 allows it).
        for header in ["bytes=0-1,5-9", "bytes=10-5", "items=0-1", "bytes=-"]:
            ignored = await env.api.get(url, headers={"Range": header})
            assert ignored.status_code == 200, header
            assert ignored.content == whole, header

        for first in (str(size), "9" * 5000):
            beyond = await env.api.get(url, headers={"Range": f"bytes={first}-"})
            assert beyond.status_code == 416
            assert beyond.headers["content-range"] == f"bytes */{size}"
            assert beyond.json()["error"]["code"] == "range_not_satisfiable"


async def test_if_none_match_is_304_for_a_recording_that_exists(
    db_url: str, tmp_path: Path
) -> None:
    """RFC 9110 13.1.2: `*` matches any current representation; a list, the ETags it names
    (weakly compared)."""
    async with archiving(local_settings(db_url, tmp_path)) as env:
        call_id = await env.completed_call()
        url = f"/calls/{call_id}/recording"
        pending = await env.api.get(url, headers={"If-None-Match": "*"})
        assert pending.status_code == 404  # nothing to match yet
        await env.run_due()
        etag = (await env.api.get(url)).headers["etag"]
        for header in ["*", etag, f"W/{etag}", f'"other", {etag}']:
            unchanged = await env.api.get(url, headers={"If-None-Match": header})
            assert unchanged.status_code == 304, header
            assert unchanged.content == b""
            assert unchanged.headers["etag"] == etag
        for header in ['"other"', etag.strip('"'), ""]:
            served = await env.api.get(url, headers={"If-None-Match": header})
            assert served.status_code == 200, header


async def test_a_store_that_signs_redirects_to_a_short_lived_url(
    db_url: str, tmp_path: Path, moto: str
) -> None:
    settings = s3_settings(db_url, tmp_path, moto, recording_serve="redirect")
    async with archiving(settings) as env:
        call_id = await env.completed_call()
        await env.run_due()
        call = await env.call(call_id)
        answer = await env.api.get(f"/calls/{call_id}/recording")
        assert answer.status_code == 307
        location = answer.headers["location"]
        assert location.startswith(f"{moto}/")
        assert "X-Amz-Expires=300" in location
        assert "fake-s3-secret" not in location
        async with httpx.AsyncClient() as plain:  # no credentials: the URL is the key
            signed = await plain.get(location)
        assert sha256(signed.content) == await env.exotel_sha256(call)


async def test_the_recording_asks_for_the_api_key_and_an_archived_recording(
    db_url: str, tmp_path: Path
) -> None:
    async with archiving(local_settings(db_url, tmp_path)) as env:
        call_id = await env.completed_call()
        url = f"/calls/{call_id}/recording"
        refused = await env.api.get(url, headers={"Authorization": "Bearer wrong"})
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Basic")  # the player's browser

        pending = await env.api.get(url)
        assert pending.status_code == 404
        assert pending.json()["error"]["code"] == "recording_not_archived"
        assert "pending" in pending.json()["error"]["message"]

        unknown = await env.api.get(f"/calls/{uuid.uuid4()}/recording")
        assert unknown.json()["error"]["code"] == "call_not_found"

        # A browser signed in to /ui sends the key as Basic auth's password.
        await env.run_due()
        basic = await env.api.get(url, headers={"Authorization": "Basic " + _basic("any")})
        assert basic.status_code == 200


def _basic(user: str) -> str:
    return base64.b64encode(f"{user}:{FAKE_INTERNAL_API_KEY}".encode()).decode()


# --- failures by kind ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 410])
async def test_a_recording_exotel_no_longer_has_is_expired_at_once(
    db_url: str, tmp_path: Path, status: int
) -> None:
    async with archiving(local_settings(db_url, tmp_path)) as env:
        call_id = await env.completed_call()
        env.simulator.recording_faults.append(RecordingFault(status=status))
        await env.run_due()
        call = await env.call(call_id)
        assert call["recording"]["status"] == "expired"
        assert call["recording"]["attempts"] == 1
        assert call["recording"]["error"] == f"Exotel answered {status}"
        assert await env.queued() == 0
        await env.make_due()
        await env.run_due()
        assert env.fetches(call) == [status]  # never tried again
        events = await env.feed(call_id)
        assert events[-1]["type"] == "call.updated"
        assert events[-1]["data"]["call"]["recording"]["status"] == "expired"


async def test_wrong_credentials_pause_the_archive_without_spending_attempts(
    db_url: str, tmp_path: Path
) -> None:
    # One fetch at a time: the first refusal holds back the next.
    settings = local_settings(db_url, tmp_path, recording_concurrency=1)
    async with archiving(settings) as env:
        first, second = await env.completed_call(), await env.completed_call("+919052161111")
        # The key is revoked at Exotel's end: its API and its recordings refuse it.
        env.simulator.config.credentials = ("another-key", "another-token")
        await env.run_due()
        calls = [await env.call(first), await env.call(second)]
        # One refusal pauses every fetch: the second recording is never asked for.
        assert sorted(len(env.fetches(c)) for c in calls) == [0, 1]
        for call in calls:
            assert call["recording"]["status"] == "pending"
            assert call["recording"]["attempts"] == 0  # no attempt of its own spent
        refused = next(c for c in calls if env.fetches(c))
        assert env.fetches(refused) == [401]
        assert env.lookups(refused) == [401]  # call details refuse them too
        assert "refused the credentials" in refused["recording"]["error"]

        # Paused: nothing is fetched, however often the archive runs, until the pause ends.
        async with env.archive.sessionmaker() as session:
            throttle = (await session.scalars(select(Throttle))).one()
            now = await db_now(session)
        assert throttle.recordings_paused_until - now > timedelta(seconds=590)
        assert "refused the credentials" in (throttle.recordings_paused_reason or "")
        # The alert: a metric to page on, and the status page says it.
        metrics = (await env.api.get("/metrics")).text
        assert "exocall_recordings_paused 1.0" in metrics
        assert 'exocall_recording_archive_total{outcome="refused"} 1.0' in metrics
        page = (await env.api.get("/ui")).text
        assert 'id="recordings-paused"' in page
        assert "Exotel refused the credentials for a recording (401)" in page
        async with env.archive.sessionmaker() as session, session.begin():
            await session.execute(update(RecordingJob).values(due_at=now))
        assert await env.run_due() == 0

        # The credentials are put right; once the pause is over, one probe goes first, then
        # the rest.
        env.simulator.config.credentials = CREDENTIALS
        await env.make_due()
        async with env.archive.sessionmaker() as session, session.begin():
            probe = await env.archive.claim(session, worker=env.worker, limit=5)
        assert len(probe) == 1
        outcome = await env.archive.run(probe[0])
        async with env.archive.sessionmaker() as session, session.begin():
            await env.archive.record(session, [(probe[0], outcome)])
        assert await env.run_due() == 1
        for call_id in (first, second):
            assert (await env.call(call_id))["recording"]["status"] == "archived"
        async with env.archive.sessionmaker() as session:
            throttle = (await session.scalars(select(Throttle))).one()
        assert throttle.recordings_paused_reason is None
        assert "exocall_recordings_paused 0.0" in (await env.api.get("/metrics")).text


async def test_the_call_page_plays_it_and_the_status_page_and_metrics_count(
    db_url: str, tmp_path: Path
) -> None:
    async with archiving(local_settings(db_url, tmp_path)) as env:
        ids = [await env.completed_call(), await env.completed_call("+919052161111")]
        metrics = (await env.api.get("/metrics")).text
        assert 'exocall_recordings{status="pending"} 2.0' in metrics
        assert 'exocall_jobs_due{kind="archive"} 2.0' in metrics

        env.simulator.recording_faults.append(RecordingFault(status=500))
        await env.run_due()  # one of the two draws the 500: whichever asks first
        by_status = {(await env.call(c))["recording"]["status"]: c for c in ids}
        archived, failing = by_status["archived"], by_status["pending"]
        page = await env.api.get(f"/ui/calls/{archived}")
        assert f'<audio controls preload="metadata" src="/calls/{archived}/recording">' in page.text
        assert "media-src 'self'" in page.headers["content-security-policy"]
        pending = (await env.api.get(f"/ui/calls/{failing}")).text
        assert "<audio" not in pending
        assert "Exotel answered 500" in pending

        metrics = (await env.api.get("/metrics")).text
        assert 'exocall_recordings{status="archived"} 1.0' in metrics
        assert 'exocall_recordings{status="pending"} 1.0' in metrics
        assert 'exocall_jobs_due{kind="archive"} 0.0' in metrics  # not before its backoff
        assert 'exocall_recording_archive_total{outcome="archived"} 1.0' in metrics
        assert 'exocall_recording_archive_total{outcome="retried"} 1.0' in metrics
        status_page = (await env.api.get("/ui")).text
        assert "1 archived · 0 failed · 0 expired · 0 deleted" in status_page


async def test_an_expired_url_is_fetched_again_as_call_details_give_it(
    db_url: str, tmp_path: Path
) -> None:
    """RecordingUrlValidity: the URL of the callback has expired by the time it is fetched
    (a backlog, a pause). Call details sign it afresh; nothing pauses and nothing is lost."""
    # A margin no stall here reaches: no grant goes stale before its request, so each is one.
    settings = local_settings(db_url, tmp_path, exotel_rate_margin_seconds=60)
    async with archiving(settings) as env:
        env.simulator.config.recording_url_validity = 0.2
        call_id = await env.completed_call()
        old_url = (await env.call(call_id))["recording_url"]
        assert "Signature=" in old_url
        expires = float(parse_qs(urlsplit(old_url).query)["Expires"][0])
        await eventually(lambda: time.time() > expires, what="the signed URL expired")
        env.simulator.config.recording_url_validity = 60.0
        await env.run_due()
        call = await env.call(call_id)
        assert env.fetches(call) == [403, 200]
        assert env.lookups(call) == [200]
        assert call["recording"]["status"] == "archived"
        assert call["recording"]["attempts"] == 1
        assert call["recording"]["sha256"] == await env.exotel_sha256(call)
        assert call["recording_url"] != old_url  # the URL that worked is kept
        assert call["recording_url"].split("?")[0] == old_url.split("?")[0]
        async with env.archive.sessionmaker() as session:
            throttle = (await session.scalars(select(Throttle))).one()
            kinds = list(await session.scalars(select(ExotelRequest.kind)))
        assert throttle.recordings_paused_until is None
        assert sorted(kinds) == ["connect", "lookup"]  # the look-up is drawn from the budget


async def test_a_url_refused_while_call_details_take_the_credentials_is_tried_again(
    db_url: str, tmp_path: Path
) -> None:
    """Refused, though call details take the same credentials and give the same URL: this
    recording's own failure, retried with backoff; the archive does not pause for it."""
    async with archiving(local_settings(db_url, tmp_path)) as env:
        call_id = await env.completed_call()
        env.simulator.recording_faults.append(RecordingFault(status=403))
        await env.run_due()
        call = await env.call(call_id)
        assert env.fetches(call) == [403]
        assert env.lookups(call) == [200]
        assert call["recording"]["status"] == "pending"
        assert call["recording"]["attempts"] == 1
        assert "which its call details took" in call["recording"]["error"]
        async with env.archive.sessionmaker() as session:
            throttle = (await session.scalars(select(Throttle))).one()
        assert throttle.recordings_paused_until is None

        await env.make_due()
        await env.run_due()
        call = await env.call(call_id)
        assert call["recording"]["status"] == "archived"
        assert env.fetches(call) == [403, 200]


async def test_a_refused_url_waits_for_the_budget_before_its_look_up(
    db_url: str, tmp_path: Path
) -> None:
    """The look-up after a refusal is an API request: with the account's window full, the
    recording waits (no attempt spent) instead of asking Exotel past its limit."""
    async with archiving(local_settings(db_url, tmp_path, exotel_rate_limit=2)) as env:
        call_id = await env.completed_call()  # Calls/connect: one of the two
        async with env.archive.sessionmaker() as session, session.begin():
            now = await db_now(session)
            session.add(ExotelRequest(at=now, kind="connect"))
        env.simulator.recording_faults.append(RecordingFault(status=403))
        await env.run_due()
        call = await env.call(call_id)
        assert env.fetches(call) == [403]
        assert env.lookups(call) == []
        assert call["recording"]["status"] == "pending"
        assert call["recording"]["attempts"] == 0
        assert "wait for the account's budget" in call["recording"]["error"]


@pytest.mark.parametrize(
    "fault",
    [RecordingFault(status=500), RecordingFault(status=503), RecordingFault(cut_short=True)],
    ids=["500", "503", "cut short"],
)
async def test_a_failed_fetch_is_tried_again_after_a_backoff(
    db_url: str, tmp_path: Path, fault: RecordingFault
) -> None:
    async with archiving(local_settings(db_url, tmp_path)) as env:
        call_id = await env.completed_call()
        env.simulator.recording_faults.append(fault)
        await env.run_due()
        call = await env.call(call_id)
        assert call["recording"]["status"] == "pending"
        assert call["recording"]["attempts"] == 1
        assert call["recording"]["error"]
        if fault.cut_short:
            assert call["recording"]["error"] == "the recording ended after 24022 of 48044 bytes"
        # Due again only after the backoff.
        async with env.archive.sessionmaker() as session:
            job = (await session.scalars(select(RecordingJob))).one()
            now = await db_now(session)
        assert timedelta(seconds=4) < job.due_at - now <= timedelta(seconds=5)
        assert job.claimed_at is None
        assert await env.run_due() == 0

        await env.make_due()
        await env.run_due()
        call = await env.call(call_id)
        assert call["recording"]["status"] == "archived"
        assert call["recording"]["attempts"] == 2
        assert call["recording"]["error"] is None
        assert call["recording"]["sha256"] == await env.exotel_sha256(call)
        assert len(env.fetches(call)) == 2
        # A body cut short never reaches the store.
        assert (
            sha256((await env.api.get(f"/calls/{call_id}/recording")).content)
            == (call["recording"]["sha256"])
        )


async def test_a_timeout_is_tried_again(db_url: str, tmp_path: Path) -> None:
    asked: list[str] = []

    def times_out(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        raise httpx.ReadTimeout("timed out", request=request)

    transport = httpx.MockTransport(times_out)
    async with archiving(local_settings(db_url, tmp_path), recording_transport=transport) as env:
        call_id = await env.completed_call()
        await env.run_due()
        call = await env.call(call_id)
        assert len(asked) == 1
        assert asked[0] == call["recording_url"]
        assert call["recording"]["status"] == "pending"
        assert call["recording"]["attempts"] == 1
        assert call["recording"]["error"] == "no whole answer: ReadTimeout"


async def test_retries_run_out_in_failed(db_url: str, tmp_path: Path) -> None:
    settings = local_settings(db_url, tmp_path, recording_max_attempts=3)
    async with archiving(settings) as env:
        call_id = await env.completed_call()
        env.simulator.recording_faults.append(RecordingFault(status=502, times=5))
        await env.run_rounds(5)
        call = await env.call(call_id)
        assert call["recording"]["status"] == "failed"
        assert call["recording"]["attempts"] == 3
        assert env.fetches(call) == [502, 502, 502]
        assert await env.queued() == 0
        events = await env.feed(call_id)
        assert events[-1]["type"] == "call.updated"
        assert events[-1]["data"]["call"]["recording"]["status"] == "failed"

        # A backfill queues it afresh, with as many fetches again; the count goes on.
        assert await queue_recordings_since(env.archive.sessionmaker, since=EPOCH) == 1
        env.simulator.recording_faults.clear()
        env.simulator.recording_faults.append(RecordingFault(status=502, times=2))
        await env.run_rounds(2)
        call = await env.call(call_id)
        assert call["recording"]["status"] == "pending"
        assert call["recording"]["attempts"] == 5
        await env.run_due()
        call = await env.call(call_id)
        assert call["recording"]["status"] == "archived"
        assert call["recording"]["attempts"] == 6


async def test_the_credentials_never_go_to_a_host_off_the_list(db_url: str, tmp_path: Path) -> None:
    asked: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(200, content=b"audio")

    transport = httpx.MockTransport(record)
    async with archiving(local_settings(db_url, tmp_path), recording_transport=transport) as env:
        call_id = await env.completed_call()
        async with env.archive.sessionmaker() as session, session.begin():
            await session.execute(
                update(Call).values(recording_url="https://evil.example/exotelrecordings/a.mp3")
            )
        await env.run_due()
        call = await env.call(call_id)
        assert asked == []
        assert call["recording"]["status"] == "failed"
        assert call["recording"]["attempts"] == 0
        assert call["recording"]["error"].startswith("not fetched: ")


# --- the store down -----------------------------------------------------------------------


async def test_a_store_that_is_down_is_retried_without_fetching_again(
    db_url: str, tmp_path: Path, moto: str
) -> None:
    port = int(moto.rpartition(":")[2])
    with PgProxy(upstream_port=port) as store_proxy:
        endpoint = f"http://127.0.0.1:{store_proxy.port}"
        settings = s3_settings(db_url, tmp_path, endpoint)
        async with archiving(settings) as env:
            call_id = await env.completed_call()
            store_proxy.cut()
            await env.run_due()
            call = await env.call(call_id)
            exotel_sha = await env.exotel_sha256(call)
            assert call["recording"]["status"] == "pending"
            assert call["recording"]["attempts"] == 1
            assert call["recording"]["error"].startswith("the store is unavailable: ")
            assert call["recording"]["sha256"] == exotel_sha  # the bytes, held here
            held = env.archive.held_dir / call_id
            assert sha256(held.read_bytes()) == exotel_sha

            # Still down: tried again, still not fetched again.
            await env.make_due()
            await env.run_due()
            assert (await env.call(call_id))["recording"]["status"] == "pending"

            store_proxy.restore()
            await env.make_due()
            await env.run_due()
            call = await env.call(call_id)
            assert call["recording"]["status"] == "archived"
            assert call["recording"]["attempts"] == 1
            assert env.fetches(call) == [200]  # one fetch, whatever the store did
            assert not held.exists()
            served = await env.api.get(f"/calls/{call_id}/recording")
            assert sha256(served.content) == exotel_sha

            # Serving while the store is down answers 503 in the one error shape.
            store_proxy.cut()
            down = await env.api.get(f"/calls/{call_id}/recording")
            assert down.status_code == 503
            assert down.json()["error"]["code"] == "recording_store_unavailable"
            store_proxy.restore()


async def test_held_bytes_gone_from_disk_are_fetched_again(
    db_url: str, tmp_path: Path, moto: str
) -> None:
    port = int(moto.rpartition(":")[2])
    with PgProxy(upstream_port=port) as store_proxy:
        settings = s3_settings(db_url, tmp_path, f"http://127.0.0.1:{store_proxy.port}")
        async with archiving(settings) as env:
            call_id = await env.completed_call()
            store_proxy.cut()
            await env.run_due()
            (env.archive.held_dir / call_id).unlink()  # the replica that held them is gone
            store_proxy.restore()
            await env.make_due()
            await env.run_due()
            call = await env.call(call_id)
            assert call["recording"]["status"] == "archived"
            assert call["recording"]["attempts"] == 2
            assert env.fetches(call) == [200, 200]


# --- replicas -----------------------------------------------------------------------------


class SlowTransport(httpx.AsyncBaseTransport):
    """Exotel, slow to serve: fetches of one recording would overlap if two replicas took it."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.in_flight: dict[str, int] = {}
        self.most_at_once: dict[str, int] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.in_flight[path] = self.in_flight.get(path, 0) + 1
        self.most_at_once[path] = max(self.most_at_once.get(path, 0), self.in_flight[path])
        try:
            await asyncio.sleep(0.2)
            return await self.inner.handle_async_request(request)
        finally:
            self.in_flight[path] -= 1


async def test_two_replicas_never_fetch_one_recording_together(db_url: str, tmp_path: Path) -> None:
    settings = local_settings(db_url, tmp_path, recording_concurrency=2)
    async with archiving(settings) as env:
        ids = [await env.completed_call(f"+91905216111{d}") for d in "00110011"]
        slow = SlowTransport(httpx.ASGITransport(app=env.simulator.app()))
        async with httpx.AsyncClient(transport=slow) as http:
            replicas = [
                Archive(
                    sessionmaker=env.archive.sessionmaker,
                    exotel=exotel_client(settings, http),
                    store=env.archive.store,
                    settings=settings.recordings,
                    budget=env.archive.budget,
                    held_dir=env.archive.held_dir,
                    metrics=Metrics(),
                )
                for _ in range(2)
            ]
            done = await asyncio.gather(
                *(drain(replica, worker=f"replica-{n}") for n, replica in enumerate(replicas))
            )
        assert sum(done) == len(ids)
        assert all(count > 0 for count in done)  # both worked
        assert set(slow.most_at_once.values()) == {1}
        for call_id in ids:
            call = await env.call(call_id)
            assert call["recording"]["status"] == "archived"
            assert env.fetches(call) == [200]


# --- retention and backfill ---------------------------------------------------------------


async def test_retention_deletes_old_audio_and_the_call_keeps_the_fact(
    any_store: Settings, tmp_path: Path, moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = any_store
    async with archiving(settings) as env:
        old = [await env.completed_call(), await env.completed_call("+919052161120")]
        recent = await env.completed_call("+919052161111")
        await env.run_due()
        async with env.archive.sessionmaker() as session, session.begin():
            now = await db_now(session)
            await session.execute(
                update(Call)
                .where(Call.id.in_([uuid.UUID(call_id) for call_id in old]))
                .values(recording_archived_at=now - timedelta(days=31))
            )
        recordings = RecordingStore.from_settings(settings.recordings)
        # A batch a recording: the first ends among recordings archived at one time, and the
        # next takes the rest.
        monkeypatch.setattr(retention, "_BATCH", 1)
        assert await forget_old_recordings(env.archive.sessionmaker, recordings, days=30) == 2

        for call_id in old:
            gone = await env.call(call_id)
            assert gone["recording"]["status"] == "deleted"
            assert gone["recording"]["deleted_at"] is not None
            assert gone["recording"]["sha256"]  # what was known of the bytes stays
            answer = await env.api.get(f"/calls/{call_id}/recording")
            assert answer.status_code == 404
            assert "deleted" in answer.json()["error"]["message"]
            events = await env.feed(call_id)
            assert events[-1]["type"] == "call.updated"
        assert (await env.api.get(f"/calls/{recent}/recording")).status_code == 200
        assert (await env.call(recent))["recording"]["status"] == "archived"
        assert await forget_old_recordings(env.archive.sessionmaker, recordings, days=30) == 0
    assert stored_keys(settings, moto, tmp_path) == [recent]


async def test_backfill_queues_older_calls_that_have_a_recording_url(
    db_url: str, tmp_path: Path
) -> None:
    settings = local_settings(db_url, tmp_path)
    async with archiving(settings) as env:
        before, failed = await env.completed_call(), await env.completed_call("+919052161111")
        # `before` ended before the archive existed; `failed` was given up on.
        async with env.archive.sessionmaker() as session, session.begin():
            await session.execute(
                update(Call).where(Call.id == uuid.UUID(before)).values(recording_status=None)
            )
            await session.execute(
                update(Call).where(Call.id == uuid.UUID(failed)).values(recording_status="failed")
            )
            await session.execute(RecordingJob.__table__.delete())
        result = await backfill("2026-01-01", tmp_path, db_url)
        assert result.returncode == 0, result.stderr
        assert "queued 2 recordings" in result.stdout
        assert await env.queued() == 2
        await env.run_due()
        for call_id in (before, failed):
            assert (await env.call(call_id))["recording"]["status"] == "archived"
        assert "queued 0 recordings" in (await backfill("2026-01-01", tmp_path, db_url)).stdout


async def backfill(since: str, cwd: Path, database_url: str) -> subprocess.CompletedProcess[str]:
    """`exocall recordings backfill --since`, as a user runs it."""
    argv = [EXOCALL, "recordings", "backfill", "--since", since]
    env = {k: v for k, v in os.environ.items() if not k.startswith(STRAY_ENV)}
    return await asyncio.to_thread(
        subprocess.run,
        argv,
        env=env | {"DATABASE_URL": database_url},
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
