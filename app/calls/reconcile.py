"""Reconciliation: accounting for every call Exotel did not tell us the end of.

Exotel's callbacks can be lost, and a `Calls/connect` that timed out may or may not have dialled
(docs/exotel.md). One replica at a time (a periodic job, `app.jobs`) looks such calls up in
Exotel's call details, drawing on the account's budget at lower priority than placing calls, and
applies what it finds through the same state machine as callbacks, keeping what Exotel answered
among what was received for the call (`lookup`). It never sends a call again.

When, by what Exotel's bulk call details can say (they never list a call still in progress):
- A call with a SID that is not yet over is looked up a minute after it was sent, then after half
  its age, at most every RECONCILE_RECHECK_SECONDS (`CallState.look_up_later`), 100 SIDs a
  request. Not listed means still going on; listed, it is over. A lost callback is repaired
  within RECONCILE_RECHECK_SECONDS and a round or two of the call's end. A round lasts at most
  RECONCILE_INTERVAL_SECONDS: it waits for the budget it is owed, not past that.
- An `unknown` call without a SID (its send was cut short, or Exotel's answer lost) is looked for
  by its number around its dispatch, at once and then on the same schedule, and takes the SID
  of what is found.
  That nothing is listed proves nothing while the call could still be going on: it is `rejected`
  (never dialled) only once its own time_out + time_limit + RECONCILE_GRACE_SECONDS are past.
- An attempt that ended with a SID is owed its price, which Exotel fills in (`Price`) about five
  minutes after the end: it is looked up RECONCILE_PRICE_DELAY_SECONDS after the attempt ended,
  then after half the attempt's age (never sooner), 100 SIDs a request, until it is known or
  RECONCILE_PRICE_GIVE_UP_SECONDS have passed since the end (`wait_for_prices`). Given up by age
  rather than by count: the attempt's end is all it takes (no counter kept per attempt), and as
  the wait grows with the age the count is bounded too (about 15 with the defaults). Only the
  calls owed a price are in `price_wait_from`'s index, so a round never reads the others.
  Prices come last in a round: a call's status matters more than its cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import and_, exists, select, union, union_all
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.calls import ratelimit
from app.calls.dispatch import record_failure, schedule_lookup
from app.calls.received import ReceivedAnswer, status_from_exotel
from app.calls.state import (
    CallState,
    Failure,
    StatusUpdate,
    apply_price,
    apply_update,
    owed_prices,
    wait_for_prices,
)
from app.calls.store import CallStore
from app.config import ReconcileSettings
from app.db.clock import db_now
from app.db.models import (
    Call,
    CallStatus,
    Dial,
    EventOutcome,
    FailureKind,
    Receipt,
    RequestKind,
    lookup_due,
)
from app.db.statements import among, written_in
from app.exotel.client import MAX_SIDS_PER_LOOKUP, CallsPage, ExotelClient
from app.exotel.errors import ExotelError
from app.exotel.wire import ExotelCall
from app.logs import about
from app.metrics import Metrics

log = logging.getLogger(__name__)

# How far around our dispatch time Exotel's DateCreated of an `unknown` call may be.
MATCH_WINDOW = timedelta(minutes=5)
# No call costs a million rupees: a `Price` beyond is not believed (and ten attempts' still fit
# the total's column, numeric(12, 4)), nor one finer than its four decimals.
_MOST_A_CALL_COSTS = Decimal(1_000_000)
# How far back a callback that came for a SID before its call had it is looked for: the race
# lasts a transaction; an hour also covers callbacks replayed from a spool after an outage.
_ORPHANS_WITHIN = timedelta(hours=1)
# The calls a round looks up, at most, of each kind (by SID; by number).
_A_ROUND = 1000
_PRICE_STEP = Decimal("0.0001")
_NO_RECORD = Failure(
    FailureKind.EXOTEL_NO_RECORD, "Exotel has no record of this call: it was not dialled"
)


@dataclass
class Repairs:
    """What one round did: the figures operators watch."""

    lookups: int = 0  # requests to Exotel's call details
    repaired: int = 0  # calls whose state a look-up changed
    not_dialled: int = 0  # `unknown` calls Exotel has no record of, long after: `rejected`
    attached: int = 0  # stored callbacks for SIDs we had not known, now applied
    priced: int = 0  # attempts whose price was learnt
    charged: Decimal = field(default=Decimal(0))  # their prices, in all (INR)

    def __str__(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))

    def changes(self) -> dict[str, int]:
        """What the round changed, by kind (look-ups change nothing; they are Exotel requests)."""
        counts = (f.name for f in fields(self) if f.name not in ("lookups", "charged"))
        return {name: getattr(self, name) for name in counts}


class OutOfBudget(Exception):
    """The account's budget has no room for a look-up now; the round stops here."""


