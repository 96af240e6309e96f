"""Status callback ingestion with group commit.

Callbacks arrive in bursts (a campaign ending, Exotel retrying after an outage), and each must
be durable before it is answered. Committing each on its own costs a commit (and its fsync) per
callback; here concurrent callbacks share one: every request hands its callback to a writer
and waits, the writer stores whatever has gathered in one transaction of the one write path
(`app.calls.store`), and then answers every waiting request. Each request still gets its answer
only after its own callback is committed.

One callback never fails the others: when a batch fails for any cause but the database being
down, each of its callbacks is stored in a transaction of its own, and one that still cannot be
stored as read is kept as received, `unreadable`, with why (`store_alone`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.calls import opt_outs
from app.calls.received import ReceivedCallback
from app.calls.store import CallStore
from app.db.models import EventOutcome, RequestKind
from app.db.session import is_database_down

log = logging.getLogger(__name__)

MAX_BATCH = 256
_PROBLEM_KEPT = 500  # characters of why a callback could not be stored as read
_TRIES = 3

# PASSTHRU_OPT_OUT_DIGITS: per app id, the digits that opt the customer out.
OptOutDigits = Mapping[str, Collection[str]]
NO_OPT_OUTS: OptOutDigits = MappingProxyType({})


@dataclass(frozen=True)
class Stored:
    """What storing a callback did, and the app (flow) id of the call it was for, if any."""

    outcome: EventOutcome
    app_id: str | None = None


@dataclass
class _Pending:
    received: ReceivedCallback
    done: asyncio.Future[Stored] = field(default_factory=asyncio.Future)


class CallbackWriter:
    """`writers` transactions in flight at once: while one commits, the next batch gathers.
    Each writer keeps a connection of its own across batches (no check-out and ping per batch)
    and gives it up when a batch fails, whatever the cause."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        writers: int,
        opt_out_digits: OptOutDigits = NO_OPT_OUTS,
        applied: Callable[[], None] = lambda: None,
    ) -> None:
        self._engine = engine
        self._writers = writers
        self._opt_out_digits = opt_out_digits
        # Called once callbacks that changed their calls are committed: their events' deliveries
        # are due now (the deliverer's wake-up).
        self._applied = applied
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"callback writer {n}")
            for n in range(self._writers)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def store(self, received: ReceivedCallback) -> Stored:
        """Store `received` durably; returns what it did once it is committed. Raises what
        storing it raised (the database unreachable, say)."""
        pending = _Pending(received)
        self._queue.put_nowait(pending)
        return await pending.done

    async def _run(self) -> None:
        connection: AsyncConnection | None = None
        try:
            while True:
                batch = [await self._queue.get()]
                while len(batch) < MAX_BATCH and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                results: list[Stored | Exception]
                try:
                    connection = connection or await self._engine.connect()
                    results = [
                        *await store_callbacks(
                            connection,
                            [p.received for p in batch],
                            opt_out_digits=self._opt_out_digits,
                        )
                    ]
                except Exception as exc:
                    await _discard(connection)
                    connection = None
                    # Down, every waiting request learns it; else one of them is the cause.
                    down = is_database_down(exc)
                    results = [exc] * len(batch) if down else await self._one_by_one(batch)
                stored = [result for result in results if isinstance(result, Stored)]
                if any(one.outcome == EventOutcome.APPLIED for one in stored):
                    self._applied()
                for pending, result in zip(batch, results, strict=True):
                    if pending.done.done():  # its request may have been cancelled meanwhile
                        continue
                    if isinstance(result, Exception):
                        pending.done.set_exception(result)
                    else:
                        pending.done.set_result(result)
        finally:
            if connection is not None:
                await asyncio.shield(connection.close())

    async def _one_by_one(self, batch: list[_Pending]) -> list[Stored | Exception]:
        """Each callback of a batch that failed, in a transaction of its own."""
        results: list[Stored | Exception] = []
        try:
            async with self._engine.connect() as connection:
                for pending in batch:
                    try:
                        (stored,) = await store_alone(
                            connection, pending.received, opt_out_digits=self._opt_out_digits
                        )
                        results.append(stored)
                    except Exception as exc:
                        results.append(exc)
        except Exception as exc:  # the database went away meanwhile
            results += [exc] * (len(batch) - len(results))
        return results


