"""Reconciliation: accounting for every call Exotel did not tell us the end of.

Exotel's callbacks can be lost, and a `Calls/connect` that timed out may or may not have dialled
(shared/exotel.md). One replica at a time (a lease) looks such calls up in Exotel's call details,
drawing on the account's budget at lower priority than placing calls, and applies what it finds
through the same state machine as callbacks. It never sends a call again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.calls import ratelimit
from app.calls.service import assign_sid, attach_orphans, lock_call, status_from_exotel
from app.calls.state import StatusUpdate, apply_update
from app.config import Settings
from app.db import lease
from app.db.clock import db_now
from app.db.models import Call, CallEvent, CallStatus, EventOutcome
from app.exotel.client import MAX_SIDS_PER_LOOKUP, ExotelClient
from app.exotel.errors import ExotelError
from app.exotel.wire import ExotelCall
from app.logs import about
from app.metrics import Metrics

log = logging.getLogger(__name__)

LEASE = "reconcile"
# How far around our dispatch time Exotel's DateCreated of an `unknown` call may be.
MATCH_WINDOW = timedelta(minutes=5)


@dataclass
class Repairs:
    """What one round did: the figures operators watch."""

    stale_claims: int = 0  # sends cut short (a replica died): made `unknown`, never resent
    lookups: int = 0  # requests to Exotel's call details
    repaired: int = 0  # calls whose state a look-up changed
    not_dialled: int = 0  # `unknown` calls Exotel has no record of, long after: `rejected`
    attached: int = 0  # stored callbacks for SIDs we had not known, now applied

    def __str__(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))

    def changes(self) -> dict[str, int]:
        """What the round changed, by kind (look-ups change nothing; they are Exotel requests)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "lookups"}


class OutOfBudget(Exception):
    """The account's budget has no room for a look-up now; the round stops here."""


@dataclass(frozen=True)
class _Round:
    sessionmaker: async_sessionmaker[AsyncSession]
    exotel: ExotelClient
    settings: Settings
    budget: ratelimit.Budget

    async def spend_lookup(self) -> None:
        async with self.sessionmaker() as session, session.begin():
            backlog = await session.scalar(select(exists().where(Call.status == CallStatus.QUEUED)))
            wait = await ratelimit.acquire(
                session, self.budget, kind=ratelimit.RequestKind.LOOKUP, backlog=bool(backlog)
            )
        if wait > 0:
            raise OutOfBudget


async def reconcile_once(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    exotel: ExotelClient,
    settings: Settings,
    budget: ratelimit.Budget,
) -> Repairs:
    """One round of reconciliation. Safe to run anywhere; the runner keeps it to one replica."""
    round_ = _Round(sessionmaker, exotel, settings, budget)
    repairs = Repairs()
    async with sessionmaker() as session, session.begin():
        repairs.stale_claims = await _resolve_stale_claims(session, settings)
        repairs.attached = await _attach_orphan_events(session)
    with contextlib.suppress(OutOfBudget):
        await _look_up_by_sid(round_, repairs)
        await _look_up_unknown_by_number(round_, repairs)
    return repairs


async def _resolve_stale_claims(session: AsyncSession, settings: Settings) -> int:
    """A claim older than any send could take means its replica died mid-dispatch. Whether the
    request reached Exotel cannot be known: the call becomes `unknown`, never sent again."""
    now = await db_now(session)
    cutoff = now - (settings.exotel_timeout_seconds + settings.dispatch_claim_grace_seconds)
    stale = select(Call).where(
        Call.status == CallStatus.QUEUED, Call.claimed_at.is_not(None), Call.claimed_at < cutoff
    )
    calls = list(await session.scalars(stale.with_for_update(skip_locked=True)))
    for call in calls:
        apply_update(call, StatusUpdate(CallStatus.UNKNOWN))
        call.claimed_by = call.claimed_at = None
        call.dispatched_at = datetime.now(UTC)
        call.error_code = "dispatch_interrupted"
        call.error_message = "the replica sending this call stopped; Exotel may have dialled"
        log.warning(
            "call %s: its dispatch was interrupted; now unknown", call.id, extra=about(call.id)
        )
    return len(calls)


async def _attach_orphan_events(session: AsyncSession) -> int:
    """Callbacks stored for a SID before any call had it (the dispatch that learnt the SID may
    have raced them)."""
    known = select(Call).where(
        exists().where(CallEvent.sid == Call.sid, CallEvent.call_id.is_(None))
    )
    attached = 0
    for call in await session.scalars(known.with_for_update()):
        attached += await attach_orphans(session, call)
    return attached


def _overdue(call: Call, settings: Settings, now: datetime) -> bool:
    """Long enough since dispatch that the call must have ended."""
    started = call.dispatched_at or call.created_at
    lasts = (call.time_out or 60) + (call.time_limit or settings.default_time_limit_seconds)
    return now > started + timedelta(seconds=lasts + settings.reconcile_grace_seconds)


