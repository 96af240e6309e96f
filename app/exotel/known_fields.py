"""The fields Exotel sends in a status callback or a Passthru request (docs/exotel.md), and a
request's fields trimmed to them: what is kept of one that no call has (yet), which anybody
holding the account-wide URL can send, at up to a request body's size each."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.exotel.passthru import DIGITS
from app.exotel.status_callback import (
    CALL_SID,
    CONVERSATION_DURATION_FIELDS,
    DURATION_FIELDS,
    FLAT_LEG,
    STATUS_FIELDS,
)

LEGS = "Legs"
# A status callback's: the four always sent, those added by StatusCallbackEvents, and a flow's
# (its Connect or Passthru applet's) names for the status and the durations.
CALLBACK_FIELDS = frozenset(
    {
        CALL_SID,
        *STATUS_FIELDS,
        "RecordingUrl",
        "DateUpdated",
        "EventType",
        "DateCreated",
        "To",
        "From",
        "PhoneNumberSid",
        "StartTime",
        "EndTime",
        *DURATION_FIELDS,
        *CONVERSATION_DURATION_FIELDS,
        "Direction",
        "CustomField",
        LEGS,
    }
)
PASSTHRU_FIELDS = frozenset(
    {CALL_SID, "From", "To", "Direction", "CurrentTime", DIGITS, "RecordingUrl", "CustomField"}
)
KNOWN_FIELDS = CALLBACK_FIELDS | PASSTHRU_FIELDS
LEG_FIELDS = frozenset({"Status", "OnCallDuration"})
# `Calls/connect` has two legs: the customer's, and the flow's (or `To`'s).
MOST_LEGS = 2
# Longer than any value Exotel sends (a signed recording URL is the longest); a longer one is
# dropped rather than cut, which would keep a wrong value (a URL that leads nowhere).
LONGEST_VALUE = 2048

_LEG_INDEXES = frozenset(str(index) for index in range(MOST_LEGS))


def trimmed(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Exotel's fields of `fields` only: any other dropped, as is a value too long or nested
    where Exotel sends a plain one, and every leg past the first MOST_LEGS. What
    `parse_status_callback` and `parse_passthru` read of it is what they read of `fields`,
    but for the values dropped."""
    kept: dict[str, Any] = {}
    for name, value in fields.items():
        if name == LEGS and isinstance(value, list):  # JSON's legs: objects
            legs = [leg for leg in value if isinstance(leg, Mapping)][:MOST_LEGS]
            kept[name] = [
                {k: v for k, v in leg.items() if k in LEG_FIELDS and _plain(v)} for leg in legs
            ]
        elif _known(name) and _plain(value):
            kept[name] = value
    return kept


def _known(name: str) -> bool:
    if leg := FLAT_LEG.fullmatch(name):
        return leg[1] in _LEG_INDEXES and leg[2] in LEG_FIELDS
    return name in KNOWN_FIELDS and name != LEGS


def _plain(value: Any) -> bool:
    """Text, a number, a flag or nothing, and short enough."""
    plain = value is None or isinstance(value, str | int | float)  # a bool is an int
    return plain and len(str(value)) <= LONGEST_VALUE
