"""What a request from Exotel says about its call, in the app's terms: a status callback's status
update, a Passthru request's input, nothing we act on, or nothing we can read; and what of it no
column could hold. Exotel's answers to our own requests about a call (`ReceivedAnswer`) are kept
beside them. Pure: storing it is `app.calls.store`'s job."""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Self

from sqlalchemy import BigInteger, Column, Integer, String

from app.calls.state import InputUpdate, StatusUpdate
from app.db.models import Call, CallStatus, Receipt, RequestKind
from app.db.statements import table_of
from app.exotel.known_fields import trimmed
from app.exotel.passthru import DIGITS, PassthruRequest, parse_passthru
from app.exotel.status_callback import (
    CALL_SID,
    CONVERSATION_DURATION_FIELDS,
    DURATION_FIELDS,
    STATUS_FIELDS,
    StatusCallback,
    parse_status_callback,
)
from app.exotel.wire import ExotelCall
from app.ids import new_id


@dataclass(frozen=True)
class ReceivedCallback:
    """A status callback (or a Passthru request) as it was received, before it is stored."""

    call_id: uuid.UUID | None  # from the callback URL, vouched for by its token
    method: str
    content_type: str | None  # None when the fields came in the query string alone
    payload: dict[str, Any]  # Exotel's fields: the query string's and the body's, merged
    receipt_id: uuid.UUID = field(default_factory=new_id)
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    kind: RequestKind = RequestKind.STATUS_CALLBACK

    @cached_property
    def callback(self) -> StatusCallback:
        return parse_status_callback(self.payload)

    @cached_property
    def passthru(self) -> PassthruRequest:
        return parse_passthru(self.payload)

    @property
    def named_call_id(self) -> uuid.UUID | None:
        """The call it names by our id: the callback URL's, or a Passthru's `CustomField`."""
        if self.call_id is None and self.kind == RequestKind.PASSTHRU:
            return self.passthru.call_id
        return self.call_id

    @cached_property
    def reading(self) -> Reading:
        return read(self)

    @cached_property
    def unstorable(self) -> list[tuple[str, str]]:
        return unstorable(self)

    def without_call(self) -> ReceivedCallback:
        """As it is kept while no call has it: Exotel's fields alone, each of a bounded size
        (`app.exotel.known_fields`), until a call learns its SID or it is forgotten
        (`app.calls.retention`)."""
        return replace(self, payload=trimmed(self.payload))


@dataclass(frozen=True)
class ReceivedAnswer:
    """Exotel's answer to a request of ours about a call, kept with what was received for the
    call: to its `Calls/connect` (`dispatch`) or for its details (`lookup`, reconciliation).
    Every way a call's status is learnt is then among its received records."""

    kind: RequestKind  # DISPATCH or LOOKUP
    call: ExotelCall | None = None  # the call as Exotel answered it; None: no call came back
    # Exotel's fields about the call as it answered them: the `Call`, or the `RestException`;
    # empty when nothing readable came back.
    raw: Mapping[str, Any] = field(default_factory=dict)
    problem: str | None = None  # what Exotel said instead of a call, or why nothing came

    @classmethod
    def of(cls, kind: RequestKind, call: ExotelCall, *, problem: str | None = None) -> Self:
        return cls(kind, call, call.raw, problem)

    @property
    def method(self) -> str:
        """Our request's: `Calls/connect` is a POST, call details a GET."""
        return "POST" if self.kind == RequestKind.DISPATCH else "GET"

    @property
    def payload(self) -> dict[str, Any]:
        """`raw` as its JSON column can hold it (Exotel's answers are kept whatever they hold)."""
        payload = storable(dict(self.raw))
        assert isinstance(payload, dict)
        return payload


@dataclass(frozen=True)
class Unreadable:
    """Nothing the service can act on: kept, and refused (422) naming what is missing."""

    problems: list[tuple[str, str]]  # (field, message)

    @property
    def reason(self) -> str:
        """The problems in a line, as stored with the callback."""
        return "; ".join(f"{field}: {message}" for field, message in self.problems)


