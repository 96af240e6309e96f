"""`/calls`: place a call, look calls up, read their callbacks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from pydantic import AwareDatetime

from app.api.deps import ServicesDep, SessionDep
from app.calls import service
from app.calls.dispatch import dispatch_call
from app.calls.errors import CallNotPlaced, InvalidField
from app.calls.phone import InvalidPhoneNumber, to_e164
from app.calls.schemas import CallCreate, CallOut, CallPage, EventOut
from app.db.models import CallStatus

router = APIRouter(prefix="/calls", tags=["calls"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Phone a customer and connect them to an Exotel flow",
    responses={202: {"model": CallOut, "description": "Not yet known to be placed"}},
)
async def place_call(
    body: CallCreate, session: SessionDep, services: ServicesDep, response: Response
) -> CallOut:
    call = await service.create_call(session, request=body, settings=services.settings)
    # The row is durable before Exotel is asked to dial, so no call goes unaccounted for.
    await session.commit()
    call = await dispatch_call(
        sessionmaker=services.sessionmaker,
        exotel=services.exotel,
        settings=services.settings,
        call_id=call.id,
    )
    if call.status == CallStatus.REJECTED:
        raise CallNotPlaced(call)
    if call.sid is None:
        response.status_code = status.HTTP_202_ACCEPTED
    return CallOut.of(call)


@router.get("", summary="List calls, newest first")
async def list_calls(
    session: SessionDep,
    status_: Annotated[list[CallStatus], Query(alias="status")] = [],  # noqa: B006
    from_: Annotated[str | None, Query(alias="from", description="Any form of the number")] = None,
    created_after: AwareDatetime | None = None,
    created_before: AwareDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> CallPage:
    try:
        from_number = to_e164(from_) if from_ else None
    except InvalidPhoneNumber as exc:
        raise InvalidField("from", str(exc)) from None
    calls, next_cursor = await service.list_calls(
        session,
        statuses=status_,
        from_number=from_number,
        created_after=created_after,
        created_before=created_before,
        limit=limit,
        cursor=cursor,
    )
    return CallPage(items=[CallOut.of(call) for call in calls], next_cursor=next_cursor)


@router.get("/{ref}", summary="One call, by our id or Exotel's SID")
async def get_call(ref: str, session: SessionDep) -> CallOut:
    return CallOut.of(await service.find_call(session, ref))


@router.get("/{ref}/events", summary="Every status callback received for a call, oldest first")
async def list_call_events(ref: str, session: SessionDep) -> list[EventOut]:
    call = await service.find_call(session, ref)
    return [
        EventOut.model_validate(event)
        for event in await service.list_events(session, call_id=call.id)
    ]