@dataclass(frozen=True)
class _Round:
    sessionmaker: async_sessionmaker[AsyncSession]
    exotel: ExotelClient
    settings: ReconcileSettings
    budget: ratelimit.Budget
    repairs: Repairs
    # A round ends by then (time.monotonic()): the next carries on.
    deadline: float

    async def spend_lookup(self) -> None:
        """A request from the budget, waiting for it if it comes before the round's deadline
        (under a backlog a refused look-up is owed the next slot that frees, and one frees every
        window / limit seconds); else OutOfBudget, and the next round carries on."""
        while True:
            wait = await ratelimit.acquire_lookup(self.sessionmaker, self.budget)
            if wait <= 0:
                break
            if time.monotonic() + wait > self.deadline:
                raise OutOfBudget
            await asyncio.sleep(wait)
        self.repairs.lookups += 1

    async def every_page(self, first: CallsPage) -> list[ExotelCall]:
        """The calls of `first` and of every page after it (Metadata.NextPageUri), each page
        a request from the budget."""
        calls, page = list(first.calls), first
        while page.next_page_uri:
            await self.spend_lookup()
            try:
                page = await self.exotel.next_page(page.next_page_uri)
            except ValueError:  # a page elsewhere than Exotel's API: never followed
                log.warning("reconcile: call details named a next page off the API; stopped")
                break
            calls += page.calls
        return calls


async def reconcile_once(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    exotel: ExotelClient,
    settings: ReconcileSettings,
    budget: ratelimit.Budget,
) -> Repairs:
    """One round of reconciliation. Safe to run anywhere; the runner keeps it to one replica."""
    deadline = time.monotonic() + settings.interval_seconds
    round_ = _Round(sessionmaker, exotel, settings, budget, Repairs(), deadline)
    async with sessionmaker() as session, session.begin():
        round_.repairs.attached = await _attach_orphan_events(session)
    with contextlib.suppress(OutOfBudget):
        await _look_up_by_sid(round_)
        await _look_up_unknown_by_number(round_)
        await _look_up_prices(round_)
    return round_.repairs


async def _attach_orphan_events(session: AsyncSession) -> int:
    """Callbacks stored for a SID before any call had it (the dispatch that learnt the SID may
    have raced them)."""
    # A call's SIDs: its latest attempt's, and every attempt's in `dial`. Only the recent
    # callbacks: every way a call learns a SID takes what came for it (`CallStore.learn_sid`),
    # so those this finds came while the call was learning it; not the day of callbacks for
    # no call of ours that retention keeps (each round would read them all).
    since = await db_now(session) - _ORPHANS_WITHIN
    orphaned = and_(Receipt.call_id.is_(None), Receipt.received_at > since)
    known = union(
        select(Call.id, Call.sid).where(exists().where(Receipt.sid == Call.sid, orphaned)),
        select(Dial.call_id, Dial.sid).where(exists().where(Receipt.sid == Dial.sid, orphaned)),
    )
    found = (await session.execute(known)).all()
    store = await CallStore.of(session)
    await store.lock(ids=[call_id for call_id, _ in found])
    for call_id, sid in found:
        call = store.get(call_id)
        assert call is not None
        store.adopt_orphans(call, sid)
    await store.flush()
    return store.attached


def _overdue(call: Call, settings: ReconcileSettings, now: datetime) -> bool:
    """Long enough since dispatch that the call must have ended."""
    started = call.dispatched_at or call.created_at
    lasts = (call.time_out or 60) + (call.time_limit or settings.default_time_limit_seconds)
    return now > started + timedelta(seconds=lasts + settings.grace_seconds)


async def _due(session: AsyncSession, *, with_sid: bool) -> list[Call]:
    """Calls due for a look-up this round, longest due first: one never looked up is due since
    it was made. Each status is read in the order of its index (`ix_call_lookup_due`, of the
    live calls only), up to a round's worth: never every live call, sorted."""
    now = await db_now(session)
    due = lookup_due()
    unknown = written_in(Call.status, CallStatus.UNKNOWN.value)
    if with_sid:
        # The statuses written in (see written_in): the index holds only theirs.
        in_progress = written_in(Call.status, CallStatus.IN_PROGRESS.value)
        wanted = [
            and_(unknown, Call.sid.is_not(None)),
            and_(in_progress, Call.dispatched_at.is_not(None), Call.sid.is_not(None)),
        ]
    else:
        wanted = [and_(unknown, Call.sid.is_(None))]
    ids = union_all(
        *(
            select(Call.id).where(where, due <= now).order_by(due).limit(_A_ROUND)
            for where in wanted
        )
    )
    query = select(Call).where(among(Call.id, ids)).order_by(due, Call.id).limit(_A_ROUND)
    return list(await session.scalars(query))


