"""The archive: each call's recording fetched from Exotel and stored, queued in `recording_job`.

A call that ends with a `RecordingUrl` gets a `pending` recording and a job in the one write path
(`app.calls.state.apply_update`, `app.calls.store`). Every replica works the queue: it claims
due jobs with SKIP LOCKED, so no recording is fetched by two at once, and no transaction is open
while one is fetched or stored. What came of it goes back through the one write path
(`apply_recording`); a recording leaving `pending` leaves the queue, and a final one is a
`call.updated` event.

Failures by kind (docs/exotel.md: recordings need the API credentials since October 2024;
their URLs last 5 to 60 minutes):
- 404 or 410: Exotel's copy is gone, `expired`, at once;
- 401 or 403: the credentials are wrong, or the URL's signature has expired (RecordingUrlValidity:
  a backlog older than that, a pause, a backfill). Call details, asked with the same credentials,
  tell which: refused too, the credentials are wrong, and the whole archive pauses (no retries
  burnt) for RECORDING_AUTH_PAUSE_SECONDS, then one recording tries again; answered, their
  `RecordingUrl` (signed afresh) is fetched at once, and kept; answered with the same URL, it is
  this recording's own refusal, tried again with backoff;
- 429, 5xx, no connection, a timeout, a body cut short: tried again with backoff, up to
  RECORDING_MAX_ATTEMPTS fetches since it was queued (a backfill queues a failed one afresh),
  then `failed`; any other refusal is `failed` at once;
- the store down: the fetched bytes wait on this replica's disk and the store is tried again
  with backoff, without fetching again, for as long as it takes.

Fetching recordings is not charged to the account's 200-a-minute budget: Exotel counts
placing calls and look-ups against it, and a recording is served from storage
(`s3-ap-southeast-1.amazonaws.com`), not the API. RECORDING_CONCURRENCY bounds the fetches. A
look-up after a refusal is an API request: it is drawn from the budget, at the look-ups'
priority (below placing calls).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.calls import ratelimit
from app.calls.state import RecordingUpdate, apply_recording
from app.calls.store import CallStore
from app.config import RecordingSettings
from app.db.clock import db_now
from app.db.models import Call, RecordingJob, RecordingStatus, Throttle
from app.db.statements import table_of
from app.exotel.client import ExotelClient, FetchedRecording
from app.exotel.errors import ExotelError, ExotelRejected
from app.jobs.policy import RetryPolicy
from app.jobs.runner import Kind
from app.jobs.worker import Queue
from app.logs import about
from app.metrics import Metrics
from app.recordings.status import archive_pause
from app.recordings.store import RecordingStore, StoreUnavailable

log = logging.getLogger(__name__)

_GONE = (404, 410)
_REFUSED = (401, 403)
# 5 s, 10 s, 20 s, ... at most 10 minutes between fetches: a recording URL lasts 5 to 60
# minutes, and RECORDING_MAX_ATTEMPTS (8) fetches span about 21 of them.
_LONGEST_WAIT = 600.0
_JOBS = table_of(RecordingJob).c


@dataclass(frozen=True)
class Claimed:
    call_id: uuid.UUID
    sid: str | None
    url: str
    held_path: str | None  # the bytes fetched before, if a store was down then
    fetched: FetchedRecording | None  # their facts, as recorded then
    retries: int
    fetches: int
    worker: str
    claimed_at: datetime


class Archive(Kind[Claimed, "Outcome"]):
    """The archive as a kind of job: a claim is a `recording_job`'s, and a claim lost (its
    worker died or stopped mid-fetch) is due again at once."""

    name = "archive"
    queue = Queue(key=_JOBS.call_id, claimed_by=_JOBS.claimed_by, due=_JOBS.due_at)

    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        exotel: ExotelClient,
        store: RecordingStore,
        settings: RecordingSettings,
        budget: ratelimit.Budget,
        held_dir: Path,
        metrics: Metrics,
    ) -> None:
        self.concurrency = settings.concurrency
        self.sessionmaker = sessionmaker
        self.exotel = exotel
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.budget = budget  # a look-up after a refusal draws on it
        self.held_dir = held_dir  # recordings fetched, waiting for the store
        self._retries = RetryPolicy.doubling(
            5, _LONGEST_WAIT, max_attempts=settings.max_attempts
        )

    async def claim(self, session: AsyncSession, *, worker: str, limit: int) -> list[Claimed]:
        """Up to `limit` due jobs: none while the archive is paused, and one only (a probe)
        while the pause's reason stands after it ended."""
        now = await db_now(session)
        paused_until, reason = await archive_pause(session)
        if paused_until is not None and paused_until > now:
            return []
        job, call = RecordingJob, Call
        due = (
            select(
                job,
                call.sid,
                call.recording_url,
                call.recording_size,
                call.recording_content_type,
                call.recording_sha256,
            )
            .join(call, call.id == job.call_id)
            .where(job.due_at <= now, job.claimed_at.is_(None))
            .order_by(job.due_at)
            .limit(1 if reason else limit)
            .with_for_update(skip_locked=True, of=job)
        )
        claimed = []
        for row, sid, url, size, content_type, sha256 in (await session.execute(due)).all():
            row.claimed_by, row.claimed_at = worker, now
            fetched = None
            if size is not None and content_type is not None and sha256 is not None:
                fetched = FetchedRecording(size, content_type, sha256)
            claimed.append(
                Claimed(
                    row.call_id,
                    sid,
                    url or "",
                    row.held_path,
                    fetched,
                    row.retries,
                    row.fetches,
                    worker,
                    now,
                )
            )
        return claimed

    def key(self, job: Claimed) -> uuid.UUID:
        return job.call_id

    async def lost(self, session: AsyncSession, keys: Sequence[uuid.UUID]) -> None:
        await session.execute(
            update(RecordingJob)
            .where(RecordingJob.call_id.in_(keys))
            .values(claimed_by=None, claimed_at=None, due_at=await db_now(session))
        )

    async def run(self, job: Claimed) -> Outcome:
        """Fetch (unless held already) and store one claimed recording. A failure of our own
        (the spool's disk full, say) is tried again with backoff, with no fetch counted."""
        try:
            return await self._archive(job)
        except Exception as exc:
            log.exception("recording of call %s: archiving failed", job.call_id)
            return _refused_alone(f"archiving failed: {type(exc).__name__}: {exc}", fetched=False)

    async def record(self, session: AsyncSession, done: Sequence[tuple[Claimed, Outcome]]) -> None:
        # The calls in one order, as every writer locks them.
        await (await CallStore.of(session)).lock(ids=sorted(job.call_id for job, _ in done))
        for job, outcome in done:
            await self._conclude(session, job, outcome)

    async def _archive(self, job: Claimed) -> Outcome:
        held = Path(job.held_path) if job.held_path else self.held_dir / str(job.call_id)
        held_here = job.held_path is not None and await asyncio.to_thread(held.is_file)
        fetched = job.fetched if held_here else None
        fetched_now = fetched is None
        fresh_url = None
        if fetched is None:
            got = await self._fetch_job(job, held)
            if isinstance(got, Outcome):
                return got
            fetched, fresh_url = got
        try:
            await self.store.put(job.call_id, held, content_type=fetched.content_type)
        except StoreUnavailable as exc:
            # The bytes stay where they are: the store is tried again, Exotel is not.
            error = f"the store is unavailable: {exc}"
            return Outcome(
                RecordingStatus.PENDING,
                "store_down",
                error,
                fetched,
                fetched_now,
                held=held,
                url=fresh_url,
            )
        await asyncio.to_thread(held.unlink, missing_ok=True)
        return Outcome(
            RecordingStatus.ARCHIVED, "archived", None, fetched, fetched_now, url=fresh_url
        )

    async def _fetch_job(
        self, job: Claimed, held: Path
    ) -> tuple[FetchedRecording, str | None] | Outcome:
        """The recording fetched into `held`, with its URL from call details if the one we had
        was refused; or what the failure means."""
        try:
            return await self._fetch(job.url, held), None
        except (ExotelError, ValueError) as exc:
            refused = failed_fetch(exc)
        if not refused.pause:
            return refused
        return await self._fetch_afresh(job, held, refused)

    async def _fetch_afresh(
        self, job: Claimed, held: Path, refused: Outcome
    ) -> tuple[FetchedRecording, str] | Outcome:
        """The recording's URL was refused: the credentials are wrong, or its signature has
        expired. Call details, asked with the same credentials, tell which, and give its URL
        signed afresh."""
        if job.sid is None:  # nothing to look up
            return refused
        wait = await ratelimit.acquire_lookup(self.sessionmaker, self.budget)
        if wait > 0:
            error = f"{refused.error}; its call details wait for the account's budget"
            return Outcome(RecordingStatus.PENDING, "retried", error, attempted=False)
        try:
            details = await self.exotel.get_call(job.sid)
        except ExotelRejected as exc:
            if exc.status in _REFUSED:
                return refused  # the API refuses the credentials too
            return _refused_alone(f"{refused.error}; its call details: {exc}")
        except ExotelError as exc:
            return _refused_alone(f"{refused.error}; its call details: {exc}")
        url = details.recording_url if details else None
        if not url:
            error = f"{refused.error}; Exotel's call details have no recording"
            return Outcome(RecordingStatus.EXPIRED, "expired", error)
        if url == job.url:
            return _refused_alone(f"{refused.error}, which its call details took")
        log.info(
            "recording of call %s: its URL was refused; fetching it as call details gave it",
            job.call_id,
            extra=about(job.call_id),
        )
        try:
            return await self._fetch(url, held), url
        except (ExotelError, ValueError) as exc:
            again = failed_fetch(exc)
        if again.pause:
            again = _refused_alone(f"{again.error}, which its call details took")
        return replace(again, url=url)

    async def _fetch(self, url: str, held: Path) -> FetchedRecording:
        held.parent.mkdir(parents=True, exist_ok=True)
        part = held.with_suffix(".part")
        try:
            with part.open("wb") as into:
                fetched = await self.exotel.fetch_recording(url, into)
            part.replace(held)  # whole, or not there at all
        finally:
            part.unlink(missing_ok=True)
        return fetched

    async def _conclude(self, session: AsyncSession, job: Claimed, outcome: Outcome) -> None:
        """Record what came of a job, through the one write path: a recording that leaves
        `pending` leaves the queue; one that stays is due again. Only while the job is still
        this claim's: one taken for lost meanwhile is another worker's to record."""
        held = await session.scalar(
            select(RecordingJob.call_id)
            .where(
                RecordingJob.call_id == job.call_id,
                RecordingJob.claimed_by == job.worker,
                RecordingJob.claimed_at == job.claimed_at,
            )
            .with_for_update()
        )
        if held is None:
            log.warning(
                "recording of call %s: its claim was taken for lost; not recorded here",
                job.call_id,
                extra=about(job.call_id),
            )
            return
        pause_until = None
        if outcome.pause:
            now = await ratelimit.lock(session)
            pause_until = now + timedelta(seconds=self.settings.auth_pause_seconds)
            await session.execute(
                _pause.values(
                    recordings_paused_until=pause_until, recordings_paused_reason=outcome.error
                )
            )
        elif outcome.status == RecordingStatus.ARCHIVED:
            await session.execute(
                _pause.where(Throttle.recordings_paused_reason.is_not(None)).values(
                    recordings_paused_until=None, recordings_paused_reason=None
                )
            )
        store = await CallStore.of(session)
        await store.lock(ids=[job.call_id])
        call = store.get(job.call_id)
        assert call is not None, "a job is deleted with its call"
        now = await store.now()
        status = outcome.status
        if outcome.retry and self._retries.gives_up(job.fetches + 1):
            status = RecordingStatus.FAILED  # the last fetch allowed
        fetched = outcome.fetched
        apply_recording(
            call,
            RecordingUpdate(
                status,
                now,
                attempted=outcome.attempted,
                error=outcome.error,
                size=fetched.size if fetched else None,
                content_type=fetched.content_type if fetched else None,
                sha256=fetched.sha256 if fetched else None,
                url=outcome.url,
            ),
        )
        await store.flush()
        if status == RecordingStatus.PENDING:
            await session.execute(
                update(RecordingJob)
                .where(
                    RecordingJob.call_id == job.call_id,
                    RecordingJob.claimed_by == job.worker,
                )
                .values(
                    due_at=pause_until
                    or now + timedelta(seconds=self._retries.delay(job.retries + 1)),
                    retries=RecordingJob.retries + 1,
                    fetches=RecordingJob.fetches + int(outcome.attempted),
                    claimed_by=None,
                    claimed_at=None,
                    held_path=str(outcome.held) if outcome.held else None,
                )
            )
        metric = "failed" if status == RecordingStatus.FAILED else outcome.metric
        self.metrics.recording_fetches.labels(metric).inc()
        if outcome.pause:
            log.error(
                "%s: the archive fetches nothing until %s; check EXOTEL_API_KEY and "
                "EXOTEL_API_TOKEN",
                outcome.error,
                pause_until.isoformat() if pause_until else "",
                extra=about(job.call_id),
            )
        elif status == RecordingStatus.ARCHIVED:
            log.info("recording of call %s archived", job.call_id, extra=about(job.call_id))
        else:
            log.warning(
                "recording of call %s %s: %s",
                job.call_id,
                "will be tried again" if status == RecordingStatus.PENDING else status,
                outcome.error,
                extra=about(job.call_id),
            )


