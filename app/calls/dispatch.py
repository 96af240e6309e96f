"""Sending a queued call to Exotel and recording what came of it.

Exotel has no idempotency key (shared/exotel.md): a `Calls/connect` that may have reached it is
never sent again. Whatever cannot be told apart from "Exotel dialled" (a read timeout, a dropped
connection, a 5xx) makes the call `unknown`, for reconciliation to resolve.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.calls.callback_auth import status_callback_url
from app.calls.phone import mask, to_exotel_dial_form
from app.calls.service import assign_sid, lock_call
from app.calls.state import StatusUpdate, apply_update
from app.config import Settings
from app.db.models import Call, CallStatus, EventOutcome
from app.exotel.client import ConnectRequest, ExotelClient
from app.exotel.errors import (
    ExotelError,
    ExotelOutcomeUnknown,
    ExotelRateLimited,
    ExotelRejected,
    ExotelUnreachable,
)
from app.exotel.wire import ExotelCall

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DispatchError:
    """Why a call was not placed, or may not have been: stored on the call as its `error`."""

    status: CallStatus
    code: str
    message: str
    exotel_status: int | None = None
    exotel_code: int | None = None


def connect_request(call: Call, settings: Settings) -> ConnectRequest:
    return ConnectRequest(
        from_number=to_exotel_dial_form(call.from_number),
        caller_id=call.caller_id,
        flow_url=call.flow_url or "",
        status_callback=status_callback_url(
            settings.public_base_url, settings.signing_secrets[0], call.id
        ),
        time_limit=call.time_limit,
        time_out=call.time_out,
        custom_field=call.custom_field,
        status_callback_events=settings.exotel_status_callback_events,
        status_callback_content_type=settings.exotel_status_callback_content_type,
    )


def classify(error: ExotelError) -> DispatchError:
    """What an Exotel failure means for a call that was being placed."""
    if isinstance(error, ExotelRateLimited):
        return DispatchError(
            CallStatus.REJECTED, "exotel_rate_limited", error.message, error.status, error.code
        )
    if isinstance(error, ExotelRejected) and error.status < 500:
        return DispatchError(
            CallStatus.REJECTED, "exotel_rejected", error.message, error.status, error.code
        )
    if isinstance(error, ExotelRejected):
        # Exotel answers 500/504 when it "could not originate", but it also retries origination
        # before answering: a 5xx does not prove that nobody was dialled.
        return DispatchError(
            CallStatus.UNKNOWN, "exotel_outcome_unknown", error.message, error.status, error.code
        )
    if isinstance(error, ExotelUnreachable):
        return DispatchError(CallStatus.REJECTED, "exotel_unreachable", str(error))
    assert isinstance(error, ExotelOutcomeUnknown), error
    return DispatchError(CallStatus.UNKNOWN, "exotel_outcome_unknown", str(error))


async def dispatch_call(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    exotel: ExotelClient,
    settings: Settings,
    call_id: uuid.UUID,
) -> Call:
    """Send a committed, queued call to Exotel and record the outcome. Returns the call as stored.

    No transaction is held open while Exotel is asked: its answer can take seconds.
    """
    async with sessionmaker() as session:
        call = await lock_call(session, call_id)
        if call is None or call.status != CallStatus.QUEUED:
            raise ValueError(f"call {call_id} is not queued")
        request = connect_request(call, settings)
    log.info("dialling %s for call %s", mask(call.from_number), call_id)
    result: ExotelCall | DispatchError
    try:
        result = await exotel.connect(request)
    except ExotelError as exc:
        result = classify(exc)
    async with sessionmaker() as session, session.begin():
        call = await lock_call(session, call_id)
        assert call is not None, "calls are never deleted"
        if isinstance(result, DispatchError):
            _record_failure(call, result)
        else:
            await _record_accepted(session, call, result)
    return call


async def _record_accepted(session: AsyncSession, call: Call, exotel_call: ExotelCall) -> None:
    call.dispatched_at = datetime.now(UTC)
    # An early status callback may have told us the SID (and even the end) already.
    if call.sid is None:
        if not await assign_sid(session, call, exotel_call.sid):
            log.error("call %s: Exotel answered a SID another call holds", call.id)
    elif call.sid != exotel_call.sid:
        log.error("call %s: Exotel answered SID %s, we hold %s", call.id, exotel_call.sid, call.sid)
    apply_update(
        call,
        StatusUpdate(
            status=CallStatus.IN_PROGRESS,
            date_updated=exotel_call.date_updated,
            date_updated_raw=exotel_call.date_updated_raw,
        ),
    )
    log.info("call %s accepted by Exotel as %s", call.id, exotel_call.sid)


def _record_failure(call: Call, error: DispatchError) -> None:
    if apply_update(call, StatusUpdate(status=error.status)) == EventOutcome.STALE:
        # A callback got here first: Exotel did dial, whatever its answer said.
        return
    if error.status == CallStatus.UNKNOWN:
        call.dispatched_at = datetime.now(UTC)
    call.error_code = error.code
    call.error_message = error.message
    call.error_exotel_status = error.exotel_status
    call.error_exotel_code = error.exotel_code
    log.warning("call %s %s: %s (%s)", call.id, error.status, error.message, error.code)