async def _look_up_by_sid(round_: _Round) -> None:
    """Calls whose SID we know but not their end: bulk call details, 100 SIDs a request."""
    async with round_.sessionmaker() as session:
        due = await _due(session, with_sid=True)
    for start in range(0, len(due), MAX_SIDS_PER_LOOKUP):
        chunk = due[start : start + MAX_SIDS_PER_LOOKUP]
        await round_.spend_lookup()
        try:
            first = await round_.exotel.list_calls(sids=[c.sid for c in chunk if c.sid])
            found = await round_.every_page(first)
        except ExotelError as exc:
            log.warning("reconcile: call details look-up failed: %s", exc)
            return
        by_sid = {exotel_call.sid: exotel_call for exotel_call in found}
        async with round_.sessionmaker() as session, session.begin():
            store = await CallStore.of(session)
            await store.lock(ids=[c.id for c in chunk])
            now = await store.now()
            for due_call in chunk:
                call = store.get(due_call.id)
                assert call is not None
                schedule_lookup(call, now, round_.settings)
                if (exotel_call := by_sid.get(call.sid or "")) is not None:
                    round_.repairs.repaired += await _apply_details(store, call, exotel_call)
            await store.flush()


async def _look_up_unknown_by_number(round_: _Round) -> None:
    """`unknown` calls without a SID: Exotel's calls from that number around our dispatch."""
    async with round_.sessionmaker() as session:
        due = await _due(session, with_sid=False)
    for due_call in due:
        started = due_call.dispatched_at or due_call.created_at
        await round_.spend_lookup()
        try:
            first = await round_.exotel.list_calls(
                from_number=due_call.from_number,
                created_after=started - MATCH_WINDOW,
                created_before=started + MATCH_WINDOW,
            )
            found = await round_.every_page(first)
        except ExotelError as exc:
            log.warning("reconcile: call details look-up failed: %s", exc)
            return
        async with round_.sessionmaker() as session, session.begin():
            store = await CallStore.of(session)
            await store.lock(ids=[due_call.id], sids=[c.sid for c in found])
            call = store.get(due_call.id)
            assert call is not None
            now = await store.now()
            schedule_lookup(call, now, round_.settings)
            match = _first_unclaimed(store, found, near=started)
            if match is not None and store.learn_sid(call, match.sid):
                round_.repairs.repaired += await _apply_details(store, call, match)
            elif _overdue(due_call, round_.settings, now) and call.status == CallStatus.UNKNOWN:
                # Exotel lists every call that ended; long after this one would have, it has
                # none from this number: it was never dialled.
                outcome = await record_failure(store, call, CallStatus.REJECTED, _NO_RECORD)
                nothing = ReceivedAnswer(RequestKind.LOOKUP, problem=_NO_RECORD.message)
                await store.add_answer(call, nothing, outcome)
                round_.repairs.not_dialled += 1
            await store.flush()


def _first_unclaimed(
    store: CallStore, found: Sequence[ExotelCall], *, near: datetime
) -> ExotelCall | None:
    """Of Exotel's calls from the number, the one closest to `near` that no call of ours has."""
    free = [c for c in found if store.holding(c.sid) is None and c.date_created is not None]
    return min(free, key=lambda c: abs(c.date_created - near), default=None)  # type: ignore[operator]


async def _apply_details(store: CallStore, call: CallState, details: ExotelCall) -> int:
    """Apply call details through the state machine, and keep them with what they did; 1 if
    they changed the call."""
    status = status_from_exotel(details.status)
    if status is None:
        problem = f"{details.status!r} is not a call status"
        answer = ReceivedAnswer.of(RequestKind.LOOKUP, details, problem=problem)
        await store.add_answer(call, answer, EventOutcome.UNREADABLE)
        return 0
    update = StatusUpdate(
        status=status,
        date_updated=details.date_updated,
        date_updated_raw=details.date_updated_raw,
        recording_url=details.recording_url,
        duration=details.duration,
        conversation_duration=details.conversation_duration,
        heard_at=await store.now(),
    )
    outcome = apply_update(call, update)
    await store.add_answer(call, ReceivedAnswer.of(RequestKind.LOOKUP, details), outcome)
    if outcome == EventOutcome.APPLIED:
        log.info("reconcile: call %s is %s", call.id, call.status, extra=about(call.id, call.sid))
        return 1
    return 0


