"""`/webhook-endpoints`: where events are pushed, their secrets, health and attempts."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status

from app.api.deps import SessionDep, SettingsDep, require_api_key, require_json, runtime_of
from app.api.errors import refusals
from app.api.event_schemas import (
    ENDPOINT_EXAMPLE,
    AttemptOut,
    AttemptPage,
    EndpointChange,
    EndpointCreate,
    EndpointOut,
    EndpointWithSecret,
    Queued,
    Recover,
)
from app.api.schemas import WHOLE_NUMBER
from app.calls import cursors
from app.calls.errors import InvalidField
from app.db.models import WebhookEndpoint
from app.events import endpoints
from app.events.targets import TargetPolicy

router = APIRouter(
    prefix="/webhook-endpoints", tags=["webhooks"], dependencies=[Depends(require_api_key)]
)


async def _targets(request: Request) -> TargetPolicy:
    return runtime_of(request).targets


TargetsDep = Annotated[TargetPolicy, Depends(_targets)]


async def _backlog(session: SessionDep, endpoint_id: uuid.UUID) -> int:
    owed = await endpoints.backlogs(session, of=endpoint_id)
    return owed.get(endpoint_id, endpoints.Backlog()).count


def _with_secret(endpoint: WebhookEndpoint, *, backlog: int) -> EndpointWithSecret:
    shown = EndpointOut.of(endpoint, backlog=backlog)
    return EndpointWithSecret(**shown.model_dump(), secret=endpoint.secret)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(require_json)],
    summary="Register an endpoint: events are pushed to it, signed with its secret",
    description="The URL must be at a target WEBHOOK_ALLOWED_TARGETS allows.",
    responses=refusals(400, 401, 413, 415, 422),
)
async def create(
    body: EndpointCreate, session: SessionDep, targets: TargetsDep
) -> EndpointWithSecret:
    endpoint = await endpoints.create_endpoint(
        session,
        url=str(body.url),
        event_types=body.event_types,
        description=body.description,
        policy=targets,
    )
    return _with_secret(endpoint, backlog=0)


@router.get(
    "",
    summary="Every endpoint, with its health",
    responses={
        200: {"content": {"application/json": {"example": [ENDPOINT_EXAMPLE]}}},
        **refusals(401),
    },
)
async def list_all(session: SessionDep) -> list[EndpointOut]:
    owed = await endpoints.backlogs(session)
    return [
        EndpointOut.of(endpoint, backlog=owed.get(endpoint.id, endpoints.Backlog()).count)
        for endpoint in await endpoints.list_endpoints(session)
    ]


@router.get("/{endpoint_id}", summary="One endpoint", responses=refusals(401, 404, 422))
async def get(endpoint_id: uuid.UUID, session: SessionDep) -> EndpointOut:
    endpoint = await endpoints.get_endpoint(session, endpoint_id)
    return EndpointOut.of(endpoint, backlog=await _backlog(session, endpoint_id))


@router.patch(
    "/{endpoint_id}",
    dependencies=[Depends(require_json)],
    summary="Change an endpoint's URL, event types, description, or whether it is enabled",
    responses=refusals(400, 401, 404, 413, 415, 422),
)
async def change(
    endpoint_id: uuid.UUID, body: EndpointChange, session: SessionDep, targets: TargetsDep
) -> EndpointOut:
    changes = body.model_dump(exclude_unset=True)
    for name in ("url", "enabled"):
        if name in changes and changes[name] is None:
            raise InvalidField(name, "may not be null")
    if "url" in changes:
        changes["url"] = str(body.url)
    endpoint = await endpoints.change_endpoint(
        session, endpoint_id, changes=changes, policy=targets
    )
    return EndpointOut.of(endpoint, backlog=await _backlog(session, endpoint_id))


@router.delete(
    "/{endpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove an endpoint, with what it is owed",
    responses=refusals(401, 404, 422),
)
async def delete(endpoint_id: uuid.UUID, session: SessionDep) -> Response:
    await endpoints.delete_endpoint(session, endpoint_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{endpoint_id}/rotate-secret",
    summary="A new secret; the old one signs beside it for WEBHOOK_SECRET_OVERLAP_SECONDS",
    responses=refusals(401, 404, 422),
)
async def rotate_secret(
    endpoint_id: uuid.UUID, session: SessionDep, settings: SettingsDep
) -> EndpointWithSecret:
    endpoint = await endpoints.rotate_secret(
        session, endpoint_id, overlap=settings.webhooks.secret_overlap_seconds
    )
    return _with_secret(endpoint, backlog=await _backlog(session, endpoint_id))


@router.get(
    "/{endpoint_id}/attempts",
    summary="The endpoint's delivery attempts, newest first",
    responses=refusals(401, 404, 422),
)
async def attempts(
    endpoint_id: uuid.UUID,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200), WHOLE_NUMBER] = 50,
    cursor: str | None = None,
) -> AttemptPage:
    before = None
    if cursor:
        (before,) = cursors.decode_row_ids(cursor, field="cursor", length=1)
    rows = await endpoints.list_attempts(session, endpoint_id, before=before, limit=limit + 1)
    items = [AttemptOut.of(attempt, event_id) for attempt, event_id in rows[:limit]]
    next_cursor = cursors.encode([items[-1].id]) if len(rows) > limit else None
    return AttemptPage(items=items, next_cursor=next_cursor)


@router.post(
    "/{endpoint_id}/recover",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(require_json)],
    summary="Send again every event since a time that the endpoint has not received",
    description=f"Oldest first, at most {endpoints.RECOVER_LIMIT}.",
    responses=refusals(400, 401, 404, 413, 415, 422),
)
async def recover(endpoint_id: uuid.UUID, body: Recover, session: SessionDep) -> Queued:
    queued = await endpoints.recover(session, endpoint_id, since=body.since)
    return Queued(queued=queued)
