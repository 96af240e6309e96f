"""For orchestrators and monitoring: `/healthz` (alive), `/readyz` (can serve) and `/metrics`."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.deps import EngineDep, MetricsDep, SessionDep, require_metrics_access
from app.api.errors import database_unavailable, refusals, schema_not_current
from app.calls.dispatch import Dispatch
from app.calls.queries import Overview, overview
from app.db.clock import db_now
from app.db.migrate import head_revision
from app.db.models import Periodic
from app.db.session import is_database_down, is_schema_behind
from app.events import endpoints
from app.events.deliverer import Delivering
from app.jobs.periodic import queue_of
from app.jobs.worker import Backlog, backlogs
from app.metrics import CONTENT_TYPE, Gauges
from app.recordings.archive import Archive
from app.recordings.status import archive_status

log = logging.getLogger(__name__)

# Every kind's queue, whichever this replica works: every replica answers the same.
_QUEUES = {kind.name: kind.queue for kind in (Dispatch, Delivering, Archive)}

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    summary="The process is alive",
    responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


class Ready(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "ready", "schema": "d3e5f7a9b1c2"}]}
    )

    status: str = "ready"
    schema_revision: str = Field(alias="schema")


@router.get(
    "/readyz",
    summary="The database is reachable and its schema is current",
    response_model=Ready,
    responses=refusals(503),
)
async def readyz(engine: EngineDep) -> JSONResponse:
    try:
        async with engine.connect() as connection:
            revision = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    except Exception as exc:
        if is_schema_behind(exc):  # no alembic_version: never migrated
            return schema_not_current("the database has no schema: run `exocall migrate`")
        if not is_database_down(exc) and not isinstance(exc, SQLAlchemyError):
            raise
        return database_unavailable(exc)
    if revision != head_revision():
        return schema_not_current(
            f"database schema is at {revision}, this code needs {head_revision()}: "
            "run `exocall migrate`"
        )
    return JSONResponse({"status": "ready", "schema": revision})


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format)",
    description=(
        "This process's counts (callbacks by outcome, Exotel requests by status and latency, "
        "time spent waiting for the rate limit, reconciliation's repairs, webhook deliveries by "
        "outcome, the recording archive's work by outcome, the workers finding the database "
        "unreachable) and, read from the database at each scrape, calls by status, the queue, "
        "each webhook endpoint's backlog, and the recordings by status, their backlog and the "
        "archive's pause. Needs an API key unless `METRICS_PUBLIC` is set."
    ),
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}}, **refusals(401)},
    dependencies=[Depends(require_metrics_access)],
)
async def metrics(session: SessionDep, counters: MetricsDep) -> Response:
    shared: Overview | None = None
    try:
        read = await overview(session)
        owed = await endpoints.backlogs(session)
        archive = await archive_status(session)
        jobs = await _backlogs(session)
        now = await db_now(session)
        shared = read  # only once everything was read: the database may go mid-way
    except Exception as exc:
        if not is_database_down(exc):
            raise
        log.warning("metrics: the database is unreachable; serving this process's counts only")
    gauges = None
    if shared is not None:
        gauges = Gauges(
            calls_by_status=shared.calls_by_status,
            jobs=jobs,
            webhook_backlog={
                str(endpoint_id): (
                    backlog.count,
                    (now - backlog.oldest).total_seconds() if backlog.oldest else 0.0,
                )
                for endpoint_id, backlog in owed.items()
            },
            recordings_by_status=archive.by_status,
            recordings_paused=archive.paused_until is not None,
        )
    return Response(counters.render(gauges), media_type=CONTENT_TYPE)


async def _backlogs(session: AsyncSession) -> dict[str, Backlog]:
    """Where each kind of work stands: the queues', and each periodic job's."""
    periodic = {name: queue_of(name) for name in await session.scalars(select(Periodic.name))}
    return await backlogs(session, _QUEUES | periodic)
