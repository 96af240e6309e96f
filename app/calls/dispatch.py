"""The dispatch queue: claiming a queued call within the account's budget, sending it to
Exotel, and recording what came of it.

Exotel has no idempotency key (docs/exotel.md): a `Calls/connect` that may have reached it is
never sent again. Whatever cannot be told apart from "Exotel dialled" (a read timeout, a dropped
connection, a 5xx) makes the call `unknown`, for reconciliation to resolve. Every answer (or its
absence) is kept among what was received for the call (`dispatch`), with what it did.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.calls import ratelimit
from app.calls.callback_auth import status_callback_url
from app.calls.callbacks import ReceivedAnswer
from app.calls.phone import to_exotel_dial_form
from app.calls.state import CallState, Failure, StatusUpdate, apply_update
from app.calls.store import CallStore
from app.config import Settings
from app.db.clock import db_now
from app.db.models import Call, CallStatus, EventOutcome, FailureKind, RequestKind
from app.exotel.client import ConnectRequest
from app.exotel.errors import (
    ExotelError,
    ExotelOutcomeUnknown,
    ExotelRateLimited,
    ExotelRejected,
    ExotelUnreachable,
)
from app.exotel.wire import ExotelCall
from app.jobs.policy import RetryPolicy
from app.logs import about

log = logging.getLogger(__name__)

_INTERRUPTED = Failure(
    FailureKind.DISPATCH_INTERRUPTED,
    "the replica sending this call stopped; Exotel may have dialled",
)


@dataclass(frozen=True)
class Verdict:
    """What an Exotel failure means for the call being placed."""

    # REJECTED or UNKNOWN; QUEUED when the request certainly did not dial and goes back to
    # the queue (429, or no connection was ever made).
    status: CallStatus
    failure: Failure
    retry_after: float | None = None  # Exotel's Retry-After, with a 429
    answer: Mapping[str, Any] = field(default_factory=dict)  # its `RestException`, as sent


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
        # The flow's Passthru requests carry it back: our id lets them find the call before its
        # SID is known (`app.exotel.passthru`).
        custom_field=call.custom_field or str(call.id),
        status_callback_events=settings.exotel_status_callback_events,
        status_callback_content_type=settings.exotel_status_callback_content_type,
    )


def classify(error: ExotelError) -> Verdict:
    """Retry only what certainly did not dial; what may have dialled is never sent again."""
    if isinstance(error, ExotelRateLimited):
        failure = Failure(FailureKind.EXOTEL_RATE_LIMITED, error.message, error.status, error.code)
        return Verdict(CallStatus.QUEUED, failure, error.retry_after, error.answer)
    if isinstance(error, ExotelRejected) and error.status < 500:
        failure = Failure(FailureKind.EXOTEL_REJECTED, error.message, error.status, error.code)
        return Verdict(CallStatus.REJECTED, failure, answer=error.answer)
    if isinstance(error, ExotelRejected):
        # Exotel answers 500/504 when it "could not originate", but it also retries origination
        # before answering: a 5xx does not prove that nobody was dialled.
        failure = Failure(
            FailureKind.EXOTEL_OUTCOME_UNKNOWN, error.message, error.status, error.code
        )
        return Verdict(CallStatus.UNKNOWN, failure, answer=error.answer)
    if isinstance(error, ExotelUnreachable):
        return Verdict(CallStatus.QUEUED, Failure(FailureKind.EXOTEL_UNREACHABLE, str(error)))
    assert isinstance(error, ExotelOutcomeUnknown), error
    return Verdict(CallStatus.UNKNOWN, Failure(FailureKind.EXOTEL_OUTCOME_UNKNOWN, str(error)))


def schedule_lookup(call: CallState, now: datetime, settings: Settings) -> None:
    """The call's next look-up by reconciliation, on the configured schedule."""
    call.look_up_later(
        now,
        first=settings.reconcile_first_lookup_seconds,
        longest=settings.reconcile_recheck_seconds,
    )


async def record_sent(
    session: AsyncSession,
    store: CallStore,
    call_id: uuid.UUID,
    result: ExotelCall | Verdict,
    *,
    settings: Settings,
    retries: RetryPolicy,
) -> None:
    """Record what came of sending a claimed call (under `store.lock`), releasing its claim,
    and keep Exotel's answer with what it did."""
    state = store.get(call_id)
    assert state is not None, "calls are never deleted"
    state.claimed_by = state.claimed_at = None
    if isinstance(result, ExotelCall):
        outcome = await _record_accepted(store, state, result, settings)
        answer = ReceivedAnswer.of(RequestKind.DISPATCH, result)
    else:
        if result.status == CallStatus.QUEUED:
            outcome = await _retry_later(session, store, state, result, retries)
        else:
            outcome = await record_failure(store, state, result.status, result.failure)
        answer = ReceivedAnswer(
            RequestKind.DISPATCH, raw=result.answer, problem=result.failure.message
        )
    await store.add_answer(state, answer, outcome)


