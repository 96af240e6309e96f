"""The two tables: `call` (one row per call we were asked to place) and `call_event` (every
status callback received, append-only)."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Double,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime


def utcnow() -> datetime:
    return datetime.now(UTC)


class CallStatus(enum.StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    FAILED = "failed"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    CANCELED = "canceled"
    REJECTED = "rejected"
    UNKNOWN = "unknown"


class EventOutcome(enum.StrEnum):
    """What a received status callback did to its call."""

    APPLIED = "applied"  # changed the call
    DUPLICATE = "duplicate"  # told us nothing new
    STALE = "stale"  # older than what we know (e.g. `answered` after a terminal status)
    UNKNOWN_SID = "unknown_sid"  # no call known yet; attached once one is
    SID_MISMATCH = "sid_mismatch"  # the URL names a call whose SID differs from the callback's
    IGNORED = "ignored"  # a status or event type we do not act on


def _str_enum(cls: type[enum.StrEnum]) -> Enum:
    # Stored as plain strings (no native enum, no CHECK) so adding a value needs no migration.
    return Enum(cls, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class Batch(Base):
    """Calls submitted together with `POST /calls/batch`."""

    __tablename__ = "batch"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Call(Base):
    __tablename__ = "call"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
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
    date_updated: Mapped[datetime | None] = mapped_column(UTCDateTime)
    date_updated_raw: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_exotel_status: Mapped[int | None] = mapped_column(Integer)
    error_exotel_code: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    # One call per key, whichever replica the request reaches; the fingerprint of the request
    # tells a repeat (same body) from a conflict (another body).
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    batch_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("batch.id"), index=True)

    # The dispatch queue. Times here are seconds since the epoch on the database's clock, the
    # one clock every replica shares.
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[float | None] = mapped_column(Double)
    not_before: Mapped[float | None] = mapped_column(Double)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reconciled_at: Mapped[float | None] = mapped_column(Double)

    __table_args__ = (
        # Newest-first listing and its cursor.
        Index("ix_call_created_at_id", "created_at", "id"),
        Index("ix_call_from_number_created_at", "from_number", "created_at"),
        # The queue (oldest queued first) and the status filter.
        Index("ix_call_status_created_at", "status", "created_at"),
    )


class CallEvent(Base):
    __tablename__ = "call_event"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    # Given when the callback is received: a callback replayed from the spool is stored once.
    receipt_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, unique=True)
    call_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("call.id", ondelete="CASCADE"), index=True
    )
    sid: Mapped[str | None] = mapped_column(String(64), index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    content_type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON().with_variant(JSONB(), "postgresql"))
    status: Mapped[str | None] = mapped_column(String(32))
    event_type: Mapped[str | None] = mapped_column(String(32))
    recording_url: Mapped[str | None] = mapped_column(Text)
    date_updated: Mapped[datetime | None] = mapped_column(UTCDateTime)
    date_updated_raw: Mapped[str | None] = mapped_column(String(32))
    outcome: Mapped[EventOutcome] = mapped_column(_str_enum(EventOutcome))


class ExotelRequest(Base):
    """Every request made to Exotel, by the database's clock: the account's shared budget."""

    __tablename__ = "exotel_request"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[float] = mapped_column(Double, index=True)
    kind: Mapped[str] = mapped_column(String(16))


class Throttle(Base):
    """One row per Exotel account. Locking it serialises every grant from the shared budget,
    across replicas; `paused_until` holds everyone back after Exotel answered 429."""

    __tablename__ = "exotel_throttle"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    paused_until: Mapped[float | None] = mapped_column(Double)


class Lease(Base):
    """A named lease, so that one replica at a time runs a job (reconciliation)."""

    __tablename__ = "lease"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[float] = mapped_column(Double)
