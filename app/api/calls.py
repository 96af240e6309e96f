"""`/calls`: place a call, look calls up, read their callbacks."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, Query, Response, status
from fastapi.openapi.models import Example

from app.api.deps import DispatchDep, SessionDep, SettingsDep, require_api_key, require_json
from app.api.errors import refusals
from app.api.schemas import (
    NO_NUL,
    PLACE_EXAMPLE,
    QUEUED_EXAMPLE,
    WHOLE_NUMBER,
    BatchCreate,
    BatchOut,
    BatchSummary,
    CallCreate,
    CallPage,
    EventOut,
    IdempotencyKey,
    Instant,
)
from app.calls import queries
from app.calls.errors import CallNotPlaced, InvalidField
from app.calls.phone import InvalidPhoneNumber, to_e164
from app.calls.placing import cancel, create_batch, queue_calls
from app.calls.resource import CallOut
from app.db.models import CallStatus
from app.db.session import after_commit
from app.logs import about

log = logging.getLogger(__name__)

router = APIRouter(prefix="/calls", tags=["calls"], dependencies=[Depends(require_api_key)])

_PLACE_EXAMPLES: dict[str, Example] = {
    "app": {"summary": "A flow by its app id", "value": PLACE_EXAMPLE},
    "flow_url": {
        "summary": "A flow by its URL, the number as customers write it",
        "value": {
            "from": "090521 61119",
            "flow_url": "http://my.exotel.com/acme1/exoml/start_voice/926",
        },
    },
}


@router.post(
    "",
    dependencies=[Depends(require_json)],
    status_code=status.HTTP_201_CREATED,
    summary="Phone a customer and connect them to an Exotel flow",
    response_description="Exotel accepted the call: its SID is known",
    responses={
        202: {
            "model": CallOut,
            "description": "Queued (the account's rate, or `wait=false`), or not yet known to be "
            "placed (`unknown`)",
            "content": {"application/json": {"example": QUEUED_EXAMPLE}},
        },
        **refusals(400, 401, 409, 413, 415, 422, 502, 503),
    },
)
async def place_call(
    body: Annotated[CallCreate, Body(openapi_examples=_PLACE_EXAMPLES)],
    session: SessionDep,
    settings: SettingsDep,
    dispatch: DispatchDep,
    response: Response,
    idempotency_key: Annotated[
        IdempotencyKey | None,
        Header(description="One call per key: a repeat returns the stored call, never dials."),
    ] = None,
    wait: Annotated[
        bool, Query(description="Wait (boundedly) for Exotel's answer; false answers 202 at once.")
    ] = True,
) -> CallOut:
    ((call, created),) = await queue_calls(
        session,
        requests=[body.to_request(idempotency_key)],
        settings=settings.exotel,
        window=settings.dispatch.calling_window,
    )
    # The one early commit: the row is durable before Exotel is asked, so no call goes
    # unaccounted for.
    await session.commit()
    dispatch.wake()
    if wait and call.status == CallStatus.QUEUED:
        try:
            sent = await dispatch.wait_until_sent(call.id, within=settings.dispatch.wait_seconds)
        except Exception:
            # The call is placed and goes on: never answer as if it had not been, or a client
            # retrying the failure would phone the customer twice.
            log.warning(
                "call %s: queued, but waiting for its dispatch failed",
                call.id,
                exc_info=True,
                extra=about(call.id),
            )
            sent = None
        call = sent or call
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    if call.status == CallStatus.REJECTED:
        raise CallNotPlaced(call)
    if call.sid is None:
        response.status_code = status.HTTP_202_ACCEPTED
    return CallOut.of(call)


@router.post(
    "/batch",
    dependencies=[Depends(require_json)],
    status_code=status.HTTP_202_ACCEPTED,
    summary="Queue up to 1000 calls at once",
    responses=refusals(400, 401, 409, 413, 415, 422),
    description=(
        "Every call is validated first; any invalid one refuses the whole batch, naming it "
        "(`calls.3.from`). The calls are queued in one transaction and dispatched at the "
        "account's rate."
    ),
)
async def place_batch(
    body: BatchCreate, session: SessionDep, settings: SettingsDep, dispatch: DispatchDep
) -> BatchOut:
    requests = [item.to_request(item.idempotency_key) for item in body.calls]
    batch, calls = await create_batch(
        session,
        requests=requests,
        settings=settings.exotel,
        window=settings.dispatch.calling_window,
    )
    after_commit(session, dispatch.wake)
    return BatchOut(id=batch.id, size=batch.size, calls=[CallOut.of(call) for call, _ in calls])


@router.get("", summary="List calls, newest first", responses=refusals(401, 422))
async def list_calls(
    session: SessionDep,
    status_: Annotated[list[CallStatus], Query(alias="status")] = [],  # noqa: B006
    from_: Annotated[str | None, Query(alias="from", description="Any form of the number")] = None,
    created_after: Instant | None = None,
    created_before: Instant | None = None,
    batch_id: uuid.UUID | None = None,
    digits: Annotated[
        str | None,
        Query(
            max_length=64,
            pattern=NO_NUL,
            description='The latest input keyed in the flow (`""`: none)',
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200), WHOLE_NUMBER] = 50,
    cursor: str | None = None,
) -> CallPage:
    try:
        from_number = to_e164(from_) if from_ else None
    except InvalidPhoneNumber as exc:
        raise InvalidField("from", str(exc)) from None
    calls, next_cursor = await queries.list_calls(
        session,
        statuses=status_,
        from_number=from_number,
        created_after=created_after,
        created_before=created_before,
        batch_id=batch_id,
        digits=digits,
        limit=limit,
        cursor=cursor,
    )
    return CallPage(items=[CallOut.of(call) for call in calls], next_cursor=next_cursor)


@router.get(
    "/{ref}", summary="One call, by our id or Exotel's SID", responses=refusals(401, 404, 422)
)
async def get_call(ref: str, session: SessionDep) -> CallOut:
    return CallOut.of(await queries.find_call(session, ref))


@router.post(
    "/{ref}/cancel",
    summary="Make no attempt of the call after now",
    responses=refusals(401, 404, 409, 422),
    description=(
        "A call waiting (queued or scheduled) ends `canceled` at once. One with an attempt "
        "under way ends with that attempt's outcome, and no attempt follows it. A call that "
        "has ended answers 409."
    ),
)
async def cancel_call(ref: str, session: SessionDep) -> CallOut:
    return CallOut.of(await cancel(session, await queries.find_call(session, ref)))


@router.get(
    "/{ref}/events",
    summary="Everything received about a call, oldest first: callbacks, Passthru requests, "
    "Exotel's answers",
    responses=refusals(401, 404, 422),
)
async def list_call_events(ref: str, session: SessionDep) -> list[EventOut]:
    call = await queries.find_call(session, ref)
    return [
        EventOut.model_validate(event)
        for event in await queries.list_events(session, call_id=call.id)
    ]


batches = APIRouter(prefix="/batches", tags=["calls"], dependencies=[Depends(require_api_key)])


@batches.get(
    "/{batch_id}", summary="A batch's calls, counted by status", responses=refusals(401, 404, 422)
)
async def get_batch(batch_id: uuid.UUID, session: SessionDep) -> BatchSummary:
    figures = await queries.batch_summary(session, batch_id)
    batch = figures.batch
    return BatchSummary(
        id=batch.id,
        size=batch.size,
        created_at=batch.created_at,
        counts=figures.counts,
        price=figures.price,
    )
