"""The account's request budget, shared by every replica: Exotel allows 200 requests a minute
per account, look-ups included, and answers 429 beyond (docs/exotel.md).

Every request is logged in `exotel_request` at the database's time. A grant happens inside a
transaction that holds the lock on the account's `exotel_throttle` row, so grants are serialised
across replicas, and a grant is only given while fewer than `limit` requests were granted in the
last `window + margin` seconds: no window of `window` seconds ever holds more than `limit`
requests, even allowing for up to `margin` seconds between a grant and Exotel seeing the request.
Of that margin the sender keeps half for itself: a request not on its way within half the margin
of its grant (its replica stalled, its commit came back late) is not sent on that grant.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.clock import db_now
from app.db.models import Call, CallStatus, ExotelRequest, Throttle
from app.db.statements import written_in

log = logging.getLogger(__name__)

THROTTLE = "exotel"


class RequestKind(enum.StrEnum):
    CONNECT = "connect"
    LOOKUP = "lookup"


@dataclass(frozen=True)
class Budget:
    limit: int
    window: float
    margin: float
    # Under a dispatch backlog, look-ups get at most this share of the window: they draw from
    # the same budget as placing calls, at lower priority, but are never starved (a look-up
    # refused for want of budget gets the next slot that frees: `lookup_wanted_until`).
    lookup_share: float = 0.1

    @property
    def span(self) -> timedelta:
        return timedelta(seconds=self.window + self.margin)

    @property
    def lookup_limit(self) -> int:
        return max(1, int(self.limit * self.lookup_share))

    def fresh(self, granted: float) -> bool:
        """Whether a request granted at `granted` (`time.monotonic()`, read once the grant's
        time was) may still be sent: within half the margin, the other half being the way to
        Exotel. Sent later, it could land in a window that later grants filled."""
        return time.monotonic() - granted <= self.margin / 2


async def lock(session: AsyncSession) -> datetime:
    """Take the account's lock for this transaction; the database's time once it is held."""
    locked = select(Throttle.name).where(Throttle.name == THROTTLE).with_for_update()
    if await session.scalar(locked) is None:  # the migrations make it; an emptied table not
        await session.execute(insert(Throttle).values(name=THROTTLE).on_conflict_do_nothing())
        await session.execute(locked)
    return await db_now(session)


async def seconds_until_free(
    session: AsyncSession,
    budget: Budget,
    *,
    now: datetime,
    kind: RequestKind,
    backlog: bool = False,
) -> float:
    """0 if a request of `kind` may be made now, else how long until one may. Call under lock()."""
    wait, _ = await _free_in(session, budget, now=now, kind=kind, backlog=backlog)
    return wait


async def _free_in(
    session: AsyncSession, budget: Budget, *, now: datetime, kind: RequestKind, backlog: bool
) -> tuple[float, bool]:
    """The seconds until a request of `kind` may be made (0: now), and whether what holds it
    back is the window being full (rather than a 429's pause or the look-ups' share)."""
    paused_until, lookup_wanted_until = (
        await session.execute(
            select(Throttle.paused_until, Throttle.lookup_wanted_until).where(
                Throttle.name == THROTTLE
            )
        )
    ).one()
    if paused_until is not None and paused_until > now:
        return (paused_until - now).total_seconds(), False
    await session.execute(delete(ExotelRequest).where(ExotelRequest.at <= now - budget.span))
    recent = (
        await session.execute(
            select(ExotelRequest.at, ExotelRequest.kind).order_by(ExotelRequest.at)
        )
    ).all()
    capacity = budget.limit
    owed = lookup_wanted_until is not None and lookup_wanted_until > now
    if kind == RequestKind.CONNECT and owed and capacity > 1:
        # A look-up found the window full: the next slot to come free is its, or a backlog
        # that takes every slot as it frees would starve reconciliation.
        capacity -= 1
    if len(recent) >= capacity:
        # Free once the oldest requests leave the window, enough to leave room for one more.
        oldest_to_leave: datetime = recent[len(recent) - capacity].at
        return (oldest_to_leave + budget.span - now).total_seconds(), True
    if kind == RequestKind.LOOKUP and backlog:
        lookups = [at for at, recorded_kind in recent if recorded_kind == RequestKind.LOOKUP]
        if len(lookups) >= budget.lookup_limit:
            oldest_lookup = lookups[len(lookups) - budget.lookup_limit]
            return (oldest_lookup + budget.span - now).total_seconds(), False
    return 0.0, False


def spend(session: AsyncSession, *, now: datetime, kind: RequestKind) -> ExotelRequest:
    """Record a granted request. Call under lock(), after seconds_until_free() said 0. Its
    time may be moved later while the lock is held (a dispatch claim's grants count from its
    end), never earlier."""
    grant = ExotelRequest(at=now, kind=kind)
    session.add(grant)
    return grant


async def pause(session: AsyncSession, *, until: datetime) -> None:
    """Hold every replica back until `until` (database time), after Exotel answered 429."""
    await lock(session)
    throttle = await session.get(Throttle, THROTTLE)
    assert throttle is not None
    if throttle.paused_until is None or throttle.paused_until < until:
        throttle.paused_until = until


async def acquire(
    session: AsyncSession, budget: Budget, *, kind: RequestKind, backlog: bool = False
) -> float:
    """Grant one request of `kind` now if the budget allows: 0.0, and the grant is recorded in
    this transaction; otherwise the seconds to wait."""
    now = await lock(session)
    wait, full = await _free_in(session, budget, now=now, kind=kind, backlog=backlog)
    if wait <= 0:
        spend(session, now=now, kind=kind)
    if kind == RequestKind.LOOKUP and (full or wait <= 0):
        # Refused by a full window, the look-up is owed the next slot that frees (for a window
        # after it frees, time for reconciliation to come for it); granted, nothing more.
        throttle = await session.get(Throttle, THROTTLE)
        assert throttle is not None
        owed_until = now + timedelta(seconds=wait) + budget.span
        throttle.lookup_wanted_until = owed_until if full else None
    return max(wait, 0.0)


async def acquire_lookup(sessionmaker: async_sessionmaker[AsyncSession], budget: Budget) -> float:
    """acquire() a look-up, in a transaction of its own, at lower priority than placing calls
    while any wait to be placed: 0.0 once it is granted and committed (send it now), else the
    seconds to wait. A grant that is no longer `fresh` when its commit comes back is not used:
    the budget is asked again."""
    queued = written_in(Call.status, CallStatus.QUEUED.value)  # a literal: see written_in
    while True:
        async with sessionmaker() as session, session.begin():
            backlog = await session.scalar(select(exists().where(queued)))
            wait = await acquire(session, budget, kind=RequestKind.LOOKUP, backlog=bool(backlog))
            granted = time.monotonic()
        if wait > 0 or budget.fresh(granted):
            return wait
        log.warning("a look-up's grant went stale before it could be sent; asking again")


async def paused_for(session: AsyncSession) -> float:
    """How many more seconds every replica is held back after Exotel answered 429 (0: none)."""
    paused_until = await session.scalar(
        select(Throttle.paused_until).where(Throttle.name == THROTTLE)
    )
    if paused_until is None:
        return 0.0
    return max((paused_until - await db_now(session)).total_seconds(), 0.0)
