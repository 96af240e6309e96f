"""The outbox: the events the one write path writes, in the transaction of the change.

A transaction that changes a call writes at most one event of its status for it, named after
where the call stands after it (`status_event`): a call that goes from `queued` to `completed`
in one transaction (its callback came before Exotel's answer to the connect) yields
`call.completed`, never a step back. Input keyed in the flow (a Passthru request) is a
`call.input` event of its own: in the same transaction, after `call.in_progress` or
`call.answered`, before the event of the call's end. A duplicate or
stale callback changes nothing, and so writes nothing. Each event carries the call resource
after the change and its `sequence` among the call's events, and is owed at once to every
enabled endpoint that takes its type (a `delivery`); `app.events` sends it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import (
    BigInteger,
    Text,
    and_,
    bindparam,
    cast,
    func,
    insert,
    literal,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from app.calls.resource import CallOut
from app.calls.state import TERMINAL
from app.db.base import UTCDateTime
from app.db.models import Call, CallStatus, Delivery, DeliveryState, Event, WebhookEndpoint
from app.db.statements import checked_apart, one_of, table_of
from app.ids import new_id

if TYPE_CHECKING:
    from app.calls.store import Change

# docs/events.md.
EVENT_TYPES = (
    "call.in_progress",
    "call.answered",
    "call.completed",
    "call.busy",
    "call.no_answer",
    "call.failed",
    "call.canceled",
    "call.rejected",
    "call.unknown",
    "call.updated",
    "call.input",
    "call.scheduled",
    "call.expired",
)
# What a final call may still learn (a late callback, call details, the recording's archive):
# `call.updated`. A recording's attempts are not news; where it stands is.
_LATE_FACTS = (
    "price",
    "recording_url",
    "duration",
    "conversation_duration",
    "on_call_duration",
    "recording_status",
)


def event_types(change: Change) -> list[str]:
    """The events a change of a call is, in the order they happened: input keyed in the flow
    comes after the call was under way (or answered), and before it ended."""
    status = status_event(change)
    if change.after.flow == change.before.flow:
        return [status] if status else []
    if status is None:
        return ["call.input"]
    ended = change.after.status in TERMINAL
    return ["call.input", status] if ended else [status, "call.input"]


def status_event(change: Change) -> str | None:
    """The event a change of a call's status (or of what it learnt at its end) is, if any."""
    before, after = change.before, change.after
    if after.status != before.status:
        # A call goes back to `queued` only to wait for its send again: nothing to tell.
        return (
            None if after.status == CallStatus.QUEUED else "call." + after.status.replace("-", "_")
        )
    if after.status == CallStatus.SCHEDULED and after.next_attempt_at != before.next_attempt_at:
        # Held again when its time came (the number's limit): the time subscribers were told
        # has passed.
        return "call.scheduled"
    if after.answered_at != before.answered_at and after.status not in TERMINAL:
        return "call.answered"
    if after.status in TERMINAL and any(
        getattr(before, name) != getattr(after, name) for name in (*_LATE_FACTS, "answered_at")
    ):
        return "call.updated"
    return None


def number_events(changes: Sequence[Change]) -> list[tuple[Change, str, int]]:
    """The events the changes are, with their types and sequences; each call's
    `event_sequence` is moved on, to be written with the call."""
    news = []
    for change in changes:
        for kind in event_types(change):
            change.after.event_sequence += 1
            news.append((change, kind, change.after.event_sequence))
    return news


async def write_events(
    db: AsyncConnection, news: Sequence[tuple[Change, str, int]], *, now: datetime
) -> None:
    """Insert the events (after the calls' own update) and what each endpoint is owed."""
    statements = _statements()
    ids = [change.after.id for change, _, _ in news]
    calls = {row.id: row for row in await db.execute(statements.calls, {"ids": ids})}
    events = []
    for change, kind, sequence in news:
        call = calls[change.after.id]
        public_id = f"evt_{new_id().hex}"
        body = {
            "id": public_id,
            "type": kind,
            "timestamp": now.isoformat(),
            "data": {
                "call": CallOut.of(call).model_dump(mode="json"),
                "previous_status": change.before.status.value,
                "sequence": sequence,
            },
        }
        events.append(
            {
                "public_id": public_id,
                "type": kind,
                "call_id": call.id,
                "sequence": sequence,
                "created_at": now,
                "body": json.dumps(body, separators=(",", ":")),
            }
        )
    written = await db.execute(statements.insert_events, events)
    # What each enabled endpoint that takes the type is owed: one statement, whether there are
    # endpoints or none.
    await db.execute(statements.owe, {"ids": [event_id for _, event_id in written], "now": now})


class _Statements:
    def __init__(self) -> None:
        calls, events = table_of(Call), table_of(Event)
        # The feed's watermark compares these with the oldest transaction in flight.
        txid = cast(cast(func.pg_current_xact_id(), Text), BigInteger)
        self.calls = select(calls).where(one_of(calls.c.id, "ids"))
        self.insert_events = (
            insert(events).values(txid=txid).returning(events.c.public_id, events.c.id)
        )
        endpoints, deliveries = table_of(WebhookEndpoint), table_of(Delivery)
        event, endpoint = events.c, endpoints.c
        # The endpoint takes the event's type: `null` takes all.
        types = cast(endpoint.event_types, JSONB)
        takes = or_(types == cast(literal("null"), JSONB), types.has_key(event.type))
        now = bindparam("now", type_=UTCDateTime)
        # Due at once, or, behind an earlier event of its call that waits for a retry, when
        # that one is: a claim never reads it as due before (`app.events.delivery`).
        earlier = deliveries.alias("earlier").c
        behind = (
            select(func.max(earlier.next_attempt_at))
            .where(
                earlier.endpoint_id == endpoint.id,
                earlier.call_id == event.call_id,
                earlier.sequence < event.sequence,
                # Looked up by the call: with the pending deliveries' index, every pending
                # delivery of the endpoint was read for each event (4.9 ms a statement on ten
                # million calls).
                checked_apart(earlier.state, DeliveryState.PENDING),
            )
            .scalar_subquery()
        )
        owed = select(
            event.id,
            endpoint.id,
            event.call_id,
            event.sequence,
            literal(DeliveryState.PENDING, deliveries.c.state.type),
            literal(0),
            func.greatest(now, behind),
            literal("scheduled"),
            now,
        ).select_from(events.join(endpoints, and_(endpoint.enabled, takes)))
        self.owe = insert(deliveries).from_select(
            [
                "event_id",
                "endpoint_id",
                "call_id",
                "sequence",
                "state",
                "attempts",
                "next_attempt_at",
                "trigger",
                "created_at",
            ],
            owed.where(one_of(event.id, "ids")),
        )


@functools.cache
def _statements() -> _Statements:
    return _Statements()
