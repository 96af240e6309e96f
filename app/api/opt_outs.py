"""`/opt-outs`: numbers that must never be called (docs/api.md, Opt-outs)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status

from app.api.deps import SessionDep, require_api_key, require_json
from app.api.errors import refusals
from app.api.opt_out_schemas import OPT_OUT_EXAMPLE, OptOutCreate, OptOutOut, OptOutPage
from app.api.schemas import WHOLE_NUMBER
from app.calls import opt_outs
from app.calls.errors import InvalidField, OptOutNotFound
from app.calls.phone import InvalidPhoneNumber, to_e164

router = APIRouter(prefix="/opt-outs", tags=["opt-outs"], dependencies=[Depends(require_api_key)])

Number = Annotated[
    str,
    Path(
        description="Any spelling `POST /calls` takes, URL-encoded: `+919052161119` (or "
        "`%2B919052161119`), `09052161119`.",
        examples=["+919052161119"],
    ),
]


def _e164(number: str) -> str:
    try:
        return to_e164(number)
    except InvalidPhoneNumber as exc:
        raise InvalidField("number", str(exc)) from None


@router.post(
    "",
    dependencies=[Depends(require_json)],
    status_code=status.HTTP_201_CREATED,
    summary="Opt a number out: it is never called, whoever asks",
    response_description="The number is opted out now",
    responses={
        200: {
            "model": OptOutOut,
            "description": "It already was: the entry as first made (its reason and source)",
            "content": {"application/json": {"example": OPT_OUT_EXAMPLE}},
        },
        **refusals(400, 401, 413, 415, 422),
    },
)
async def add(body: OptOutCreate, session: SessionDep, response: Response) -> OptOutOut:
    entry, created = await opt_outs.add(session, number=body.number, reason=body.reason)
    if not created:
        response.status_code = status.HTTP_200_OK
    return OptOutOut.of(entry)


@router.get("", summary="List opted-out numbers, newest first", responses=refusals(401, 422))
async def list_all(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200), WHOLE_NUMBER] = 50,
    cursor: str | None = None,
) -> OptOutPage:
    entries, next_cursor = await opt_outs.list_page(session, limit=limit, cursor=cursor)
    return OptOutPage(items=[OptOutOut.of(entry) for entry in entries], next_cursor=next_cursor)


@router.get(
    "/{number}", summary="Whether a number is opted out, and why", responses=refusals(401, 404, 422)
)
async def get(number: Number, session: SessionDep) -> OptOutOut:
    e164 = _e164(number)
    entry = await opt_outs.get(session, number=e164)
    if entry is None:
        raise OptOutNotFound(e164)
    return OptOutOut.of(entry)


@router.delete(
    "/{number}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Take a number off the list: it may be called again",
    responses=refusals(401, 404, 422),
)
async def remove(number: Number, session: SessionDep) -> Response:
    e164 = _e164(number)
    if not await opt_outs.remove(session, number=e164):
        raise OptOutNotFound(e164)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
