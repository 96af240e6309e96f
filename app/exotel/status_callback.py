"""Exotel's StatusCallback, in every shape it arrives in (docs/exotel.md, "StatusCallback").

- The callback given to `Calls/connect` is a POST: multipart (the default), JSON when asked
  for, or urlencoded.
- Integrations that run in production read each field from the query string as well, because
  Exotel uses either; and a status callback set up inside a flow (its Connect or Passthru
  applet) arrives as a GET, with the fields in the query string.
- Flow callbacks name the outcome `DialCallStatus` (some `CallStatus`) rather than `Status`,
  and carry `CallDuration` and `DialCallDuration` rather than `Duration` and
  `ConversationDuration`.

The receiver merges the query string's fields with the body's (the body wins) and hands them
here; this turns them into the app's names, whatever the shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.exotel.wire import clean_int, clean_str, parse_exotel_time
from app.numerals import DIGIT, integer

# `terminal` and `answered`, exactly: `Terminal` and `Dial` have been seen, and are neither.
EVENT_TYPES = frozenset({"terminal", "answered"})
ANSWERED = "answered"

CALL_SID = "CallSid"
# Where each shape names the call's outcome and its durations, in the order they are believed.
STATUS_FIELDS = ("Status", "CallStatus", "DialCallStatus")
DURATION_FIELDS = ("Duration", "CallDuration")
CONVERSATION_DURATION_FIELDS = ("ConversationDuration", "DialCallDuration")

# In multipart, urlencoded and query strings the legs arrive flattened: `Legs[0][Status]`.
FLAT_LEG = re.compile(rf"Legs\[({DIGIT}+)\]\[(\w+)\]")


@dataclass(frozen=True)
class Leg:
    status: str | None
    on_call_duration: int | None


@dataclass(frozen=True)
class StatusCallback:
    """One status callback, whatever its shape, in the app's names. Durations are seconds:

    - `duration`: the call's whole length, ring time included (`Duration`; a flow's
      `CallDuration`);
    - `conversation_duration`: how long the two legs talked (`ConversationDuration`; a flow's
      `DialCallDuration`, the length of the leg its Connect applet dialled);
    - `on_call_duration`: how long the customer (the first leg) was on the call once they
      answered (`Legs[0][OnCallDuration]`).
    """

    call_sid: str | None
    status: str | None  # lower-cased, as sent
    status_field: str | None  # which field named it
    event_type: str | None  # as sent
    recording_url: str | None
    date_updated_raw: str | None
    duration: int | None
    duration_field: str | None  # which field it was read from
    conversation_duration: int | None
    conversation_duration_field: str | None
    legs: list[Leg]

    @property
    def date_updated(self) -> datetime | None:
        return parse_exotel_time(self.date_updated_raw)

    @property
    def on_call_duration(self) -> int | None:
        return self.legs[0].on_call_duration if self.legs else None

    @property
    def answered(self) -> bool:
        return self.event_type == ANSWERED

    @property
    def known_event(self) -> bool:
        """Without StatusCallbackEvents, Exotel sends no `EventType` at all."""
        return self.event_type is None or self.event_type in EVENT_TYPES

    def missing(self, *, call_named: bool) -> list[tuple[str, str]]:
        """What the callback lacks to be read, as (field, message). `call_named`: the callback
        URL names the call, so no `CallSid` is needed to find it."""
        missing = []
        if self.call_sid is None and not call_named:
            missing.append((CALL_SID, "missing: no call can be matched"))
        if self.status is None:
            names = ", ".join(STATUS_FIELDS)
            missing.append((STATUS_FIELDS[0], f"missing: none of {names} was sent"))
        return missing


def parse_status_callback(fields: Mapping[str, Any]) -> StatusCallback:
    """Parse a callback's fields (the query string's and the body's, merged). In multipart,
    urlencoded and query strings `Legs` arrives flattened (`Legs[0][Status]=completed`); in JSON
    it is an array of objects. Both become `legs`."""
    status_field = next((name for name in STATUS_FIELDS if clean_str(fields.get(name))), None)
    status = clean_str(fields.get(status_field)) if status_field else None
    duration_field, duration = _first_int(fields, DURATION_FIELDS)
    conversation_field, conversation_duration = _first_int(fields, CONVERSATION_DURATION_FIELDS)
    return StatusCallback(
        call_sid=clean_str(fields.get(CALL_SID)),
        status=status.lower() if status else None,
        status_field=status_field,
        event_type=clean_str(fields.get("EventType")),
        recording_url=clean_str(fields.get("RecordingUrl")),
        date_updated_raw=clean_str(fields.get("DateUpdated")),
        duration=duration,
        duration_field=duration_field,
        conversation_duration=conversation_duration,
        conversation_duration_field=conversation_field,
        legs=_legs(fields),
    )


def _first_int(fields: Mapping[str, Any], names: tuple[str, ...]) -> tuple[str | None, int | None]:
    """The first of `names` that holds an integer, and its integer."""
    for name in names:
        if (number := clean_int(fields.get(name))) is not None:
            return name, number
    return None, None


def _legs(fields: Mapping[str, Any]) -> list[Leg]:
    raw = fields.get("Legs")
    by_index: dict[int, Mapping[str, Any]] = {}
    if isinstance(raw, list):
        by_index = {i: leg for i, leg in enumerate(raw) if isinstance(leg, Mapping)}
    else:
        flattened: dict[int, dict[str, Any]] = {}
        for key, value in fields.items():
            match = FLAT_LEG.fullmatch(key)
            if match and (index := integer(match[1])) is not None:  # not 5000 digits long
                flattened.setdefault(index, {})[match[2]] = value
        by_index = dict(flattened)
    return [
        Leg(
            status=clean_str(leg.get("Status")),
            on_call_duration=clean_int(leg.get("OnCallDuration")),
        )
        for _, leg in sorted(by_index.items())
    ]


def example_fields(sid: str, recording_url: str) -> dict[str, Any]:
    """A terminal callback with the four fields always present, for documentation."""
    return {
        CALL_SID: sid,
        "Status": "completed",
        "RecordingUrl": recording_url,
        "DateUpdated": "2024-09-16 15:51:00",
    }


def _integer(description: str) -> dict[str, str]:
    return {
        "type": "integer",
        "description": f"{description}; read as absent unless an integer in ASCII digits",
    }


# Documented for readers and for the fuzz (the OpenAPI schema of the receiver): the receiver
# keeps every field as received, whatever else is sent.
FIELDS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Exotel's fields, kept as received. An integer field is read from a number "
    'or its text in ASCII digits (`32`, `"32"`); any other value (`true`, `{}`, `"1_000"`, '
    "other scripts' digits) is read as absent.",
    "properties": {
        CALL_SID: {"type": "string"},
        "Status": {"type": "string", "enum": ["completed", "failed", "busy", "no-answer"]},
        "DialCallStatus": {"type": "string", "description": "A flow callback's Status"},
        "CallStatus": {"type": "string", "description": "Read when Status is absent"},
        "RecordingUrl": {"type": "string"},
        "DateUpdated": {"type": "string", "description": "Exotel's clock (IST), no offset"},
        "EventType": {"type": "string", "enum": sorted(EVENT_TYPES)},
        "Duration": _integer("Seconds, ring time included"),
        "CallDuration": _integer("A flow callback's Duration"),
        "ConversationDuration": _integer("Seconds the legs talked"),
        "DialCallDuration": _integer("The dialled leg's seconds"),
    },
    "additionalProperties": True,
}
