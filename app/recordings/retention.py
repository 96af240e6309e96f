"""Archived audio is deleted after RECORDING_RETENTION_DAYS; the call keeps the fact (`deleted`,
`deleted_at`) and what was known of the bytes (size, type, SHA-256)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.calls.state import RecordingUpdate, apply_recording
from app.calls.store import CallStore
from app.db.batches import in_batches, oldest
from app.db.clock import db_now
from app.db.models import Call, RecordingStatus
from app.db.statements import written_in
from app.recordings.store import RecordingStore

log = logging.getLogger(__name__)

_BATCH = 100  # recordings deleted per transaction


async def forget_old_recordings(
    sessionmaker: async_sessionmaker[AsyncSession], store: RecordingStore, *, days: float
) -> int:
    """Delete the audio archived more than `days` ago; says how many. The store's copy goes
    first: a run cut short in between deletes it again (a no-op) the next time."""

    async def batch(session: AsyncSession, since: datetime | None) -> list[datetime]:
        before = await db_now(session) - timedelta(days=days)
        archived = select(Call.id, Call.recording_archived_at).where(
            # Written in: the partial index of archived recordings is this.
            written_in(Call.recording_status, RecordingStatus.ARCHIVED.value)
        )
        read = oldest(archived, Call.recording_archived_at, before=before, since=since)
        rows = (await session.execute(read.limit(_BATCH))).all()
        old = [call_id for call_id, _ in rows]
        for call_id in old:
            await store.delete(call_id)
        calls = await CallStore.of(session)
        await calls.lock(ids=old)
        now = await calls.now()
        for call_id in old:
            call = calls.get(call_id)
            assert call is not None
            apply_recording(call, RecordingUpdate(RecordingStatus.DELETED, now))
        await calls.flush()
        return [archived_at for _, archived_at in rows if archived_at]  # all: `< before`

    forgotten = await in_batches(sessionmaker, batch, size=_BATCH)
    if forgotten:
        log.info("deleted %d recordings archived over %g days ago", forgotten, days)
    return forgotten
