"""A flow's Passthru request, as Exotel sends it (docs/exotel.md, "Passthru applet"): a GET
whose query string carries `CallSid`, the numbers, `CurrentTime`, the `CustomField` given to
`Calls/connect`, and `digits`, what the caller keyed in the Gather before it, wrapped in double
quotes. Answering 200 takes the flow down one branch, 302 down the other."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.exotel.wire import clean_str, parse_exotel_time
from app.numerals import DIGIT

DIGITS = "digits"
# What a phone's keypad sends: ASCII digits, `*` and `#`; no other script's, which no rule matches.
_KEYED = re.compile(f"({DIGIT}|[*#])*")


@dataclass(frozen=True)
class PassthruRequest:
    call_sid: str | None
    custom_field: str | None
    # Quotes stripped; "" when the caller keyed nothing; None when absent, or not keys of a
    # keypad (kept raw with the request, and read as nothing).
    digits: str | None
    current_time: datetime | None  # when Exotel made the request (IST, as it says)

    @property
    def call_id(self) -> uuid.UUID | None:
        """Our call id, when the `CustomField` is one (exocall sends it, unless the call was
        placed with a `custom_field` of its own)."""
        try:
            return uuid.UUID(self.custom_field) if self.custom_field else None
        except ValueError:
            return None


def parse_passthru(fields: Mapping[str, Any]) -> PassthruRequest:
    return PassthruRequest(
        call_sid=clean_str(fields.get("CallSid")),
        custom_field=clean_str(fields.get("CustomField")),
        digits=_digits(fields.get(DIGITS)),
        current_time=parse_exotel_time(clean_str(fields.get("CurrentTime"))),
    )


def _digits(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return text if _KEYED.fullmatch(text) else None
