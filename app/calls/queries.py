"""Reading calls: one by id or SID, pages of them, their callbacks, batches, and the figures
the status page and the metrics show. Nothing here writes."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import Select, Uuid, func, literal, select, tuple_, union_all
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.calls import cursors
from app.calls.counts import calls_by_status
from app.calls.errors import BatchNotFound, CallNotFound, InvalidField
from app.db.clock import db_now
from app.db.models import Batch, Call, CallStatus, Dial, ExotelRequest, Receipt
from app.db.statements import among, written_in

# Our ids, and Exotel's SIDs (opaque, about 32 characters).
_PLAUSIBLE_REF = re.compile(r"[\w-]{1,64}")


@dataclass(frozen=True)
class BatchFigures:
    batch: Batch
    counts: dict[str, int]  # its calls by status
    price: Decimal | None  # what its calls cost, in all, as far as known (None: nothing yet)


async def batch_summary(session: AsyncSession, batch_id: uuid.UUID) -> BatchFigures:
    batch = await session.get(Batch, batch_id)
    if batch is None:
        raise BatchNotFound(batch_id)
    rows = await session.execute(
        select(Call.status, func.count(), func.sum(Call.price))
        .where(Call.batch_id == batch_id)
        .group_by(Call.status)
    )
    counts, prices = {}, []
    for status, count, price in rows:
        counts[str(status)] = count
        if price is not None:
            prices.append(price)
    return BatchFigures(batch, counts, sum(prices, Decimal(0)) if prices else None)


@dataclass(frozen=True)
class Overview:
    """Every call at a glance: what operators watch."""

    calls_by_status: dict[str, int]
    queue_depth: int
    oldest_queued_at: datetime | None
    now: datetime  # the database's time, when these were read

    @property
    def oldest_queued_age_seconds(self) -> float:
        """How long the oldest queued call has waited (0 when none waits)."""
        if self.oldest_queued_at is None:
            return 0.0
        return max((self.now - self.oldest_queued_at).total_seconds(), 0.0)


async def overview(session: AsyncSession) -> Overview:
    by_status = await calls_by_status(session)
    oldest = await session.scalar(
        select(func.min(Call.created_at)).where(written_in(Call.status, CallStatus.QUEUED.value))
    )
    return Overview(
        calls_by_status=by_status,
        queue_depth=by_status.get(CallStatus.QUEUED, 0),
        oldest_queued_at=oldest,
        now=await db_now(session),
    )


async def find_call(session: AsyncSession, ref: str) -> Call:
    """A call by our id or by Exotel's SID."""
    if not _PLAUSIBLE_REF.fullmatch(ref):
        raise CallNotFound(ref)  # and the database never sees it (PostgreSQL refuses NULs)
    # The latest attempt's SID is the call's own; an earlier one's is among its dials. A union,
    # each part read from its own index.
    ids = [select(Call.id).where(Call.sid == ref), select(Dial.call_id).where(Dial.sid == ref)]
    with contextlib.suppress(ValueError):  # not a UUID: only a SID can match
        ids.append(select(literal(uuid.UUID(ref), Uuid())))
    call = (await session.scalars(select(Call).where(among(Call.id, union_all(*ids))))).first()
    if call is None:
        raise CallNotFound(ref)
    return call