@dataclass(frozen=True)
class Ignored:
    """Readable, but of an event type we do not act on (docs/exotel.md: ignore those)."""


Reading = StatusUpdate | InputUpdate | Unreadable | Ignored


def read(received: ReceivedCallback) -> Reading:
    if received.kind == RequestKind.PASSTHRU:
        return _read_passthru(received)
    callback = received.callback
    problems = callback.missing(call_named=received.call_id is not None)
    status = status_from_exotel(callback.status)
    if status is None and callback.status is not None:
        # `free` has been seen: never mistaken for a status Exotel documents.
        problems.append((callback.status_field or "", f"{callback.status!r} is not a call status"))
    if problems or status is None:
        return Unreadable(problems)
    if not callback.known_event:
        return Ignored()
    return StatusUpdate(
        status=status,
        date_updated=callback.date_updated,
        date_updated_raw=callback.date_updated_raw,
        recording_url=callback.recording_url,
        duration=callback.duration,
        conversation_duration=callback.conversation_duration,
        on_call_duration=callback.on_call_duration,
        answered=callback.answered,
        heard_at=received.received_at,
    )


def _read_passthru(received: ReceivedCallback) -> Reading:
    passthru = received.passthru
    if passthru.call_sid is None and received.named_call_id is None:
        return Unreadable([("CallSid", "missing: no call can be matched")])
    return InputUpdate(
        at=passthru.current_time,
        heard_at=received.received_at,
        digits=passthru.digits,
        # Of Exotel's fields only: the same request whether it came while its call was known,
        # or before, and was kept trimmed (`without_call`).
        request=hashlib.sha256(
            json.dumps(trimmed(received.payload), sort_keys=True).encode()
        ).hexdigest(),
    )


# Exotel's deepest JSON is 3 levels (the body, `Legs`, a leg). Far deeper could be stored, but
# never read back: pydantic, which writes a call's events out, stops at 255 levels.
DEEPEST = 32
_TEXT = "holds a NUL or half a UTF-16 surrogate pair, which no column stores"
_CALLS, _EVENTS = table_of(Call).c, table_of(Receipt).c
# The column each field is stored in, once read: what it holds bounds the field.
_COLUMNS: dict[str, Column[Any]] = {
    CALL_SID: _EVENTS.sid,
    **dict.fromkeys(STATUS_FIELDS, _EVENTS.status),
    "EventType": _EVENTS.event_type,
    "DateUpdated": _EVENTS.date_updated_raw,
    **dict.fromkeys(DURATION_FIELDS, _CALLS.duration),
    **dict.fromkeys(CONVERSATION_DURATION_FIELDS, _CALLS.conversation_duration),
    "Legs": _CALLS.on_call_duration,  # the first leg's OnCallDuration
    DIGITS: _CALLS.digits,
}
# The longest each text field may be (documented in the OpenAPI schema).
LONGEST = {
    field: column.type.length
    for field, column in _COLUMNS.items()
    if isinstance(column.type, String) and column.type.length
}


def unstorable(received: ReceivedCallback) -> list[tuple[str, str]]:
    """What in `received` no column can hold, as (field, message): its payload (kept as
    received), and each value read from it against the column it is stored in. Exotel sends
    none of these; one that is sent is refused before anything is stored or spooled."""
    problems = _unstorable_payload(received.payload)
    if problems:
        return problems  # values read from it would repeat the same problems
    if received.kind == RequestKind.PASSTHRU:
        passthru = received.passthru
        values: list[tuple[str | None, str | int | None]] = [
            (CALL_SID, passthru.call_sid),
            (DIGITS, passthru.digits),
        ]
    else:
        callback = received.callback
        values = [
            (CALL_SID, callback.call_sid),
            (callback.status_field, callback.status),  # lower-cased, it may have grown
            ("EventType", callback.event_type),
            ("DateUpdated", callback.date_updated_raw),
            (callback.duration_field, callback.duration),
            (callback.conversation_duration_field, callback.conversation_duration),
            ("Legs", callback.on_call_duration),
        ]
    return [
        (field, message)
        for field, value in values
        if field is not None and value is not None and (message := _misfit(value, _COLUMNS[field]))
    ]


