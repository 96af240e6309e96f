"""The tables: `call` (one row per call we were asked to place), `call_event` (everything received
about a call, append-only: Exotel's callbacks and Passthru requests, and its answers to our
requests), what the dispatch queue shares between replicas, and the
outbox: `event` (every applied change of a call, for subscribers), `webhook_endpoint`,
`delivery` (an event owed to an endpoint) and `delivery_attempt`.

Every timestamp is a `timestamptz` (aware UTC datetimes on both backends). Times the replicas
compare (claims, the rate limit, leases, reconciliation) come from the database's clock
(`app.db.clock`); so do the call's own times, so that they can be compared with those.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    Enum,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime
from app.ids import new_id


class CallStatus(enum.StrEnum):
    """Declared in the order people read a call's life in: waiting, under way, ended by Exotel,
    refused, undecided. The order the state machine moves in is `app.calls.state.rank`."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    FAILED = "failed"
    CANCELED = "canceled"
    REJECTED = "rejected"
    UNKNOWN = "unknown"
    EXPIRED = "expired"


class RequestKind(enum.StrEnum):
    """Where a `call_event` came from: a request of Exotel's (a status callback, a flow's
    Passthru request), or Exotel's answer to one of ours about the call."""

    STATUS_CALLBACK = "status_callback"
    PASSTHRU = "passthru"
    DISPATCH = "dispatch"  # its answer to the call's `Calls/connect` (or that none came)
    LOOKUP = "lookup"  # its call details of the call (reconciliation)


class EventOutcome(enum.StrEnum):
    """What a received status callback (or answer of Exotel's) did to its call."""

    APPLIED = "applied"  # changed the call
    DUPLICATE = "duplicate"  # told us nothing new
    STALE = "stale"  # older than what we know (e.g. a status after the call's end)
    UNKNOWN_SID = "unknown_sid"  # no call known yet; attached once one is
    SID_MISMATCH = "sid_mismatch"  # the URL names a call whose SID differs from the callback's
    IGNORED = "ignored"  # an event type we do not act on (docs/exotel.md: ignore unknown ones)
    # No status (or no call) we can read, or it could not be stored as read: kept raw, and
    # refused with 422.
    UNREADABLE = "unreadable"


class FailureKind(enum.StrEnum):
    """Why a call is not (or not yet, or not known to be) placed: the call's `error.code`."""

    EXOTEL_REJECTED = "exotel_rejected"  # Exotel refused the request: nothing was dialled
    EXOTEL_RATE_LIMITED = "exotel_rate_limited"  # 429: back in the queue
    EXOTEL_UNREACHABLE = "exotel_unreachable"  # no connection was made: back in the queue
    EXOTEL_OUTCOME_UNKNOWN = "exotel_outcome_unknown"  # a timeout or a 5xx: it may have dialled
    DISPATCH_INTERRUPTED = "dispatch_interrupted"  # the replica sending it stopped mid-send
    EXOTEL_NO_RECORD = "exotel_no_record"  # an `unknown` call Exotel never heard of
    NUMBER_OPTED_OUT = "number_opted_out"  # the number is on the opt-out list: never dialled


def _str_enum(cls: type[enum.StrEnum], length: int = 16) -> Enum:
    # Stored as plain strings (no native enum, no CHECK) so adding a value needs no migration.
    return Enum(
        cls, native_enum=False, length=length, values_callable=lambda e: [m.value for m in e]
    )


class RecordingStatus(enum.StrEnum):
    """Where a call's recording stands in the archive (`app.recordings`)."""

    PENDING = "pending"  # to be fetched from Exotel and stored (or being)
    ARCHIVED = "archived"  # in the store, served by GET /calls/{id}/recording
    FAILED = "failed"  # given up: retries ran out, or the URL is not one to fetch
    EXPIRED = "expired"  # Exotel answered 404 or 410: its copy is gone
    DELETED = "deleted"  # archived, then deleted after RECORDING_RETENTION_DAYS


