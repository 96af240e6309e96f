"""`GET /calls/{ref}/recording`: the call's recording, from the archive (`app.recordings`).

Behind the API key, as a bearer token or as the password of HTTP Basic auth, so that the audio
player on a call's page (`/ui`) can fetch it with the credentials the browser signed in with.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from app.api.deps import RecordingsDep, SessionDep, SettingsDep, require_page_access
from app.api.errors import ApiError, refusals
from app.calls import queries
from app.calls.errors import RecordingNotArchived
from app.db.models import RecordingStatus
from app.numerals import DIGIT
from app.recordings.store import ByteRange, StoreUnavailable

router = APIRouter(prefix="/calls", tags=["calls"], dependencies=[Depends(require_page_access)])

_RANGE = re.compile(f"bytes=({DIGIT}*)-({DIGIT}*)")
# What an offset of more than 18 digits reads as: beyond any recording (an exabyte), and int()
# reads no more than 4300 digits.
_BEYOND = 10**18
# Recordings are personal data: no shared cache keeps them.
_PRIVATE = {"Cache-Control": "private, no-store"}


@router.get(
    "/{ref}/recording",
    summary="The call's recording, streamed from the archive (Range supported)",
    response_class=Response,
    responses={
        200: {
            "description": "The whole recording, of the audio type Exotel served it as "
            "(`audio/mpeg`, `audio/wav`)",
            "content": {"audio/*": {}},
        },
        206: {"description": "The bytes the `Range` asked for"},
        304: {"description": "`If-None-Match` is `*` or names the recording's `ETag`"},
        307: {"description": "RECORDING_SERVE=redirect: a short-lived URL of the store's"},
        **refusals(401, 404, 416, 422, 503),
    },
)
async def get_recording(
    ref: str,
    session: SessionDep,
    settings: SettingsDep,
    recordings: RecordingsDep,
    range_: Annotated[str | None, Header(alias="range")] = None,
    if_none_match: Annotated[
        str | None,
        Header(alias="if-none-match", description="`*`, or the `ETag`s of copies held"),
    ] = None,
) -> Response:
    call = await queries.find_call(session, ref)
    await session.close()  # nothing more to read: no connection is held while it streams
    size, content_type = call.recording_size, call.recording_content_type
    if call.recording_status != RecordingStatus.ARCHIVED or size is None or not content_type:
        raise RecordingNotArchived(call)
    etag = f'"{call.recording_sha256}"'
    if _none_match(if_none_match, etag):
        return Response(status_code=304, headers=_PRIVATE | {"ETag": etag})
    try:
        if settings.recordings.serve == "redirect" and recordings.signs:
            url = await recordings.sign(call.id, seconds=settings.recordings.presign_seconds)
            return RedirectResponse(url, status_code=307, headers=_PRIVATE)
        span = requested_span(range_, size)
        headers = _PRIVATE | {
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Content-Length": str(span.length if span else size),
        }
        if size == 0:
            return Response(b"", media_type=content_type, headers=headers)
        if span is None:
            body = await recordings.read(call.id, ByteRange(0, size - 1))
            return StreamingResponse(body, media_type=content_type, headers=headers)
        headers["Content-Range"] = f"bytes {span.start}-{span.end}/{size}"
        body = await recordings.read(call.id, span)
    except StoreUnavailable as exc:
        raise ApiError(
            503, "recording_store_unavailable", f"the recording store is unavailable: {exc}"
        ) from exc
    return StreamingResponse(body, status_code=206, media_type=content_type, headers=headers)


def _none_match(header: str | None, etag: str) -> bool:
    """Whether `If-None-Match` is false for the recording, which exists (RFC 9110 13.1.2): `*`,
    or a list naming its ETag, weakly compared."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    return etag in (tag.strip().removeprefix("W/") for tag in header.split(","))


def requested_span(header: str | None, size: int) -> ByteRange | None:
    """The one byte range `header` asks for; None for the whole recording: no `Range`, one
    this does not read (RFC 9110 lets a server ignore it), or several ranges. Raises a 416
    for a range that starts beyond the recording."""
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = (_offset(text) if text else None for text in match.groups())
    if first is None:  # the last `last` bytes
        assert last is not None
        start, end = max(0, size - last), size - 1
        if last == 0:
            raise _unsatisfiable(size)
    else:
        start = first
        end = min(last, size - 1) if last is not None else size - 1
        if last is not None and last < start:
            return None  # not a valid range: ignored
    if start >= size:
        raise _unsatisfiable(size)
    return ByteRange(start, end)


def _offset(digits: str) -> int:
    return int(digits) if len(digits) <= 18 else _BEYOND


def _unsatisfiable(size: int) -> ApiError:
    return ApiError(
        416,
        "range_not_satisfiable",
        f"the recording has {size} bytes",
        headers={"Content-Range": f"bytes */{size}"},
    )
