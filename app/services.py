"""What the running service is made of, built once in the lifespan and shared by requests."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.calls.dispatcher import Dispatcher
from app.calls.ingest import CallbackWriter
from app.calls.spool import Spool
from app.config import Settings
from app.exotel.client import ExotelClient
from app.metrics import Metrics


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    exotel: ExotelClient
    dispatcher: Dispatcher
    spool: Spool
    callbacks: CallbackWriter
    metrics: Metrics
    schema_head: str  # the newest migration, for /readyz