def fitting(value: str | None, column: Column[Any]) -> str | None:
    """`value` if `column` holds it, else None: for what is read from Exotel's answers to our
    requests, which are kept whatever they hold (their payload keeps the value as sent)."""
    return value if value is None or _misfit(value, column) is None else None


def _misfit(value: str | int, column: Column[Any]) -> str | None:
    """Why `column` cannot hold `value`; None when it can."""
    if isinstance(column.type, String) and column.type.length and isinstance(value, str):
        if len(value) > column.type.length:
            return f"at most {column.type.length} characters"
    elif isinstance(column.type, Integer) and isinstance(value, int):
        bits = 64 if isinstance(column.type, BigInteger) else 32
        if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
            return f"{value} is beyond a {bits}-bit integer"
    return None


def _unstorable_payload(payload: dict[str, Any]) -> list[tuple[str, str]]:
    """The payload's fields that no JSON column can hold, each named as sent when its name can
    be (else `body`)."""
    problems = []
    for name, value in payload.items():
        if not _storable_text(name):
            problems.append(("body", f"a field's name {_TEXT}"))
        elif problem := _unstorable_value(value, depth=2):
            problems.append((name, problem))
    return problems


def _unstorable_value(value: Any, *, depth: int) -> str | None:
    """Why `value`, `depth` levels into the payload, cannot be stored; None when it can."""
    if isinstance(value, str):
        return None if _storable_text(value) else _TEXT
    if not isinstance(value, dict | list):
        return None  # numbers were checked as JSON was read; form values are all text
    if depth > DEEPEST:
        return f"nested more than {DEEPEST} levels deep"
    items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
    return next(
        (p for item in items if (p := _unstorable_value(item, depth=depth + 1)) is not None),
        None,
    )


def _storable_text(text: str) -> bool:
    """PostgreSQL stores no NUL in text or JSON, and no lone surrogate (nor can it be UTF-8)."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def storable(value: Any, *, depth: int = 1) -> Any:
    """`value`, `depth` levels into a payload, as a JSON column holds it: a NUL or half a
    surrogate pair becomes U+FFFD, a number JSON cannot write (NaN, infinities) its text, and
    what is nested deeper than DEEPEST is dropped (None)."""
    if isinstance(value, str):
        return value if _storable_text(value) else _replaced(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if not isinstance(value, dict | list):
        return value
    if depth > DEEPEST:
        return None
    if isinstance(value, list):
        return [storable(item, depth=depth + 1) for item in value]
    return {storable(str(k)): storable(v, depth=depth + 1) for k, v in value.items()}


# In a Python string every surrogate is a lone one: a pair read from JSON is one code point.
_UNSTORABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def _replaced(text: str) -> str:
    return _UNSTORABLE_CHARACTER.sub("\ufffd", text)


# The statuses Exotel documents for a call: the four a terminal callback carries, `canceled`
# (call details), `in-progress` (an `answered` event, or a call under way), and those of call
# details while Exotel is still dialling.
_BY_EXOTEL_STATUS = {
    "completed": CallStatus.COMPLETED,
    "failed": CallStatus.FAILED,
    "busy": CallStatus.BUSY,
    "no-answer": CallStatus.NO_ANSWER,
    "canceled": CallStatus.CANCELED,
    "in-progress": CallStatus.IN_PROGRESS,
    "queued": CallStatus.IN_PROGRESS,
    "ringing": CallStatus.IN_PROGRESS,
}


def status_from_exotel(status: str | None) -> CallStatus | None:
    """Our status for a status as Exotel names it, in a callback or in call details."""
    return _BY_EXOTEL_STATUS.get((status or "").lower())
