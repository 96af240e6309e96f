"""Calls written straight into the database, for tests of what reads them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.db.models import Call, CallStatus


def queued(number: str, created_at: datetime, **fields: Any) -> Call:
    """A queued call to `number`, made at `created_at` (and whatever `fields` say)."""
    return Call(
        from_number=number,
        caller_id="08030752400",
        created_at=created_at,
        updated_at=created_at,
        attempts=[],
        max_attempts=1,
        **({"status": CallStatus.QUEUED} | fields),
    )
