"""The callback spool: where a status callback goes when the database cannot take it.

Exotel retries a callback at most twice (docs/exotel.md), so a database outage longer than its
retries would lose callbacks if we answered 503. Instead a callback that cannot be stored is
written to a local file, fsync'd, before the 200 is sent; a replayer stores the spooled
callbacks once the database is back, in the order they came, and only then deletes each file.
Every callback carries a receipt id, stored uniquely with it, so a replay interrupted after its
commit stores nothing twice. Several worker processes may share one spool directory: each file
is replayed under an exclusive lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from datetime import datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from app.calls.ingest import NO_OPT_OUTS, OptOutDigits, store_alone
from app.calls.received import ReceivedCallback
from app.db.models import RequestKind
from app.db.session import is_database_down

log = logging.getLogger(__name__)


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.failed = directory / "failed"  # files that cannot be stored, kept for a person

    def open(self) -> None:
        self.failed.mkdir(parents=True, exist_ok=True)

    async def put(self, received: ReceivedCallback) -> None:
        """Write `received` durably. Raises OSError if it could not be (disk full, read-only)."""
        await asyncio.to_thread(self._write, received)

    def pending(self) -> list[Path]:
        """Spooled callbacks, oldest first (names start with the time they were spooled)."""
        return sorted(self.directory.glob("*.json"))

    def _write(self, received: ReceivedCallback) -> None:
        record = {
            "receipt_id": str(received.receipt_id),
            "call_id": str(received.call_id) if received.call_id else None,
            "method": received.method,
            "content_type": received.content_type,
            "payload": received.payload,
            "received_at": received.received_at.isoformat(),
            "kind": received.kind,
        }
        name = f"{time.time_ns():020d}-{received.receipt_id}.json"
        partial = self.directory / f".{name}.partial"  # not *.json: never replayed half-written
        with partial.open("w") as file:
            json.dump(record, file)
            file.flush()
            os.fsync(file.fileno())
        partial.rename(self.directory / name)
        _fsync_directory(self.directory)  # the rename itself must survive a crash

    async def replay(
        self, engine: AsyncEngine, *, opt_out_digits: OptOutDigits = NO_OPT_OUTS
    ) -> int:
        """Store what is spooled, oldest first; stop at the first sign the database is still
        down (raising that error). Returns how many callbacks were stored. Every replica runs it
        every SPOOL_REPLAY_SECONDS, and at start."""
        stored = 0
        for path in self.pending():
            with contextlib.ExitStack() as stack:
                try:
                    file = stack.enter_context(path.open())
                    fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except (FileNotFoundError, BlockingIOError):
                    continue  # replayed, or being replayed, by another worker
                if not path.exists():
                    continue  # replayed while we waited for the lock
                try:
                    received = _read(file.read())
                except Exception:  # a file of ours, so only damage: nothing a retry mends
                    self._set_aside(path, "read")
                    continue
                try:
                    async with engine.connect() as connection:
                        # Acknowledged: stored, as read or else as received (`unreadable`).
                        await store_alone(
                            connection, received, opt_out_digits=opt_out_digits, replayed=True
                        )
                except Exception as exc:
                    if is_database_down(exc):
                        raise  # still down: the rest waits for the next replay
                    self._set_aside(path, "stored")  # not even as received: for a person
                    continue
                path.unlink()
                _fsync_directory(self.directory)
                stored += 1
        if stored:
            log.info("spool: %d callbacks stored, %d left", stored, len(self.pending()))
        return stored

    def _set_aside(self, path: Path, undone: str) -> None:
        log.exception("spooled callback %s cannot be %s; kept in failed/", path, undone)
        path.rename(self.failed / path.name)


def _read(text: str) -> ReceivedCallback:
    record = json.loads(text)
    return ReceivedCallback(
        receipt_id=uuid.UUID(record["receipt_id"]),
        call_id=uuid.UUID(record["call_id"]) if record["call_id"] else None,
        method=record.get("method", "POST"),  # spooled before GET callbacks were taken
        content_type=record["content_type"],
        payload=record["payload"],
        received_at=datetime.fromisoformat(record["received_at"]),
        kind=RequestKind(record.get("kind", RequestKind.STATUS_CALLBACK)),
    )


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