async def record_lost(session: AsyncSession, call_ids: Sequence[uuid.UUID]) -> None:
    """Calls claimed whose send was cut short (their worker died or stopped mid-send): whether
    the request reached Exotel cannot be known, so each becomes `unknown`, never sent again."""
    store = await CallStore.of(session)
    await store.lock(ids=call_ids)
    for call_id in call_ids:
        call = store.get(call_id)
        assert call is not None
        call.claimed_by = call.claimed_at = None
        if call.status == CallStatus.QUEUED:  # else a callback told its end meanwhile
            await record_failure(store, call, CallStatus.UNKNOWN, _INTERRUPTED)
    await store.flush()


async def _record_accepted(
    store: CallStore, call: CallState, exotel_call: ExotelCall, settings: Settings
) -> EventOutcome:
    now = await store.now()
    call.dispatched_at = now
    call.fail(None, at=now)
    schedule_lookup(call, now, settings)
    # An early status callback may have told us the SID (and even the end) already.
    if call.sid is None:
        if not store.learn_sid(call, exotel_call.sid):
            log.error(
                "call %s: Exotel answered a SID another call holds",
                call.id,
                extra=about(call.id, exotel_call.sid),
            )
    elif call.sid != exotel_call.sid:
        log.error(
            "call %s: Exotel answered SID %s, we hold %s",
            call.id,
            exotel_call.sid,
            call.sid,
            extra=about(call.id, call.sid),
        )
    outcome = apply_update(
        call,
        StatusUpdate(
            status=CallStatus.IN_PROGRESS,
            date_updated=exotel_call.date_updated,
            date_updated_raw=exotel_call.date_updated_raw,
        ),
    )
    log.info(
        "call %s accepted by Exotel as %s", call.id, exotel_call.sid, extra=about(call.id, call.sid)
    )
    return outcome


async def _retry_later(
    session: AsyncSession, store: CallStore, call: CallState, verdict: Verdict, retries: RetryPolicy
) -> EventOutcome:
    """Back to the queue (the call's error says why), or `rejected` once connections were
    never made too often; `stale` for a call no longer queued."""
    if call.status != CallStatus.QUEUED:
        return EventOutcome.STALE  # declared `unknown` while we waited; reconciliation resolves it
    kind = verdict.failure.kind
    if kind == FailureKind.EXOTEL_UNREACHABLE and retries.gives_up(call.attempts):
        return await record_failure(store, call, CallStatus.REJECTED, verdict.failure)
    now = await store.now()
    delay = retries.delay(call.attempts, retry_after=verdict.retry_after)
    call.not_before = now + timedelta(seconds=delay)
    call.fail(verdict.failure, at=now)  # says why the call is still queued
    if kind == FailureKind.EXOTEL_RATE_LIMITED:
        # Exotel's count is the one that matters (other systems may share the account).
        await ratelimit.pause(session, until=call.not_before)
    log.warning(
        "call %s back in the queue for %.1fs: %s",
        call.id,
        delay,
        verdict.failure.message,
        extra=about(call.id),
    )
    return EventOutcome.APPLIED


async def record_failure(
    store: CallStore, call: CallState, status: CallStatus, failure: Failure
) -> EventOutcome:
    """The call is `rejected` or `unknown`, for `failure`: unless Exotel's own word about it
    (a callback) got here first, in which case Exotel did dial, whatever its answer said."""
    outcome = apply_update(call, StatusUpdate(status=status))
    if outcome == EventOutcome.STALE:
        return outcome
    now = await store.now()
    if status == CallStatus.UNKNOWN:
        call.dispatched_at = now
    call.fail(failure, at=now)
    log.warning(
        "call %s %s: %s (%s)",
        call.id,
        status,
        failure.message,
        failure.kind,
        extra=about(call.id, call.sid),
    )
    return EventOutcome.APPLIED


async def claim_next(
    session: AsyncSession, *, budget: ratelimit.Budget, worker: str
) -> Call | float | None:
    """Claim the oldest ready call for `worker` if the account's budget allows.

    Returns the claimed call; or the seconds to wait for the budget; or None when no call is
    ready. Claims with SKIP LOCKED, so replicas never wait on each other's claims.
    """
    ready = (
        select(Call)
        .where(
            Call.status == CallStatus.QUEUED,
            Call.claimed_at.is_(None),
            or_(Call.not_before.is_(None), Call.not_before <= await db_now(session)),
        )
        .order_by(Call.created_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    call = (await session.scalars(ready)).first()
    if call is None:
        return None  # idle replicas never queue up for the account's lock
    now = await ratelimit.lock(session)
    wait = await ratelimit.seconds_until_free(
        session, budget, now=now, kind=ratelimit.RequestKind.CONNECT
    )
    if wait > 0:
        return wait
    call.claimed_by, call.claimed_at = worker, now
    call.attempts += 1
    ratelimit.spend(session, now=now, kind=ratelimit.RequestKind.CONNECT)
    return call