async def _look_up_prices(round_: _Round) -> None:
    """Ended attempts without Exotel's price: bulk call details, 100 SIDs a request, whole calls
    in each."""
    settings = round_.settings
    delay = timedelta(seconds=settings.price_delay_seconds)
    give_up = timedelta(seconds=settings.price_give_up_seconds)
    async with round_.sessionmaker() as session:
        now = await db_now(session)
        due = (
            select(Call.id, Call.attempts)
            .where(Call.price_wait_from <= now - delay)
            .order_by(Call.price_wait_from)
            .limit(1000)
        )
        owed = {
            call_id: [attempt.sid for attempt in owed_prices(attempts, now=now, give_up=give_up)]
            for call_id, attempts in await session.execute(due)
        }
    for chunk in _whole_calls(owed, MAX_SIDS_PER_LOOKUP):
        sids = [sid for call_id in chunk for sid in owed[call_id]]
        asked = set(sids)
        found: list[ExotelCall] = []
        if sids:  # else the calls' prices are all given up on: only their schedule changes
            await round_.spend_lookup()
            try:
                found = await round_.every_page(await round_.exotel.list_calls(sids=sids))
            except ExotelError as exc:
                log.warning("reconcile: call details look-up for prices failed: %s", exc)
                return
        by_sid = {exotel_call.sid: exotel_call for exotel_call in found}
        learnt = Repairs()
        async with round_.sessionmaker() as session, session.begin():
            store = await CallStore.of(session)
            await store.lock(ids=chunk)
            now = await store.now()
            for call_id in chunk:
                call = store.get(call_id)
                assert call is not None
                for owed_price in owed_prices(call.attempts, now=now, give_up=give_up):
                    details = by_sid.get(owed_price.sid)
                    if details is not None and owed_price.sid in asked:
                        await _apply_price(store, call, owed_price.n, details, learnt)
                wait_for_prices(call, now=now, asked=asked, delay=delay, give_up=give_up)
            await store.flush()
        round_.repairs.priced += learnt.priced
        round_.repairs.charged += learnt.charged


async def _apply_price(
    store: CallStore, call: CallState, n: int, details: ExotelCall, learnt: Repairs
) -> None:
    """Apply attempt `n`'s price, when call details carry one, and keep the answer with it."""
    price = details.price
    if price is None and details.price_raw is None:
        return  # not filled in yet: nothing learnt, nothing kept
    if price is None or price >= _MOST_A_CALL_COSTS or price != price.quantize(_PRICE_STEP):
        problem = f"Price {details.price_raw!r} is not an amount"
        answer = ReceivedAnswer.of(RequestKind.LOOKUP, details, problem=problem)
        await store.add_answer(call, answer, EventOutcome.UNREADABLE, attempt=n)
        return
    outcome = apply_price(call, n, price)
    await store.add_answer(call, ReceivedAnswer.of(RequestKind.LOOKUP, details), outcome, attempt=n)
    if outcome == EventOutcome.APPLIED:
        learnt.priced += 1
        learnt.charged += price
        log.info("reconcile: call %s attempt %d cost %s", call.id, n, price, extra=about(call.id))


def _whole_calls(sids: dict[uuid.UUID, list[str]], most: int) -> list[list[uuid.UUID]]:
    """The calls in groups whose SIDs are at most `most` (a call's attempts are never split)."""
    groups: list[list[uuid.UUID]] = []
    size = 0
    for call_id, call_sids in sids.items():
        if not groups or size + len(call_sids) > most:
            groups.append([])
            size = 0
        groups[-1].append(call_id)
        size += len(call_sids)
    return groups


async def reconcile(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    exotel: ExotelClient,
    settings: ReconcileSettings,
    budget: ratelimit.Budget,
    metrics: Metrics,
) -> None:
    """One round, logged and counted: the periodic job one replica at a time runs."""
    repairs = await reconcile_once(
        sessionmaker=sessionmaker, exotel=exotel, settings=settings, budget=budget
    )
    log.info("reconcile: %s", repairs)
    metrics.count_repairs(repairs.changes())
    metrics.count_charged(repairs.charged)
