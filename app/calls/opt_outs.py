"""Opt-outs: numbers that must never be called, whoever asks.

Every function takes the caller's session or connection and never commits: the caller owns the
transaction. Numbers are E.164 (`app.calls.phone.to_e164`), as they are stored. Statements are
Core, built once from the table metadata, so that Core code holding an `AsyncConnection` (the
dispatch claim, the one write path) uses them as a session does.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import bindparam, delete, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.calls import cursors
from app.calls.errors import InvalidField
from app.calls.phone import to_e164
from app.db.clock import db_now
from app.db.models import OptOut
from app.db.statements import one_of, table_of
from app.logs import mask

log = logging.getLogger(__name__)

Db = AsyncSession | AsyncConnection

_TABLE = table_of(OptOut)
_COLUMNS = (_TABLE.c.number, _TABLE.c.reason, _TABLE.c.source, _TABLE.c.created_at)
_INSERT = (
    insert(_TABLE).on_conflict_do_nothing(index_elements=[_TABLE.c.number]).returning(*_COLUMNS)
)
_GET = select(*_COLUMNS).where(_TABLE.c.number == bindparam("number"))
_DELETE = delete(_TABLE).where(_TABLE.c.number == bindparam("number")).returning(_TABLE.c.number)
_OPTED_OUT = select(_TABLE.c.number).where(one_of(_TABLE.c.number, "numbers"))
# Newest first, ties (one clock reading) by number: the order of the index on both.
_NEWEST_FIRST = (_TABLE.c.created_at.desc(), _TABLE.c.number.desc())


class OptOutSource(enum.StrEnum):
    """Who opted the number out."""

    API = "api"  # a service, through `POST /opt-outs`
    PASSTHRU = "passthru"  # the customer, keying PASSTHRU_OPT_OUT_DIGITS in a flow


@dataclass(frozen=True)
class OptOutEntry:
    number: str  # E.164
    reason: str | None
    source: OptOutSource
    created_at: datetime


def _entry(number: str, reason: str | None, source: str, created_at: datetime) -> OptOutEntry:
    return OptOutEntry(number, reason, OptOutSource(source), created_at)


async def add(
    db: Db, *, number: str, reason: str | None = None, source: OptOutSource = OptOutSource.API
) -> tuple[OptOutEntry, bool]:
    """Opt `number` out. Returns the entry, and whether it is new: a number already opted out
    keeps its first reason, source and time, and is no error.

    Concurrent adds of one number meet at the primary key: one insert wins, the others read it.
    """
    row = {
        "number": number,
        "reason": reason,
        "source": source.value,
        "created_at": await db_now(db),
    }
    # A loop for the rare race with a removal: the insert met the row, which was gone by the
    # read (each statement sees what was committed when it began).
    while True:
        inserted = (await db.execute(_INSERT, row)).first()
        if inserted is not None:
            log.info("%s opted out (%s)", mask(number), source)
            return _entry(*inserted), True
        if (stored := await get(db, number=number)) is not None:
            return stored, False


async def remove(db: Db, *, number: str) -> bool:
    """Take `number` off the list: it may be called again. Whether it was on it."""
    removed = (await db.execute(_DELETE, {"number": number})).first() is not None
    if removed:
        log.info("%s no longer opted out", mask(number))
    return removed


async def get(db: Db, *, number: str) -> OptOutEntry | None:
    row = (await db.execute(_GET, {"number": number})).first()
    return _entry(*row) if row is not None else None


async def list_page(
    db: Db, *, limit: int = 50, cursor: str | None = None
) -> tuple[list[OptOutEntry], str | None]:
    """A page of opt-outs, newest first, and the cursor of the next page (None at the end)."""
    query = select(*_COLUMNS)
    if cursor:
        # A row comparison: PostgreSQL walks the (created_at, number) index from the position.
        query = query.where(
            tuple_(_TABLE.c.created_at, _TABLE.c.number) < tuple_(*_decode_cursor(cursor))
        )
    rows = (await db.execute(query.order_by(*_NEWEST_FIRST).limit(limit + 1))).all()
    entries = [_entry(*row) for row in rows]
    if len(entries) <= limit:
        return entries, None
    last = entries[limit - 1]
    return entries[:limit], cursors.encode([last.created_at.isoformat(), last.number])


async def opted_out(db: Db, numbers: Iterable[str]) -> set[str]:
    """Which of these E.164 numbers are opted out: one statement, whatever their number."""
    wanted = list(set(numbers))
    if not wanted:
        return set()
    return set((await db.execute(_OPTED_OUT, {"numbers": wanted})).scalars())


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    created_at, number = cursors.decode(cursor, field="cursor", length=2)
    try:
        at = datetime.fromisoformat(created_at)
        if at.tzinfo is None or to_e164(number) != number:
            raise ValueError(created_at, number)
        # In UTC here: a time at an end of the calendar can overflow there, and would in the
        # driver. The number re-read: text the database would refuse whole (a NUL) never goes.
        return at.astimezone(UTC), number
    except (ValueError, TypeError, OverflowError) as exc:  # InvalidPhoneNumber is a ValueError
        raise InvalidField("cursor", "not a cursor this service gave out") from exc
