"""The call status state machine: the one function through which every status change passes
(dispatch results, status callbacks, reconciliation).

    queued ──> in-progress ──> completed | failed | busy | no-answer | canceled
      │  └──────────────────────────^
      ├──> rejected   (Exotel refused the request; nothing was dialled)
      └──> unknown    (we cannot tell whether Exotel dialled) ──> any status above but queued

Exotel delivers callbacks late, twice and out of order (shared/exotel.md), so:
- a terminal status is absorbing: nothing changes it, and a later `answered`/`in-progress` is stale;
- repeating an update changes nothing;
- an empty value (a blank `RecordingUrl`) never blanks a known one;
- `DateUpdated` only moves forward.
Hence any order and repetition of a call's updates ends in the same state.

`unknown` is ours and provisional: it stops us from ever sending the call again, and any word from
Exotel about the call (a callback, call details) replaces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from app.db.models import CallStatus, EventOutcome

EXOTEL_TERMINAL = frozenset(
    {
        CallStatus.COMPLETED,
        CallStatus.FAILED,
        CallStatus.BUSY,
        CallStatus.NO_ANSWER,
        CallStatus.CANCELED,
    }
)
TERMINAL = EXOTEL_TERMINAL | {CallStatus.REJECTED}

_RANK = {CallStatus.QUEUED: 0, CallStatus.UNKNOWN: 1, CallStatus.IN_PROGRESS: 2}
_TERMINAL_RANK = 3


def rank(status: CallStatus) -> int:
    return _RANK.get(status, _TERMINAL_RANK)


@dataclass(frozen=True)
class StatusUpdate:
    """What one source says about a call. None means "says nothing about it"."""

    status: CallStatus
    date_updated: datetime | None = None
    date_updated_raw: str | None = None
    recording_url: str | None = None
    duration: int | None = None
    conversation_duration: int | None = None


class CallState(Protocol):
    """What the state machine reads and writes of a call (a `Call`, or a leaner row)."""

    status: CallStatus
    date_updated: datetime | None
    date_updated_raw: str | None
    recording_url: str | None
    duration: int | None
    conversation_duration: int | None


def apply_update(call: CallState, update: StatusUpdate) -> EventOutcome:
    """Apply `update` to `call` in place and say what it did."""
    if not _may_move(call.status, update.status):
        return EventOutcome.STALE
    moved = call.status != update.status
    call.status = update.status
    changed = _merge(call, update, overwrite=moved)
    return EventOutcome.APPLIED if moved or changed else EventOutcome.DUPLICATE


def _may_move(current: CallStatus, new: CallStatus) -> bool:
    if current == new:
        return True
    if current in TERMINAL:
        return False
    if new == CallStatus.UNKNOWN:
        # Our own verdict on a dispatch: only a call still waiting for its answer takes it.
        return current == CallStatus.QUEUED
    if new == CallStatus.REJECTED:
        # Exotel's refusal, or its word that it has no such call, resolves `unknown` too.
        return current in (CallStatus.QUEUED, CallStatus.UNKNOWN)
    return rank(new) > rank(current)


def _merge(call: CallState, update: StatusUpdate, *, overwrite: bool) -> bool:
    """Take the update's values: all it has when the status moved on (an `answered` event's zero
    durations give way to the terminal ones), only what the call lacks otherwise. Empty values
    never count. Says whether anything changed."""
    changed = False
    if update.date_updated and (
        call.date_updated is None or update.date_updated > call.date_updated
    ):
        call.date_updated = update.date_updated
        call.date_updated_raw = update.date_updated_raw
        changed = True
    for name in ("recording_url", "duration", "conversation_duration"):
        value = getattr(update, name)
        if value is None or value == "" or value == getattr(call, name):
            continue
        if overwrite or getattr(call, name) is None:
            setattr(call, name, value)
            changed = True
    return changed
