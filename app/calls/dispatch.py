"""The dispatch queue, a kind of job (`app.jobs`): every replica claims queued calls within the
account's shared budget, sends each to Exotel, several at a time, and records what came of it.

Exotel has no idempotency key (docs/exotel.md): a `Calls/connect` that may have reached it is
never sent again. Whatever cannot be told apart from "Exotel dialled" (a read timeout, a dropped
connection, a 5xx) makes the call `unknown`, for reconciliation to resolve. Every answer (or its
absence) is kept among what was received for the call (`dispatch`), with what it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.calls import ratelimit
from app.calls.callback_auth import status_callback_url
from app.calls.opt_outs import opted_out
from app.calls.phone import to_exotel_dial_form
from app.calls.policy import NumberLimit
from app.calls.received import ReceivedAnswer
from app.calls.state import (
    OPTED_OUT,
    CallState,
    Failure,
    StatusUpdate,
    accepted_attempt,
    apply_update,
    begin_attempt,
    hold,
    is_latest_live,
    stop,
)
from app.calls.store import CallStore
from app.config import CallbackSettings, DispatchSettings, ExotelSettings, ReconcileSettings
from app.db.clock import db_now
from app.db.models import (
    Call,
    CallStatus,
    Dial,
    EventOutcome,
    ExotelRequest,
    FailureKind,
    RequestKind,
)
from app.db.statements import table_of, written_in
from app.exotel.client import ConnectRequest, ExotelClient
from app.exotel.errors import (
    ExotelError,
    ExotelOutcomeUnknown,
    ExotelRateLimited,
    ExotelRejected,
    ExotelUnreachable,
)
from app.exotel.wire import ExotelCall
from app.jobs.policy import RetryPolicy
from app.jobs.runner import Kind, Wait
from app.jobs.worker import Queue
from app.logs import about, mask

log = logging.getLogger(__name__)

_INTERRUPTED = Failure(
    FailureKind.DISPATCH_INTERRUPTED,
    "the replica sending this call stopped; Exotel may have dialled",
)
# Due calls a claim may put back (to wait for a window or a number's limit) or end before it
# claims one: the rest wait for the next claim.
_HELD_BACK_AT_ONCE = 50
# Calls claimed in one transaction, at most: every replica's claim waits for the account's
# lock while one holds it.
_CLAIMED_AT_ONCE = 4


@dataclass(frozen=True)
class Verdict:
    """What an Exotel failure means for the call being placed."""

    # REJECTED or UNKNOWN; QUEUED when the request certainly did not dial and goes back to
    # the queue (429, or no connection was ever made).
    status: CallStatus
    failure: Failure
    retry_after: float | None = None  # Exotel's Retry-After, with a 429
    answer: Mapping[str, Any] = field(default_factory=dict)  # its `RestException`, as sent


def connect_request(
    call: Call, *, exotel: ExotelSettings, callbacks: CallbackSettings
) -> ConnectRequest:
    return ConnectRequest(
        from_number=to_exotel_dial_form(call.from_number),
        caller_id=call.caller_id,
        flow_url=call.flow_url or "",
        status_callback=status_callback_url(
            callbacks.public_base_url, callbacks.signing_secrets[0], call.id
        ),
        time_limit=call.time_limit,
        time_out=call.time_out,
        # The flow's Passthru requests carry it back: our id lets them find the call before its
        # SID is known (`app.exotel.passthru`).
        custom_field=call.custom_field or str(call.id),
        status_callback_events=exotel.status_callback_events,
        status_callback_content_type=exotel.status_callback_content_type,
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


def schedule_lookup(call: CallState, now: datetime, settings: ReconcileSettings) -> None:
    """The call's next look-up by reconciliation, on the configured schedule."""
    call.look_up_later(
        now,
        first=settings.first_lookup_seconds,
        longest=settings.recheck_seconds,
    )


async def record_sent(
    session: AsyncSession,
    store: CallStore,
    call_id: uuid.UUID,
    attempt: int,
    result: ExotelCall | Verdict,
    *,
    lookups: ReconcileSettings,
    retries: RetryPolicy,
) -> None:
    """Record what came of sending a claimed call's `attempt` (under `store.lock`), releasing
    its claim, and keep Exotel's answer with what it did."""
    state = store.get(call_id)
    assert state is not None, "calls are never deleted"
    state.claimed_by = state.claimed_at = None
    if isinstance(result, ExotelCall):
        accepted_attempt(state, attempt, at=await store.now())
        answer = ReceivedAnswer.of(RequestKind.DISPATCH, result)
    else:
        answer = ReceivedAnswer(
            RequestKind.DISPATCH, raw=result.answer, problem=result.failure.message
        )
    if not is_latest_live(state, attempt):
        # A callback ended the attempt before Exotel's answer came, and the call waits for its
        # next: the answer is the attempt's, and news to nobody.
        outcome = EventOutcome.STALE
    elif isinstance(result, ExotelCall):
        outcome = await _record_accepted(store, state, result, lookups)
    elif result.status == CallStatus.QUEUED:
        outcome = await _retry_later(session, store, state, result, retries)
    else:
        outcome = await record_failure(store, state, result.status, result.failure)
    await store.add_answer(state, answer, outcome, attempt=attempt)


