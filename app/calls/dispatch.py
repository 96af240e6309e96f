"""The dispatch queue: claiming a queued call within the account's budget, sending it to
Exotel, and recording what came of it.

Exotel has no idempotency key (shared/exotel.md): a `Calls/connect` that may have reached it is
never sent again. Whatever cannot be told apart from "Exotel dialled" (a read timeout, a dropped
connection, a 5xx) makes the call `unknown`, for reconciliation to resolve.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.calls import ratelimit
from app.calls.callback_auth import status_callback_url
from app.calls.phone import to_exotel_dial_form
from app.calls.state import CallState, Failure, StatusUpdate, apply_update
from app.calls.store import CallStore
from app.config import Settings
from app.db.clock import db_now
from app.db.models import Call, CallStatus, EventOutcome, FailureKind
from app.exotel.client import ConnectRequest, ExotelClient
from app.exotel.errors import (
    ExotelError,
    ExotelOutcomeUnknown,
    ExotelRateLimited,
    ExotelRejected,
    ExotelUnreachable,
)
from app.exotel.wire import ExotelCall
from app.logs import about, mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """What an Exotel failure means for the call being placed."""

    # REJECTED or UNKNOWN; QUEUED when the request certainly did not dial and goes back to
    # the queue (429, or no connection was ever made).
    status: CallStatus
    failure: Failure
    retry_after: float | None = None  # Exotel's Retry-After, with a 429


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
        return Verdict(CallStatus.QUEUED, failure, error.retry_after)
    if isinstance(error, ExotelRejected) and error.status < 500:
        failure = Failure(FailureKind.EXOTEL_REJECTED, error.message, error.status, error.code)
        return Verdict(CallStatus.REJECTED, failure)
    if isinstance(error, ExotelRejected):
        # Exotel answers 500/504 when it "could not originate", but it also retries origination
        # before answering: a 5xx does not prove that nobody was dialled.
        failure = Failure(
            FailureKind.EXOTEL_OUTCOME_UNKNOWN, error.message, error.status, error.code
        )
        return Verdict(CallStatus.UNKNOWN, failure)
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


def backoff(attempts: int, *, ceiling: float) -> float:
    """Seconds before trying again after `attempts` attempts: 2, 4, 8, ... up to `ceiling`."""
    return float(min(ceiling, 2 ** min(attempts, 16)))


async def send_claimed(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    exotel: ExotelClient,
    settings: Settings,
    call_id: uuid.UUID,
    replica_id: str,
) -> None:
    """Send a call this replica claimed from the queue to Exotel, and record what came of it.

    No transaction is held open while Exotel is asked: its answer can take seconds.
    """
    async with sessionmaker() as session:
        call = await session.get(Call, call_id)
        if call is None or call.status != CallStatus.QUEUED or call.claimed_by != replica_id:
            return  # no longer ours: the claim went stale and was resolved without us
        request = connect_request(call, settings)
    log.info("dialling %s for call %s", mask(call.from_number), call_id, extra=about(call_id))
    result: ExotelCall | Verdict
    try:
        result = await exotel.connect(request)
    except ExotelError as exc:
        result = classify(exc)
    async with sessionmaker() as session, session.begin():
        store = await CallStore.of(session)
        await store.lock(ids=[call_id], sids=[result.sid] if isinstance(result, ExotelCall) else [])
        state = store.get(call_id)
        assert state is not None, "calls are never deleted"
        state.claimed_by = state.claimed_at = None
        if isinstance(result, ExotelCall):
            await _record_accepted(store, state, result, settings)
        elif result.status == CallStatus.QUEUED:
            await _retry_later(session, store, state, result, settings)
        else:
            await record_failure(store, state, result.status, result.failure)
        await store.flush()


async def _record_accepted(
    store: CallStore, call: CallState, exotel_call: ExotelCall, settings: Settings
) -> None:
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
    apply_update(
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


async def _retry_later(
    session: AsyncSession, store: CallStore, call: CallState, verdict: Verdict, settings: Settings
) -> None:
    if call.status != CallStatus.QUEUED:
        return  # declared `unknown` while we waited; reconciliation resolves it
    kind = verdict.failure.kind
    if kind == FailureKind.EXOTEL_UNREACHABLE and call.attempts >= settings.dispatch_max_attempts:
        await record_failure(store, call, CallStatus.REJECTED, verdict.failure)
        return
    now = await store.now()
    delay = verdict.retry_after
    if delay is None:
        delay = backoff(call.attempts, ceiling=settings.exotel_rate_window_seconds)
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


async def record_failure(
    store: CallStore, call: CallState, status: CallStatus, failure: Failure
) -> None:
    """The call is `rejected` or `unknown`, for `failure`: unless Exotel's own word about it
    (a callback) got here first, in which case Exotel did dial, whatever its answer said."""
    if apply_update(call, StatusUpdate(status=status)) == EventOutcome.STALE:
        return
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


async def claim_next(
    session: AsyncSession, *, budget: ratelimit.Budget, replica_id: str
) -> uuid.UUID | float | None:
    """Claim the oldest ready call for this replica if the account's budget allows.

    Returns the claimed call's id; or the seconds to wait for the budget; or None when no call
    is ready. Claims with SKIP LOCKED, so replicas never wait on each other's claims.
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
    call.claimed_by, call.claimed_at = replica_id, now
    call.attempts += 1
    ratelimit.spend(session, now=now, kind=ratelimit.RequestKind.CONNECT)
    return call.id