class Batch(Base):
    """Calls submitted together with `POST /calls/batch`."""

    __tablename__ = "batch"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Call(Base):
    # Its pages are filled to 80%, with room for the next versions of their calls (migration
    # f7a9b1c3d5e7; docs/database.md, "Room on a call's page").
    __tablename__ = "call"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    sid: Mapped[str | None] = mapped_column(String(64), unique=True)
    status: Mapped[CallStatus] = mapped_column(_str_enum(CallStatus))
    from_number: Mapped[str] = mapped_column(String(20))
    caller_id: Mapped[str] = mapped_column(String(20))
    app_id: Mapped[str | None] = mapped_column(String(32))
    flow_url: Mapped[str | None] = mapped_column(String(512))
    custom_field: Mapped[str | None] = mapped_column(String(128))
    time_limit: Mapped[int | None] = mapped_column(Integer)
    time_out: Mapped[int | None] = mapped_column(Integer)
    recording_url: Mapped[str | None] = mapped_column(Text)
    duration: Mapped[int | None] = mapped_column(Integer)
    conversation_duration: Mapped[int | None] = mapped_column(Integer)
    on_call_duration: Mapped[int | None] = mapped_column(Integer)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    date_updated: Mapped[datetime | None] = mapped_column(UTCDateTime)
    date_updated_raw: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[FailureKind | None] = mapped_column(_str_enum(FailureKind, 64))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_exotel_status: Mapped[int | None] = mapped_column(Integer)
    error_exotel_code: Mapped[int | None] = mapped_column(Integer)
    error_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    # One call per key, whichever replica the request reaches; the fingerprint of the request
    # tells a repeat (same body) from a conflict (another body).
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    batch_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("batch.id"))

    # The call's policy (`app.calls.policy`), as asked for: when it may be dialled, how often,
    # and at what hours. `window` is the call's own or CALLING_WINDOW's when it was created.
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retry: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    window: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    # The attempts the call may make: the retry policy's, lowered to the attempt under way when
    # the call is canceled or an attempt's outcome cannot be known (none follows either).
    max_attempts: Mapped[int] = mapped_column(Integer, default=1)
    # Each attempt made, oldest first (`app.calls.state.AttemptOut` has its fields); the last
    # is the one the call's own `sid`, durations and error are of.
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSONB(), default=list)
    price: Mapped[Decimal | None] = mapped_column(Numeric(12, 4))  # the attempts' total
    # When `POST /calls/{id}/cancel` was asked: no attempt is made after it.
    canceled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # The dispatch queue: a queued or scheduled call is due at `next_attempt_at` (at once when
    # NULL); `send_tries` counts the sends of the attempt in hand that certainly did not dial.
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    send_tries: Mapped[int] = mapped_column(Integer, default=0)
    # When reconciliation looks the call up next, if nothing ends it first (None: at once).
    next_lookup_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Reconciliation looks up the prices of the call's ended attempts RECONCILE_PRICE_DELAY_SECONDS
    # after this (None: no price is owed): an attempt's end, then later as the wait grows.
    price_wait_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The `sequence` of the call's latest event (0: none yet).
    event_sequence: Mapped[int] = mapped_column(Integer, default=0)
    # What the customer did in the flow, from its Passthru requests: the latest keyed input,
    # and each Passthru passed (`app.calls.state.apply_input`).
    digits: Mapped[str | None] = mapped_column(String(64))
    flow: Mapped[list[dict[str, Any]] | None] = mapped_column(  # None: SQL NULL, not `null`
        JSONB(none_as_null=True)
    )

    # The recording's archive (`app.recordings`); what the job does is in `recording_job`.
    recording_status: Mapped[RecordingStatus | None] = mapped_column(_str_enum(RecordingStatus))
    recording_size: Mapped[int | None] = mapped_column(BigInteger)
    recording_content_type: Mapped[str | None] = mapped_column(String(100))
    recording_sha256: Mapped[str | None] = mapped_column(String(64))
    recording_attempts: Mapped[int] = mapped_column(Integer, default=0)
    recording_error: Mapped[str | None] = mapped_column(Text)  # why the last attempt failed
    recording_archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    recording_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        # Newest-first listing and its cursor.
        Index("ix_call_created_at_id", "created_at", "id"),
        # The calls being sent, for the sweep of lost claims (app.jobs).
        Index("ix_call_claimed_by", "claimed_by", postgresql_where=text("claimed_by IS NOT NULL")),
        Index("ix_call_from_number_created_at", "from_number", "created_at"),
        # A batch's calls, newest first (`GET /calls?batch_id=`), and counted by status.
        Index("ix_call_batch_id_created_at_id", "batch_id", "created_at", "id"),
        # The queue (oldest queued first) and the status filter.
        Index("ix_call_status_created_at", "status", "created_at"),
        # The calls waiting for their time, a window, a number's limit or their next attempt.
        Index(
            "ix_call_scheduled_next_attempt_at",
            "next_attempt_at",
            postgresql_where=text("status = 'scheduled'"),
        ),
        # Reconciliation's calls owed a price: only those, whatever the table holds.
        Index(
            "ix_call_price_wait_from",
            "price_wait_from",
            postgresql_where=text("price_wait_from IS NOT NULL"),
        ),
        # `GET /calls?digits=`, newest first: only the calls a customer keyed something in.
        Index(
            "ix_call_digits_created_at_id",
            "digits",
            "created_at",
            "id",
            postgresql_where=text("digits IS NOT NULL"),
        ),
        # Only the calls with a key: each change of a call adds an entry to every index of it.
        Index(
            "uq_call_idempotency_key",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        # Retention's archived recordings, oldest first.
        Index(
            "ix_call_recording_archived_at",
            "recording_archived_at",
            postgresql_where=text("recording_status = 'archived'"),
        ),
    )