async def record_lost(
    session: AsyncSession, call_ids: Sequence[uuid.UUID], *, lookups: ReconcileSettings
) -> None:
    """Calls claimed whose send was cut short (their worker died or stopped mid-send): whether
    the request reached Exotel cannot be known, so each becomes `unknown`, never sent again.
    One a callback moved on meanwhile was sent: without Exotel's answer, reconciliation looks
    it up on the schedule of a call sent now, lest its end never be told."""
    store = await CallStore.of(session)
    await store.lock(ids=call_ids)
    now = await store.now()
    for call_id in call_ids:
        call = store.get(call_id)
        assert call is not None
        call.claimed_by = call.claimed_at = None
        if call.status == CallStatus.QUEUED:
            await record_failure(store, call, CallStatus.UNKNOWN, _INTERRUPTED)
        elif call.status == CallStatus.IN_PROGRESS and call.dispatched_at is None:
            call.dispatched_at = now
            schedule_lookup(call, now, lookups)
    await store.flush()


async def _record_accepted(
    store: CallStore, call: CallState, exotel_call: ExotelCall, lookups: ReconcileSettings
) -> EventOutcome:
    now = await store.now()
    call.dispatched_at = now
    call.fail(None, at=now)
    schedule_lookup(call, now, lookups)
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
            heard_at=now,
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
    if call.canceled_at:  # while it was being sent, which certainly did not dial
        return stop(call, CallStatus.CANCELED, at=await store.now())
    kind = verdict.failure.kind
    if kind == FailureKind.EXOTEL_UNREACHABLE and retries.gives_up(call.send_tries):
        return await record_failure(store, call, CallStatus.REJECTED, verdict.failure)
    now = await store.now()
    delay = retries.delay(call.send_tries, retry_after=verdict.retry_after)
    call.next_attempt_at = now + timedelta(seconds=delay)
    call.fail(verdict.failure, at=now)  # says why the call is still queued
    if kind == FailureKind.EXOTEL_RATE_LIMITED:
        # Exotel's count is the one that matters (other systems may share the account).
        await ratelimit.pause(session, until=call.next_attempt_at)
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


async def claim_due(
    session: AsyncSession,
    *,
    budget: ratelimit.Budget,
    worker: str,
    number_limit: NumberLimit | None,
    limit: int,
) -> list[tuple[Call, int]] | float:
    """Claim up to `limit` calls, those due longest for their next attempt, as far as the
    account's budget allows: one transaction for them all, holding the account's lock.

    Returns each claimed call (as it was before the claim) with its attempt's number; or, when
    calls are ready but the budget allows none, the seconds to wait for it. Claims with SKIP
    LOCKED, so replicas never wait on each other's claims. A due call that may not be dialled
    now is held back on the way (`_held_back`): it expires, is rejected for an opt-out, or
    waits for its window or its number's limit.
    """
    store = await CallStore.of(session)
    claimed: list[tuple[Call, int]] = []
    grants: list[ExotelRequest] = []
    held_back = 0
    wait = 0.0
    while len(claimed) < min(limit, _CLAIMED_AT_ONCE) and held_back < _HELD_BACK_AT_ONCE:
        call = await _next_due(session)
        if call is None:
            break  # idle replicas never queue up for the account's lock
        now = await ratelimit.lock(session)  # held already after the first: the time, afresh
        # The budget is asked at the claim's first time: its calls are all sent once it
        # commits, so the window must not slide past the first of them while it goes on.
        asked_at = grants[0].at if grants else now
        wait = await ratelimit.seconds_until_free(
            session, budget, now=asked_at, kind=ratelimit.RequestKind.CONNECT
        )
        if wait > 0:
            break
        await store.lock(ids=[call.id])
        state = store.get(call.id)
        assert state is not None
        if await _held_back(session, state, call.from_number, now=now, limit=number_limit):
            await store.flush()  # written before the next look: our own lock skips nothing
            held_back += 1
            continue
        attempt = begin_attempt(state, at=now)
        state.claimed_by, state.claimed_at = worker, now
        state.send_tries += 1
        grants.append(ratelimit.spend(session, now=asked_at, kind=ratelimit.RequestKind.CONNECT))
        dial = {"call_id": call.id, "n": attempt, "number": call.from_number, "sent_at": now}
        await session.execute(
            insert(Dial)
            .values(dial)
            .on_conflict_do_update(index_elements=[Dial.call_id, Dial.n], set_={"sent_at": now})
        )
        await store.flush()
        claimed.append((call, attempt))
    if not claimed:
        return wait if wait > 0 else []
    # Counted from the claim's end, the nearest the database sees to their send: the margin
    # is then left for the commit and the way to Exotel, however long the claim took.
    ended_at = await db_now(session)
    for grant in grants:
        grant.at = ended_at
    return claimed


