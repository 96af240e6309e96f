"""Where the archive stands, for the metrics and the status page: recordings by status, the
backlog and its oldest, and the pause after Exotel refused the credentials."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.calls import ratelimit
from app.calls.counts import recordings_by_status
from app.db.clock import db_now
from app.db.models import RecordingJob, RecordingStatus, Throttle


@dataclass(frozen=True)
class ArchiveStatus:
    by_status: dict[str, int]  # every RecordingStatus, 0 for none
    backlog: int  # recordings queued (pending)
    oldest_due_age_seconds: float  # how long the longest-waiting one has been due (0: none)
    paused_until: datetime | None  # set while the credentials' refusal holds every fetch
    paused_reason: str | None


async def archive_pause(session: AsyncSession) -> tuple[datetime | None, str | None]:
    """Until when the archive is paused (Exotel refused the credentials), and why; the reason
    stands after the pause has ended, until a fetch succeeds."""
    pause = (
        await session.execute(
            select(Throttle.recordings_paused_until, Throttle.recordings_paused_reason).where(
                Throttle.name == ratelimit.THROTTLE
            )
        )
    ).one_or_none()
    return (pause.recordings_paused_until, pause.recordings_paused_reason) if pause else (None, None)


async def archive_status(session: AsyncSession) -> ArchiveStatus:
    now = await db_now(session)
    by_status = dict.fromkeys((s.value for s in RecordingStatus), 0)
    by_status.update(await recordings_by_status(session))
    backlog, oldest = (
        await session.execute(select(func.count(), func.min(RecordingJob.due_at)))
    ).one()
    paused_until, reason = await archive_pause(session)
    return ArchiveStatus(
        by_status=by_status,
        backlog=backlog,
        oldest_due_age_seconds=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        paused_until=paused_until if paused_until and paused_until > now else None,
        paused_reason=reason if paused_until and paused_until > now else None,
    )