def lookup_due() -> ColumnElement[datetime]:
    """When reconciliation is to look a call up next: at its `next_lookup_at`, or, never looked
    up yet, since it was made."""
    return func.coalesce(Call.next_lookup_at, Call.created_at)


# Reconciliation's calls due for a look-up: only the live ones, by status in the order they
# fall due.
Index(
    "ix_call_lookup_due",
    Call.status,
    lookup_due(),
    postgresql_where=text("status IN ('unknown', 'in-progress')"),
)


class CallTally(Base):
    """The calls counted: by the hour they were made in (UTC), their status and their
    recording's. Triggers on `call` add a row for each change (+n, -n); `app.calls.counts`
    sums the rows and folds them now and then. The status page and the metrics read this,
    never a count of every call."""

    __tablename__ = "call_tally"

    id: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=True)
    # Hours older than a day and an hour are folded into one row at -infinity.
    hour: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    status: Mapped[CallStatus] = mapped_column(_str_enum(CallStatus))
    recording_status: Mapped[RecordingStatus | None] = mapped_column(_str_enum(RecordingStatus))
    calls: Mapped[int] = mapped_column(BigInteger())


class Dial(Base):
    """Each `Calls/connect` request made for a call's attempt (its `n`), by the database's
    clock: what the per-number limit counts (NUMBER_ATTEMPT_LIMIT), and how a SID of any of
    a call's attempts finds the call."""

    __tablename__ = "dial"

    call_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("call.id", ondelete="CASCADE"), primary_key=True
    )
    n: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str] = mapped_column(String(20))  # E.164, as the call's `from`
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sid: Mapped[str | None] = mapped_column(String(64), unique=True)

    __table_args__ = (Index("ix_dial_number_sent_at", "number", "sent_at"),)


class OptOut(Base):
    """A number that must not be called (`/opt-outs`)."""

    __tablename__ = "opt_out"

    number: Mapped[str] = mapped_column(String(20), primary_key=True)  # E.164
    reason: Mapped[str | None] = mapped_column(Text)
    # Who opted it out: `api`, or `passthru` (the customer, in a flow: PASSTHRU_OPT_OUT_DIGITS).
    source: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_opt_out_created_at_number", "created_at", "number"),)


class RecordingJob(Base):
    """A call's recording still to be archived: the archive's queue, shared by the replicas.
    Deleted once the recording is archived or given up."""

    __tablename__ = "recording_job"

    call_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("call.id", ondelete="CASCADE"), primary_key=True
    )
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retries: Mapped[int] = mapped_column(Integer, default=0)  # the backoff's: fetch or store
    # Fetches since it was queued (a backfill queues a failed one afresh): at most
    # RECORDING_MAX_ATTEMPTS of them.
    fetches: Mapped[int] = mapped_column(Integer, default=0)
    # The fetched bytes, waiting on this path of a replica's disk for a store that was down:
    # the replica that finds them there stores them without fetching again.
    held_path: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_recording_job_due_at", "due_at"),)