async def _due(session: AsyncSession, settings: Settings, *, with_sid: bool) -> list[Call]:
    """Calls to look up this round, not looked up within the last recheck interval."""
    now = await db_now(session)
    recheck = now - settings.reconcile_recheck_seconds
    if with_sid:
        waiting = or_(
            Call.status == CallStatus.UNKNOWN,
            and_(Call.status == CallStatus.IN_PROGRESS, Call.dispatched_at.is_not(None)),
        )
        query = select(Call).where(waiting, Call.sid.is_not(None))
    else:
        query = select(Call).where(Call.status == CallStatus.UNKNOWN, Call.sid.is_(None))
    query = query.where(or_(Call.reconciled_at.is_(None), Call.reconciled_at < recheck))
    calls = await session.scalars(query.order_by(Call.created_at).limit(1000))
    wall_now = datetime.now(UTC)
    return [c for c in calls if c.status == CallStatus.UNKNOWN or _overdue(c, settings, wall_now)]


async def _look_up_by_sid(round_: _Round, repairs: Repairs) -> None:
    """Calls whose SID we know but not their end: bulk call details, 100 SIDs a request."""
    async with round_.sessionmaker() as session:
        due = await _due(session, round_.settings, with_sid=True)
    for start in range(0, len(due), MAX_SIDS_PER_LOOKUP):
        chunk = due[start : start + MAX_SIDS_PER_LOOKUP]
        await round_.spend_lookup()
        repairs.lookups += 1
        try:
            found = await round_.exotel.list_calls(sids=[c.sid for c in chunk if c.sid])
        except ExotelError as exc:
            log.warning("reconcile: call details look-up failed: %s", exc)
            return
        by_sid = {exotel_call.sid: exotel_call for exotel_call in found}
        async with round_.sessionmaker() as session, session.begin():
            for due_call in chunk:
                call = await lock_call(session, due_call.id)
                assert call is not None
                call.reconciled_at = await db_now(session)
                if (exotel_call := by_sid.get(call.sid or "")) is not None:
                    repairs.repaired += _apply_details(call, exotel_call)


async def _look_up_unknown_by_number(round_: _Round, repairs: Repairs) -> None:
    """`unknown` calls without a SID: Exotel's calls from that number around our dispatch."""
    async with round_.sessionmaker() as session:
        due = await _due(session, round_.settings, with_sid=False)
    for due_call in due:
        started = due_call.dispatched_at or due_call.created_at
        await round_.spend_lookup()
        repairs.lookups += 1
        try:
            found = await round_.exotel.list_calls(
                from_number=due_call.from_number,
                created_after=started - MATCH_WINDOW,
                created_before=started + MATCH_WINDOW,
            )
        except ExotelError as exc:
            log.warning("reconcile: call details look-up failed: %s", exc)
            return
        async with round_.sessionmaker() as session, session.begin():
            call = await lock_call(session, due_call.id)
            assert call is not None
            call.reconciled_at = await db_now(session)
            match = await _first_unclaimed(session, found, near=started)
            if match is not None and await assign_sid(session, call, match.sid):
                repairs.repaired += _apply_details(call, match)
            elif _overdue(call, round_.settings, datetime.now(UTC)) and (
                # Exotel lists every call that ended; long after this one would have, it has
                # none from this number: it was never dialled.
                apply_update(call, StatusUpdate(CallStatus.REJECTED)) == EventOutcome.APPLIED
            ):
                call.error_code = "exotel_no_record"
                call.error_message = "Exotel has no record of this call: it was not dialled"
                repairs.not_dialled += 1


async def _first_unclaimed(
    session: AsyncSession, found: Sequence[ExotelCall], *, near: datetime
) -> ExotelCall | None:
    """Of Exotel's calls from the number, the one closest to `near` that no call of ours has."""
    if not found:
        return None
    held = set(await session.scalars(select(Call.sid).where(Call.sid.in_([c.sid for c in found]))))
    free = [c for c in found if c.sid not in held and c.date_created is not None]
    return min(free, key=lambda c: abs(c.date_created - near), default=None)  # type: ignore[operator]


def _apply_details(call: Call, details: ExotelCall) -> int:
    """Apply call details through the state machine; 1 if they changed the call."""
    status = status_from_exotel(details.status)
    if status is None:
        return 0
    update = StatusUpdate(
        status=status,
        date_updated=details.date_updated,
        date_updated_raw=details.date_updated_raw,
        recording_url=details.recording_url,
        duration=details.duration,
        conversation_duration=details.conversation_duration,
    )
    outcome = apply_update(call, update)
    if outcome == EventOutcome.APPLIED:
        log.info("reconcile: call %s is %s", call.id, call.status, extra=about(call.id, call.sid))
        return 1
    return 0


async def reconcile_if_leading(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    exotel: ExotelClient,
    settings: Settings,
    budget: ratelimit.Budget,
    replica_id: str,
    metrics: Metrics,
) -> None:
    """One round, if this replica holds the reconciliation lease (or can take it)."""
    async with sessionmaker() as session, session.begin():
        held = await lease.try_acquire(
            session, name=LEASE, holder=replica_id, ttl=settings.reconcile_interval_seconds * 3
        )
    if held:
        repairs = await reconcile_once(
            sessionmaker=sessionmaker, exotel=exotel, settings=settings, budget=budget
        )
        log.info("reconcile: %s", repairs)
        metrics.count_repairs(repairs.changes())