async def _due_again(store: CallStore, call_id: uuid.UUID, *, why: str) -> None:
    """A claimed call certainly never sent is due again as it was before its claim (the attempt
    its claim began is the next claim's, `begin_attempt`); one cancelled meanwhile ends.
    Call under `store.lock`."""
    call = store.get(call_id)
    assert call is not None
    call.claimed_by = call.claimed_at = None
    call.send_tries -= 1
    if call.canceled_at:
        stop(call, CallStatus.CANCELED, at=await store.now())
    log.warning("call %s: claimed, never sent (%s): due again", call.id, why, extra=about(call.id))


async def _next_due(session: AsyncSession) -> Call | None:
    """The call due longest, not being sent: of the scheduled call whose time came first and
    the oldest queued (back in the queue after a 429, only once its wait is over), the one due
    first. Each is read from its own index."""
    now = await db_now(session)
    not_sent = Call.claimed_at.is_(None)
    # The statuses written in: a generic plan uses the partial index of scheduled calls too,
    # and knows queued calls are few.
    scheduled = select(Call).where(
        written_in(Call.status, CallStatus.SCHEDULED.value), not_sent, Call.next_attempt_at <= now
    )
    queued = select(Call).where(
        written_in(Call.status, CallStatus.QUEUED.value),
        not_sent,
        or_(Call.next_attempt_at.is_(None), Call.next_attempt_at <= now),
    )
    heads = [
        call
        for due in (scheduled.order_by(Call.next_attempt_at), queued.order_by(Call.created_at))
        if (call := (await session.scalars(due.limit(1).with_for_update(skip_locked=True))).first())
    ]
    return min(heads, key=_due_at, default=None)


def _due_at(call: Call) -> datetime:
    if call.status == CallStatus.SCHEDULED and call.next_attempt_at is not None:
        return call.next_attempt_at
    return call.created_at


async def _held_back(
    session: AsyncSession,
    call: CallState,
    number: str,
    *,
    now: datetime,
    limit: NumberLimit | None,
) -> bool:
    """Whether the due `call` may not be dialled now, and so ends or waits: its `expires_at`
    has passed, its number opted out, or its window or its number's limit puts it later. Call
    under the account's lock: the number's count is then the same for every replica."""
    if await opted_out(session, [number]):
        stop(call, CallStatus.REJECTED, at=now, failure=OPTED_OUT)
        return True
    earliest = now
    if limit is not None:
        sent = select(Dial.sent_at).where(Dial.number == number, Dial.sent_at > now - limit.period)
        if call.attempts and call.attempts[-1]["status"] == CallStatus.QUEUED:
            # Its latest send never reached Exotel (`begin_attempt`): sent again, it is the
            # same dial, not one more.
            sent = sent.where(or_(Dial.call_id != call.id, Dial.n != len(call.attempts)))
        earliest = limit.free_at(list(await session.scalars(sent.order_by(Dial.sent_at))), now)
    return hold(call, now=now, earliest=earliest)


# --- the kind of job ------------------------------------------------------------------------

_CALLS = table_of(Call).c


def budget_of(settings: ExotelSettings) -> ratelimit.Budget:
    return ratelimit.Budget(
        limit=settings.rate_limit,
        window=settings.rate_window_seconds,
        margin=settings.rate_margin_seconds,
    )


@dataclass(frozen=True)
class Claimed:
    call_id: uuid.UUID
    attempt: int
    number: str
    request: ConnectRequest
    granted: float  # time.monotonic() once the claim's grants were timed: see Budget.fresh


class Stale(enum.Enum):
    """The call was never sent: its grant from the budget was stale before it could be."""

    GRANT = "stale grant"


