"""What a request from Exotel says about its call, in the app's terms: a status callback's status
update, a Passthru request's input, nothing we act on, or nothing we can read. Pure: storing it
is `app.calls.store`'s job."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from app.calls.state import InputUpdate, StatusUpdate
from app.db.models import CallStatus, RequestKind
from app.exotel.callbacks import StatusCallback, parse_status_callback
from app.exotel.passthru import PassthruRequest, parse_passthru


@dataclass(frozen=True)
class ReceivedCallback:
    """A status callback (or a Passthru request) as it was received, before it is stored."""

    call_id: uuid.UUID | None  # from the callback URL, vouched for by its token
    method: str
    content_type: str | None  # None when the fields came in the query string alone
    payload: dict[str, Any]  # Exotel's fields: the query string's and the body's, merged
    receipt_id: uuid.UUID = field(default_factory=uuid.uuid4)
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


@dataclass(frozen=True)
class Unreadable:
    """Nothing the service can act on: kept, and refused (422) naming what is missing."""

    problems: list[tuple[str, str]]  # (field, message)


@dataclass(frozen=True)
class Ignored:
    """Readable, but of an event type we do not act on (shared/exotel.md: ignore those)."""


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
    answered_at = None
    if callback.answered:
        # When the customer picked up: the event's own time, else when it reached us.
        answered_at = callback.date_updated or received.received_at
    return StatusUpdate(
        status=status,
        date_updated=callback.date_updated,
        date_updated_raw=callback.date_updated_raw,
        recording_url=callback.recording_url,
        duration=callback.duration,
        conversation_duration=callback.conversation_duration,
        on_call_duration=callback.on_call_duration,
        answered_at=answered_at,
    )


def _read_passthru(received: ReceivedCallback) -> Reading:
    passthru = received.passthru
    if passthru.call_sid is None and received.named_call_id is None:
        return Unreadable([("CallSid", "missing: no call can be matched")])
    return InputUpdate(
        at=passthru.current_time or received.received_at,
        digits=passthru.digits,
        request=hashlib.sha256(json.dumps(received.payload, sort_keys=True).encode()).hexdigest(),
    )


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
