"""Status callback ingestion with group commit.

Callbacks arrive in bursts (a campaign ending, Exotel retrying after an outage), and each must
be durable before it is answered. Committing each on its own costs a commit (and its fsync) per
callback; here concurrent callbacks share one: every request hands its callback to a writer
and waits, the writer stores whatever has gathered in one transaction of the one write path
(`app.calls.store`), and then answers every waiting request. Each request still gets its answer
only after its own callback is committed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.calls.callbacks import ReceivedCallback
from app.calls.store import CallStore
from app.db.models import EventOutcome

log = logging.getLogger(__name__)

MAX_BATCH = 256


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

    def __init__(self, engine: AsyncEngine, *, writers: int) -> None:
        self._engine = engine
        self._writers = writers
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
                try:
                    connection = connection or await self._engine.connect()
                    stored = await store_callbacks(connection, [p.received for p in batch])
                except Exception as exc:  # every waiting request learns what went wrong
                    await _discard(connection)
                    connection = None
                    for pending in batch:
                        if not pending.done.done():
                            pending.done.set_exception(exc)
                    continue
                for pending, result in zip(batch, stored, strict=True):
                    if not pending.done.done():  # its request may have been cancelled meanwhile
                        pending.done.set_result(result)
        finally:
            if connection is not None:
                await asyncio.shield(connection.close())


async def store_callbacks(
    connection: AsyncConnection, batch: list[ReceivedCallback], *, replayed: bool = False
) -> list[Stored]:
    """Store the callbacks in one transaction; what each did. `replayed` callbacks (from the
    spool) may have been stored already, by a replay cut short after its commit: those are
    left out."""
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
    log.debug("stored %d callbacks", len(batch))
    return [Stored(event["outcome"], store.app_id(event["call_id"])) for event in events]


async def _discard(connection: AsyncConnection | None) -> None:
    """Give the connection up, whatever state the failure left it in; never raises, so that
    its writer lives on."""
    if connection is not None:
        try:
            await connection.invalidate()
            await connection.close()
        except Exception:
            log.warning("callback writer: dropping its connection failed", exc_info=True)
