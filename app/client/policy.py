"""A call's policy as the command line writes it (`--retry 3:busy,no-answer:30m,1h`, `--window
09:00-21:00/Asia/Kolkata`, `--not-before`, `--expires-at`), read into the fields of `POST /calls`
and checked by the service's own models, so that a bad value is said before anything is sent.
The campaign's CSV columns of the same names take the same text."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from app.api.schemas import RetryIn, WindowIn
from app.calls.policy import DEFAULT_INTERVAL_SECONDS, INDIA, SECONDS_IN

# The statuses `--retry 3` retries when it names none: the customer did not pick up. Not
# `failed`, which is often a number that cannot be reached at all.
DEFAULT_RETRY_ON = ("busy", "no-answer")
_INTERVAL = re.compile(r"([0-9]{1,7})([smhd]?)")
_WINDOW = re.compile(r"([0-9:]+)-([0-9:]+)(?:[ /](.+))?")

# Without brackets: the commands' help is read as rich's markup.
RETRY_FORM = "N, N:STATUSES or N:STATUSES:WAITS, such as 3 or 3:busy,no-answer:30m,1h"
WINDOW_FORM = "HH:MM-HH:MM, optionally /TIME-ZONE, such as 09:00-21:00 or 09:00-21:00/Asia/Dubai"


# The parts of the written forms, by the field each fills.
_PARTS = {"max_attempts": "N", "on": "STATUSES", "intervals": "WAITS"}


class PolicyInvalid(ValueError):
    """A policy value the service would refuse: which (`field`, once known) and why; `str()`
    is the one line that says both."""

    def __init__(self, reason: str, field: str = "") -> None:
        self.reason, self.field = reason, field
        super().__init__(f"{field}: {reason}" if field else reason)


@dataclass(frozen=True)
class PolicyText:
    """The policy as written: on the command line, or in a campaign's row."""

    retry: str | None = None
    window: str | None = None
    not_before: str | None = None
    expires_at: str | None = None

    def as_dict(self) -> dict[str, str]:
        """What was written, for a campaign's state: its own policy, told from another's."""
        return {name: text for name, text in vars(self).items() if text}

    def under(self, defaults: PolicyText) -> PolicyText:
        """This policy, with `defaults`' value where it has none (a row's cells over the
        campaign's options)."""
        return PolicyText(
            **{name: getattr(self, name) or text for name, text in vars(defaults).items()}
        )

    def fields(self, *, names: dict[str, str] | None = None) -> dict[str, Any]:
        """The fields of `POST /calls` this policy sets, JSON-ready; raises PolicyInvalid
        naming the option (or, with `names`, whatever else the caller calls it)."""
        named = {
            "retry": "--retry",
            "window": "--window",
            "not_before": "--not-before",
            "expires_at": "--expires-at",
        } | (names or {})
        fields: dict[str, Any] = {}
        readers = {
            "retry": retry_fields,
            "window": window_fields,
            "not_before": instant,
            "expires_at": instant,
        }
        for name, read in readers.items():
            text = getattr(self, name)
            if text is None or not text.strip():
                continue
            try:
                fields[name] = read(text.strip())
            except PolicyInvalid as exc:
                raise PolicyInvalid(exc.reason, named[name]) from None
        starts, ends = fields.get("not_before"), fields.get("expires_at")
        if starts and ends and ends <= starts:
            raise PolicyInvalid(f"must be after {named['not_before']}", named["expires_at"])
        for name in ("not_before", "expires_at"):
            if name in fields:
                fields[name] = fields[name].isoformat()
        return fields


def retry_fields(text: str) -> dict[str, Any]:
    """`3`, `3:busy,no-answer`, `3:busy:30m,1h` (intervals in s, m, h or d; seconds bare)."""
    parts = text.split(":")
    if len(parts) > 3 or not parts[0].isdigit():
        raise PolicyInvalid(f"{text!r} is not {RETRY_FORM}")
    on = [status.strip() for status in parts[1].split(",")] if len(parts) > 1 else []
    intervals = [_seconds(i.strip()) for i in parts[2].split(",")] if len(parts) > 2 else []
    value = {
        "max_attempts": int(parts[0]),
        "on": on or list(DEFAULT_RETRY_ON),
        "intervals": intervals or [DEFAULT_INTERVAL_SECONDS],
    }
    return _checked(RetryIn, value)


def _seconds(text: str) -> int:
    match = _INTERVAL.fullmatch(text)
    if not match:
        raise PolicyInvalid(f"{text!r} is not an interval: seconds, or 30m, 2h, 1d")
    return int(match[1]) * SECONDS_IN[match[2] or "s"]


def window_fields(text: str) -> dict[str, Any]:
    """`09:00-21:00`, with a time zone after a slash or a space: `09:00-21:00/Asia/Dubai`,
    `09:00-21:00 Asia/Dubai` (as CALLING_WINDOW writes it)."""
    match = _WINDOW.fullmatch(text)
    if not match:
        raise PolicyInvalid(f"{text!r} is not {WINDOW_FORM}")
    value = {"start": match[1], "end": match[2], "timezone": (match[3] or INDIA).strip()}
    return _checked(WindowIn, value)


def instant(text: str) -> datetime:
    """ISO 8601 with an offset: `2026-12-06T09:30:00+05:30`, `2026-12-06T04:00Z`. Without an
    offset the time could be anyone's, so none is assumed."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise PolicyInvalid(
            f"{text!r} is not an ISO 8601 date-time with an offset, such as "
            "2026-12-06T09:30:00+05:30"
        )
    return value.astimezone(UTC)


def _checked(model: type[BaseModel], value: dict[str, Any]) -> dict[str, Any]:
    """`value` as the service's own model reads it, or the first thing it refuses."""
    try:
        return model.model_validate(value).model_dump(mode="json")
    except ValidationError as exc:
        error = exc.errors()[0]
        where = _PARTS.get(str(error["loc"][0]), str(error["loc"][0])) if error["loc"] else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "string_pattern_mismatch":  # a window's start or end
            message = f"{error['input']!r} is not a time of day as HH:MM (24-hour)"
        elif error["type"] == "literal_error":  # a status retried
            message = f"{error['input']!r} is not busy, no-answer or failed"
        raise PolicyInvalid(f"{where}: {message}" if where else message) from None