async def store_alone(
    connection: AsyncConnection,
    received: ReceivedCallback,
    *,
    opt_out_digits: OptOutDigits = NO_OPT_OUTS,
    replayed: bool = False,
) -> list[Stored]:
    """Store one callback in a transaction of its own, as `store_callbacks` does; one that
    cannot be stored as read, for any cause but the database being down, is kept as received
    instead, `unreadable`, with why."""
    for tries_left in reversed(range(_TRIES)):
        try:
            return await store_callbacks(
                connection, [received], opt_out_digits=opt_out_digits, replayed=replayed
            )
        except Exception as exc:
            if is_database_down(exc):
                raise
            cause = getattr(exc, "orig", None) or exc  # the driver's own error, without the SQL
            # A deadlock or a serialization failure (SQLSTATE class 40) is the moment's, not
            # the callback's: tried again.
            if str(getattr(cause, "sqlstate", "")).startswith("40") and tries_left:
                continue
            problem = f"not storable as read: {type(cause).__name__}: {cause}"[:_PROBLEM_KEPT]
            log.error("callback %s kept unreadable, %s", received.receipt_id, problem, exc_info=exc)
            break
    async with connection.begin():
        store = CallStore(connection)
        await store.lock(ids=[received.call_id] if received.call_id else [])
        store.add_unreadable(received, problem)
        await store.flush()
    return [Stored(EventOutcome.UNREADABLE)]


async def store_callbacks(
    connection: AsyncConnection,
    batch: list[ReceivedCallback],
    *,
    opt_out_digits: OptOutDigits = NO_OPT_OUTS,
    replayed: bool = False,
) -> list[Stored]:
    """Store the callbacks in one transaction; what each did. `replayed` callbacks (from the
    spool) may have been stored already, by a replay cut short after its commit: those are
    left out. A customer who keys, in a flow's Passthru, digits that `opt_out_digits` names for
    the call's app is opted out in the same transaction."""
    async with connection.begin():
        store = CallStore(connection)
        if replayed:
            stored = await store.stored_receipts([r.receipt_id for r in batch])
            batch = [received for received in batch if received.receipt_id not in stored]
        await store.lock(
            ids=(r.named_call_id for r in batch if r.named_call_id),
            sids=(r.callback.call_sid for r in batch if r.callback.call_sid),
        )
        events = [store.add_callback(received) for received in batch]
        await store.flush()
        opting_out = {
            store.number(event["call_id"]): (
                f"keyed {received.passthru.digits} in the flow of app "
                f"{store.app_id(event['call_id'])}"
            )
            for received, event in zip(batch, events, strict=True)
            if _opts_out(received, event, store, opt_out_digits)
        }
        for number in sorted(opting_out):  # one order for every writer: no deadlock
            await opt_outs.add(
                connection,
                number=number,
                reason=opting_out[number],
                source=opt_outs.OptOutSource.PASSTHRU,
            )
    log.debug("stored %d callbacks", len(batch))
    return [Stored(event["outcome"], store.app_id(event["call_id"])) for event in events]


def _opts_out(
    received: ReceivedCallback,
    event: dict[str, Any],
    store: CallStore,
    opt_out_digits: OptOutDigits,
) -> bool:
    """Whether `received` is a Passthru request, new to its call, whose digits opt the
    customer out in the call's app."""
    if received.kind != RequestKind.PASSTHRU or event["outcome"] != EventOutcome.APPLIED:
        return False
    digits = received.passthru.digits
    app_id = store.app_id(event["call_id"]) or ""
    return digits is not None and digits in opt_out_digits.get(app_id, ())


async def _discard(connection: AsyncConnection | None) -> None:
    """Give the connection up, whatever state the failure left it in; never raises, so that
    its writer lives on."""
    if connection is not None:
        try:
            await connection.invalidate()
            await connection.close()
        except Exception:
            log.warning("callback writer: dropping its connection failed", exc_info=True)