async def list_calls(
    session: AsyncSession,
    *,
    statuses: Sequence[CallStatus] = (),
    from_number: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    batch_id: uuid.UUID | None = None,
    digits: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Call], str | None]:
    """A page of calls, newest first, and the cursor of the next page (None at the end)."""
    query = select(Call)
    if from_number:
        query = query.where(Call.from_number == from_number)
    if created_after:
        query = query.where(Call.created_at >= created_after)
    if created_before:
        query = query.where(Call.created_at < created_before)
    if batch_id:
        query = query.where(Call.batch_id == batch_id)
    if digits is not None:
        query = query.where(Call.digits == digits)
    if cursor:
        # A row comparison, which the index on (created_at, id) can start its scan at: the
        # same condition spelt with OR is a filter, read through every newer call first.
        query = query.where(tuple_(Call.created_at, Call.id) < tuple_(*_decode_cursor(cursor)))
    newest_first = (Call.created_at.desc(), Call.id.desc())
    if statuses:
        # Each status's newest, read in its index's order, then merged: two statuses as one
        # condition are read by walking every call newest first for them, which finds a handful
        # of queued calls among millions only at the end. Each status written in (written_in).
        each = [
            query.where(written_in(Call.status, status.value)).order_by(*newest_first)
            for status in dict.fromkeys(statuses)
        ]
        merged = union_all(*(part.limit(limit + 1) for part in each)).subquery()
        call = aliased(Call, merged)
        query = select(call).order_by(call.created_at.desc(), call.id.desc())
    else:
        query = query.order_by(*newest_first)
    calls = list(await session.scalars(query.limit(limit + 1)))
    if len(calls) <= limit:
        return calls, None
    last = calls[limit - 1]
    return calls[:limit], _encode_cursor(last)


def _encode_cursor(call: Call) -> str:
    return cursors.encode([call.created_at.isoformat(), str(call.id)])


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    created_at, call_id = cursors.decode(cursor, field="cursor", length=2)
    try:
        position = datetime.fromisoformat(created_at), uuid.UUID(call_id)
    except (ValueError, TypeError) as exc:
        raise InvalidField("cursor", "not a cursor this service gave out") from exc
    if position[0].tzinfo is None:
        raise InvalidField("cursor", "not a cursor this service gave out")
    return position


async def list_events(session: AsyncSession, *, call_id: uuid.UUID) -> list[Receipt]:
    query = select(Receipt).where(Receipt.call_id == call_id).order_by(Receipt.id)
    return list(await session.scalars(query))


# --- the status page -----------------------------------------------------------------------


async def exotel_requests_granted(
    session: AsyncSession, *, within_seconds: float
) -> dict[str, int]:
    """Requests granted from the account's budget in the last `within_seconds`, by kind
    (`connect`, `lookup`), on the database's clock: the one the grants are logged at."""
    since = await db_now(session) - timedelta(seconds=within_seconds)
    counts = await session.execute(
        select(ExotelRequest.kind, func.count())
        .where(ExotelRequest.at > since)
        .group_by(ExotelRequest.kind)
    )
    return {str(kind): count for kind, count in counts}


async def recent_batches(
    session: AsyncSession, *, limit: int
) -> list[tuple[Batch, dict[str, int]]]:
    """The newest batches, newest first, each with its calls counted by status."""
    query = select(Batch).order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit)
    batches = list(await session.scalars(query))
    counts: dict[uuid.UUID | None, dict[str, int]] = {batch.id: {} for batch in batches}
    if batches:
        rows = await session.execute(
            select(Call.batch_id, Call.status, func.count())
            .where(Call.batch_id.in_(list(counts)))
            .group_by(Call.batch_id, Call.status)
        )
        for batch_id, status, count in rows:
            counts[batch_id][str(status)] = count
    return [(batch, counts[batch.id]) for batch in batches]


# `status = 'scheduled'` written into the statement, not sent as a parameter: a plan made for
# any status (a prepared statement's generic plan) could not use the partial index
# `ix_call_scheduled_next_attempt_at`, whose condition this is.
SCHEDULED = written_in(Call.status, CallStatus.SCHEDULED.value)


def soonest_scheduled(limit: int) -> Select[Call]:
    """The scheduled calls next due, soonest first: read in the partial index's order."""
    return select(Call).where(SCHEDULED).order_by(Call.next_attempt_at).limit(limit)


@dataclass(frozen=True)
class Schedule:
    """The calls that wait, `scheduled`, and the next of them due."""

    due: int  # their time has come: the dispatcher takes them as the budget allows
    soonest: list[Call]


async def schedule(session: AsyncSession, *, now: datetime, limit: int) -> Schedule:
    due = await session.scalar(select(func.count()).where(SCHEDULED, Call.next_attempt_at <= now))
    return Schedule(due=due or 0, soonest=list(await session.scalars(soonest_scheduled(limit))))