class Receipt(Base):
    """What exocall received about a call from Exotel: a status callback, a Passthru request,
    or Exotel's answer to a request of ours (`kind`). `GET /calls/{id}/events` lists them."""

    __tablename__ = "call_event"

    id: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=True)
    kind: Mapped[RequestKind] = mapped_column(
        _str_enum(RequestKind), server_default=RequestKind.STATUS_CALLBACK.value
    )
    # Given when the callback is received: a callback replayed from the spool is stored once.
    receipt_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, unique=True)
    call_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("call.id", ondelete="CASCADE"), index=True
    )
    sid: Mapped[str | None] = mapped_column(String(64))
    attempt: Mapped[int | None] = mapped_column(Integer)  # the call's attempt it was about
    # When this process read the request, on its own clock: a callback spooled while the
    # database was down was received before the database could say what time it was. An
    # answer of Exotel's: when it was recorded, by the database's clock.
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    method: Mapped[str] = mapped_column(String(8))  # an answer's: of our request
    content_type: Mapped[str | None] = mapped_column(String(100))
    # Exotel's fields as received: the query string's and the body's (the body's value where
    # both had one), without our own `call_id` and `token`. An answer's: the `Call` (or the
    # `RestException`) Exotel answered about this call.
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB())
    status: Mapped[str | None] = mapped_column(String(32))
    event_type: Mapped[str | None] = mapped_column(String(32))
    recording_url: Mapped[str | None] = mapped_column(Text)
    date_updated: Mapped[datetime | None] = mapped_column(UTCDateTime)
    date_updated_raw: Mapped[str | None] = mapped_column(String(32))
    outcome: Mapped[EventOutcome] = mapped_column(_str_enum(EventOutcome))
    # Why it is `unreadable`: what it lacks, or why it could not be stored as read. An
    # answer's: what Exotel said instead of a call, or why no answer came.
    problem: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        # What matched no call, by age: reconciliation's recent ones, retention's old ones.
        Index("ix_call_event_unmatched", "received_at", postgresql_where=text("call_id IS NULL")),
        # By SID, only those: a call learning its SID adopts them. An index of every callback's
        # SID (random, as Exotel makes them) wrote each to a page of its own.
        Index("ix_call_event_unmatched_sid", "sid", postgresql_where=text("call_id IS NULL")),
    )


class ExotelRequest(Base):
    """Every request made to Exotel, by the database's clock: the account's shared budget."""

    __tablename__ = "exotel_request"

    id: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    kind: Mapped[str] = mapped_column(String(16))


class Throttle(Base):
    """One row per Exotel account. Locking it serialises every grant from the shared budget,
    across replicas; `paused_until` holds everyone back after Exotel answered 429, and
    `lookup_wanted_until` keeps a slot for reconciliation under a dispatch backlog."""

    __tablename__ = "exotel_throttle"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    paused_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A look-up found the budget spent: until then, placing calls leaves it the next free slot.
    lookup_wanted_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Exotel refused the credentials for a recording (401/403): the archive fetches nothing
    # until then, and says why (`app.recordings.archive`).
    recordings_paused_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    recordings_paused_reason: Mapped[str | None] = mapped_column(Text)


class Worker(Base):
    """A process that claims work (`app.jobs`): its claims live while it beats."""

    __tablename__ = "worker"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Periodic(Base):
    """A job run every so often by one worker at a time across replicas (`app.jobs.periodic`):
    reconciliation, the retentions."""

    __tablename__ = "periodic"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DeliveryState(enum.StrEnum):
    PENDING = "pending"  # to be sent at `next_attempt_at`
    SENDING = "sending"  # claimed by a replica, in flight
    DELIVERED = "delivered"  # the endpoint answered 2xx
    FAILED = "failed"  # given up: the retry schedule ran out, or the endpoint answered 410


