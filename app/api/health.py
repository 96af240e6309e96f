"""Health checks for orchestrators: `/healthz` (alive) and `/readyz` (can serve)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.api.deps import ServicesDep
from app.api.errors import error_response
from app.db.session import is_database_down

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


class Ready(BaseModel):
    status: str = "ready"
    schema_revision: str = Field(alias="schema")


@router.get(
    "/readyz",
    summary="The database is reachable and its schema is current",
    response_model=Ready,
)
async def readyz(services: ServicesDep) -> JSONResponse:
    try:
        async with services.engine.connect() as connection:
            revision = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    except Exception as exc:
        if not is_database_down(exc) and not isinstance(exc, SQLAlchemyError):
            raise
        return error_response(503, "database_unavailable", f"database: {type(exc).__name__}")
    if revision != services.schema_head:
        return error_response(
            503,
            "schema_not_current",
            f"database schema is at {revision}, this code needs {services.schema_head}: "
            "run `exocall migrate`",
        )
    return JSONResponse({"status": "ready", "schema": revision})
