"""`Retry-After`, as Exotel (with a 429) and webhook endpoints send it: the one reader of it."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# Exotel's rate window is a minute; no server has reason to hold us back for longer than an
# hour, and a longer wait (`1e12`, a date in the year 9999) would stop every call of the account
# behind its 429, or overflow the time it is added to.
LONGEST_SECONDS = 3600.0


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait, from `Retry-After` in seconds or as an HTTP date, between 0 and
    LONGEST_SECONDS; None when it says neither (`nan` and `inf` say nothing)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # `-0000`: UTC, its zone unknown
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), LONGEST_SECONDS)
