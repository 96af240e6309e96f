"""`exocall recordings backfill --since`: queue for the archive the recordings of calls made
before it kept them (or that it gave up on), while their URLs may still be live."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.calls.state import TERMINAL, RecordingUpdate, apply_recording
from app.calls.store import CallStore
from app.db.models import Call, EventOutcome, RecordingStatus

_BATCH = 500


async def queue_recordings_since(
    sessionmaker: async_sessionmaker[AsyncSession], *, since: datetime
) -> int:
    """Queue the recording of every ended call created since `since` that has a recording URL
    and none archived, pending or expired; says how many were queued."""
    queued, after = 0, None
    while True:
        async with sessionmaker() as session, session.begin():
            wanted = (
                select(Call.id)
                .where(
                    Call.created_at >= since,
                    Call.status.in_(TERMINAL),
                    Call.recording_url.is_not(None),
                    Call.recording_url != "",
                    or_(
                        Call.recording_status.is_(None),
                        Call.recording_status == RecordingStatus.FAILED,
                    ),
                )
                .order_by(Call.id)
                .limit(_BATCH)
            )
            if after is not None:
                wanted = wanted.where(Call.id > after)
            ids = (await session.scalars(wanted)).all()
            store = await CallStore.of(session)
            await store.lock(ids=ids)
            now = await store.now()
            for call_id in ids:
                call = store.get(call_id)
                assert call is not None
                update = RecordingUpdate(RecordingStatus.PENDING, now)
                queued += apply_recording(call, update) == EventOutcome.APPLIED
            await store.flush()
        if len(ids) < _BATCH:
            return queued
        after = ids[-1]
