"""What the running service is made of, built once by the lifespan; routes ask `app.api.deps`
for the part they need."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.calls.dispatch import Dispatch
from app.calls.ingest import CallbackWriter
from app.calls.spool import Spool
from app.events.targets import TargetPolicy
from app.metrics import Metrics
from app.recordings.store import RecordingStore


@dataclass(frozen=True)
class Runtime:
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    dispatch: Dispatch
    spool: Spool
    callbacks: CallbackWriter
    metrics: Metrics
    targets: TargetPolicy  # where webhook endpoints may be
    recordings: RecordingStore