class Dispatch(Kind[Claimed, ExotelCall | Verdict | Stale]):
    """A claim is a queued call's `claimed_by`; one claimed is sent at once. Nothing that may
    have reached Exotel is sent again: a claim lost mid-send makes the call `unknown`. What
    certainly did not dial (a 429, no connection made) goes back to the queue, on the retry
    policy: 2, 4, 8 s ... up to the rate window, and `rejected` after DISPATCH_MAX_ATTEMPTS
    connections never made."""

    name = "dispatch"
    queue = Queue(
        key=_CALLS.id,
        claimed_by=_CALLS.claimed_by,
        due=func.coalesce(_CALLS.next_attempt_at, _CALLS.created_at),
        waiting=written_in(_CALLS.status, CallStatus.QUEUED.value, CallStatus.SCHEDULED.value),
    )

    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        exotel: ExotelClient,
        settings: DispatchSettings,
        budget: ratelimit.Budget,
        connect: Callable[[Call], ConnectRequest],
        lookups: ReconcileSettings,
        recorded: Callable[[], None] = lambda: None,
    ) -> None:
        self.concurrency = settings.concurrency
        self._sessionmaker = sessionmaker
        self._exotel = exotel
        self._budget = budget
        self._connect = connect
        self._lookups = lookups
        self._retries = RetryPolicy.doubling(2, budget.window, max_attempts=settings.max_attempts)
        self._number_limit = settings.number_attempt_limit
        self._finished: dict[uuid.UUID, asyncio.Event] = {}
        self._stopping = False
        # Called once outcomes are committed: the events they wrote are due for delivery now.
        self._recorded = recorded

    async def claim(
        self, session: AsyncSession, *, worker: str, limit: int
    ) -> list[Claimed] | Wait:
        claimed = await claim_due(
            session,
            budget=self._budget,
            worker=worker,
            number_limit=self._number_limit,
            limit=limit,
        )
        if isinstance(claimed, float):
            return Wait(claimed)
        granted = time.monotonic()
        return [
            Claimed(call.id, attempt, call.from_number, self._connect(call), granted)
            for call, attempt in claimed
        ]

    async def run(self, job: Claimed) -> ExotelCall | Verdict | Stale:
        if not self._budget.fresh(job.granted):
            return Stale.GRANT
        log.info(
            "dialling %s for call %s (attempt %d)",
            mask(job.number),
            job.call_id,
            job.attempt,
            extra=about(job.call_id),
        )
        try:
            return await self._exotel.connect(job.request)
        except ExotelError as exc:
            return classify(exc)

    async def record(
        self, session: AsyncSession, done: Sequence[tuple[Claimed, ExotelCall | Verdict | Stale]]
    ) -> None:
        store = await CallStore.of(session)
        sids = [result.sid for _, result in done if isinstance(result, ExotelCall)]
        await store.lock(ids=[job.call_id for job, _ in done], sids=sids)
        for job, result in done:
            if isinstance(result, Stale):
                await _due_again(store, job.call_id, why="its grant went stale before it was sent")
                continue
            await record_sent(
                session,
                store,
                job.call_id,
                job.attempt,
                result,
                lookups=self._lookups,
                retries=self._retries,
            )
        await store.flush()

    def recorded(self, done: Sequence[tuple[Claimed, ExotelCall | Verdict | Stale]]) -> None:
        for job, _ in done:
            if finished := self._finished.get(job.call_id):
                finished.set()
        self._recorded()

    def key(self, job: Claimed) -> uuid.UUID:
        return job.call_id

    async def lost(self, session: AsyncSession, keys: Sequence[uuid.UUID]) -> None:
        await record_lost(session, keys, lookups=self._lookups)

    async def unrun(self, session: AsyncSession, keys: Sequence[uuid.UUID]) -> None:
        """Certainly never sent: each is due again (`_due_again`)."""
        store = await CallStore.of(session)
        await store.lock(ids=keys)
        for call_id in keys:
            await _due_again(store, call_id, why="the claim's commit went unconfirmed")
        await store.flush()

    def stop_waiting(self) -> None:
        """The replica is shutting down: requests waiting for their call to be sent answer now."""
        self._stopping = True
        for finished in self._finished.values():
            finished.set()

    async def wait_until_sent(self, call_id: uuid.UUID, *, within: float) -> Call | None:
        """Wait up to `within` seconds for the call to leave the queue; the call as stored.

        The call may be sent by any replica: this one says so at once, the others are seen by
        looking at the database now and then. A replica shutting down waits no more: the call
        is queued for whichever replica is left, or its send here is finished without us.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        finished = self._finished.setdefault(call_id, asyncio.Event())
        pause = 0.05
        try:
            while True:
                finished.clear()  # set from here on: recorded since this read
                async with self._sessionmaker() as session:
                    call = await session.get(Call, call_id)
                # Done when Exotel's answer is recorded: a callback may have ended the call
                # before the answer came (the claim is held until it does).
                if call is None or (call.status != CallStatus.QUEUED and call.claimed_at is None):
                    return call
                remaining = deadline - loop.time()
                if remaining <= 0 or self._stopping:
                    return call
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finished.wait(), min(pause, remaining))
                pause = min(pause * 2, 1.0)
        finally:
            self._finished.pop(call_id, None)
