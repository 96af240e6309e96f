"""`/events`: the feed of every event, one event, and its redelivery."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query, Response, status

from app.api.deps import SessionDep, require_api_key
from app.api.errors import refusals
from app.api.event_schemas import (
    REDELIVER_EXAMPLE,
    EventOut,
    EventPage,
    EventType,
    Queued,
    Redeliver,
)
from app.api.schemas import NO_NUL, WHOLE_NUMBER
from app.events import endpoints, feed

JSON = "application/json"

router = APIRouter(prefix="/events", tags=["events"], dependencies=[Depends(require_api_key)])
# `evt_` and 32 hex digits; anything else no event has (a NUL, which no query can carry: 422).
EventId = Annotated[str, Path(max_length=40, pattern=NO_NUL, examples=["evt_" + "0" * 32])]


@router.get(
    "",
    summary="Every event, in a stable order, for consumers that pull",
    description="Follow it with `after=<next_cursor>`; `after=now` starts with what commits "
    "next. No event is ever skipped, whatever commits when.",
    response_model=EventPage,
    responses=refusals(401, 422),
)
async def list_events(
    session: SessionDep,
    after: str | None = None,
    type_: Annotated[list[EventType], Query(alias="type")] = [],  # noqa: B006
    call_id: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=1000), WHOLE_NUMBER] = 100,
) -> Response:
    page = await feed.read_feed(session, after=after, types=type_, call_id=call_id, limit=limit)
    # The events as stored, not serialised again: the bytes the webhooks signed.
    items = ",".join(page.items)
    return Response(f'{{"items":[{items}],"next_cursor":"{page.next_cursor}"}}', media_type=JSON)


@router.get(
    "/{event_id}",
    summary="One event",
    response_model=EventOut,
    responses=refusals(401, 404, 422),
)
async def get_event(event_id: EventId, session: SessionDep) -> Response:
    return Response((await feed.get_event(session, event_id)).body, media_type=JSON)


@router.post(
    "/{event_id}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send an event again, to one endpoint or to every one that takes it",
    responses=refusals(400, 401, 404, 422),
)
async def redeliver(
    event_id: EventId,
    session: SessionDep,
    body: Annotated[
        Redeliver,
        Body(
            default_factory=Redeliver,  # no body: every endpoint that takes it
            openapi_examples={
                "one": {"summary": "To one endpoint", "value": REDELIVER_EXAMPLE},
                "all": {"summary": "To every endpoint that takes it", "value": {}},
            },
        ),
    ],
) -> Queued:
    event = await feed.get_event(session, event_id)
    queued = await endpoints.redeliver(session, event, endpoint_id=body.endpoint_id)
    return Queued(queued=queued)