@dataclass(frozen=True)
class Outcome:
    """What came of one job, before it is recorded."""

    status: RecordingStatus  # PENDING: to be tried again
    metric: str  # exocall_recording_fetches' outcome
    error: str | None
    fetched: FetchedRecording | None = None  # the bytes' facts, when they were fetched
    attempted: bool = True  # Exotel was asked (a fetch)
    held: Path | None = None  # where the bytes wait for the store
    retry: bool = False  # a fetch that failed but may work later: `failed` after the last
    pause: bool = False  # the credentials were refused: every replica waits
    url: str | None = None  # the recording's URL from call details, the old one refused


def failed_fetch(exc: ExotelError | ValueError) -> Outcome:
    """What a failed fetch means, by kind."""
    if isinstance(exc, ValueError):  # never sent: the URL is not one to send credentials to
        return Outcome(RecordingStatus.FAILED, "failed", f"not fetched: {exc}", attempted=False)
    status = exc.status if isinstance(exc, ExotelRejected) else None
    if status in _GONE:
        return Outcome(RecordingStatus.EXPIRED, "expired", f"Exotel answered {status}")
    if status in _REFUSED:
        error = f"Exotel refused the credentials for a recording ({status})"
        # Not the recording's fault: no attempt of its own is spent.
        return Outcome(RecordingStatus.PENDING, "refused", error, attempted=False, pause=True)
    if status is not None and status < 500 and status != 429:
        return Outcome(RecordingStatus.FAILED, "failed", f"Exotel answered {status}")
    return Outcome(RecordingStatus.PENDING, "retried", str(exc), retry=True)


def _refused_alone(error: str, *, fetched: bool = True) -> Outcome:
    """A recording refused though the API takes the credentials (or could not say): this one
    recording's failure, tried again with backoff, and no reason to pause the rest; `fetched`
    False, a failure of ours, with no fetch counted against the recording."""
    return Outcome(RecordingStatus.PENDING, "retried", error, attempted=fetched, retry=fetched)


_pause = update(Throttle).where(Throttle.name == ratelimit.THROTTLE)
