"""The ids exocall gives what it keeps (calls, batches, receipts, events, endpoints): UUIDs of
version 7, whose first 48 bits are the time they were made. Their indexes take each new row
at one end, as a sequence's would, instead of at a random page of the whole history: with
random (version 4) ids, inserting events into a database of three million calls took 19 to 45
times as long as with these (bench/README.md, "A year of calls later")."""

from __future__ import annotations

import uuid

import uuid6


def new_id() -> uuid.UUID:
    """A new id, as the standard library's class."""
    return uuid.UUID(int=uuid6.uuid7().int)