class Event(Base):
    """An applied change of a call, written in the change's transaction (the outbox). Never
    changed once written; deleted after EVENT_RETENTION_DAYS."""

    __tablename__ = "event"

    # With `txid`, the event's position in the feed (app/events/feed.py).
    id: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=True)
    # `evt_...`: random, so that a consumer deduplicating by `webhook-id` never mistakes an
    # event of a rebuilt database for one it has seen.
    public_id: Mapped[str] = mapped_column(String(40), unique=True)
    # PostgreSQL: the writing transaction's id, for the feed's watermark (app/events/feed.py).
    txid: Mapped[int | None] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(32))
    call_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("call.id", ondelete="CASCADE"))
    sequence: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # The event as JSON: exactly the bytes signed and sent.
    body: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("call_id", "sequence"),
        Index("ix_event_txid_id", "txid", "id"),
    )


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoint"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    event_types: Mapped[list[str] | None] = mapped_column(JSON)  # None: every type
    enabled: Mapped[bool] = mapped_column(Boolean)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(100))
    # Secrets replaced by a rotation that still sign: [{"secret": "whsec_...", "until": ISO}].
    previous_secrets: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The first failure since the last success: failing for WEBHOOK_DISABLE_AFTER_SECONDS
    # disables the endpoint.
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Failing for over a minute, it is tried by one delivery at a time, no sooner than this.
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Delivery(Base):
    """An event owed to an endpoint: one row per (event, endpoint), whatever the attempts."""

    __tablename__ = "delivery"

    id: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(BigInteger(), ForeignKey("event.id", ondelete="CASCADE"))
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("webhook_endpoint.id", ondelete="CASCADE")
    )
    # The event's: a call's events go to an endpoint one at a time, in this order.
    call_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    sequence: Mapped[int] = mapped_column(Integer)
    state: Mapped[DeliveryState] = mapped_column(_str_enum(DeliveryState))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # What the next attempt is: "scheduled", or "manual" (a redelivery, a recovery).
    trigger: Mapped[str] = mapped_column(String(16))
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Set when, and only when, the delivery is delivered or given up: NULL is owed.
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id"),
        # What is due to each endpoint, and what is in flight. Partial: a backlog that built up
        # since the table's statistics were taken still reads in this index's order, never
        # sorted whole.
        Index(
            "ix_delivery_due",
            "endpoint_id",
            "next_attempt_at",
            postgresql_where=text("state = 'pending'"),
        ),
        Index(
            "ix_delivery_sending",
            "endpoint_id",
            postgresql_where=text("state = 'sending'"),
        ),
        # Each endpoint's oldest delivery owed (its backlog's age).
        Index(
            "ix_delivery_owed",
            "endpoint_id",
            "created_at",
            postgresql_where=text("state IN ('pending', 'sending')"),
        ),
        # A call's earlier events still owed to the endpoint.
        Index("ix_delivery_endpoint_id_call_id_sequence", "endpoint_id", "call_id", "sequence"),
    )


class DeliveryTally(Base):
    """The deliveries owed (pending, sending), counted by endpoint and state: triggers on
    `delivery` add a row for each change (+n, -n), `app.db.tally` folds them now and then. The
    backlogs on the status page, in the API and the metrics read this, never a count of a
    backlog that a dead endpoint grows by every event."""

    __tablename__ = "delivery_tally"

    id: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=True)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(Uuid)  # no key: rows of a deleted one fold away
    state: Mapped[DeliveryState] = mapped_column(_str_enum(DeliveryState))
    deliveries: Mapped[int] = mapped_column(BigInteger())


class DeliveryAttempt(Base):
    __tablename__ = "delivery_attempt"

    id: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        BigInteger(),
        ForeignKey("delivery.id", ondelete="CASCADE"),
        index=True,
    )
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("webhook_endpoint.id", ondelete="CASCADE")
    )
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)  # None: no answer
    error: Mapped[str | None] = mapped_column(Text)  # why it failed, when it did
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(Text)  # the first KiB
    trigger: Mapped[str] = mapped_column(String(16))  # scheduled, manual

    __table_args__ = (Index("ix_delivery_attempt_endpoint_id_id", "endpoint_id", "id"),)
