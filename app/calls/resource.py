"""The call resource: what `GET /calls/{id}` answers and what every event carries (`data.call`).

It lives with the domain, not in `app.api`, because the one write path renders it into the
events it writes in the transaction of the change (`app.calls.outbox`).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer

from app.db.models import Call, CallStatus, RecordingStatus
from app.exotel.wire import IST

# Exotel's `DateUpdated`, shown on Exotel's own clock.
ExotelClock = Annotated[
    datetime | None,
    AfterValidator(lambda value: value.astimezone(IST) if value else None),
    Field(description="Exotel's clock (IST), with its offset."),
]


class CallErrorOut(BaseModel):
    code: str
    message: str
    exotel_status: int | None = None
    exotel_code: int | None = None


# What Exotel charged, in its account's currency (INR): a JSON number, null until known.
Price = Annotated[
    Decimal | None,
    PlainSerializer(lambda v: float(v) if v is not None else None, return_type=float | None),
]


class AttemptOut(BaseModel):
    n: int = Field(description="1 for the first attempt.")
    sid: str | None = Field(description="Exotel's, for this attempt's `Calls/connect`.")
    status: CallStatus
    dispatched_at: datetime | None = None
    ended_at: datetime | None = Field(None, description="When we learnt that it ended.")
    duration: int | None = None
    error: CallErrorOut | None = None
    price: Price = None


class RetryOut(BaseModel):
    max_attempts: int
    on: list[CallStatus]
    intervals: list[int] = Field(description="Seconds before attempt 2, 3, ...; the last repeats.")


class WindowOut(BaseModel):
    start: str
    end: str
    timezone: str


# A call as exocall answered with it (GET /calls/{id} after its terminal callback).
CALL_EXAMPLE: dict[str, Any] = {
    "id": "452255da-dd51-4bb7-a09f-f8b5addd92f5",
    "sid": "b6cb1fa0c1b3d1a7e2d9a4b6f1c2e8pm",
    "status": "completed",
    "from": "+919052161119",
    "caller_id": "08030752400",
    "app_id": "926",
    "flow_url": "http://my.exotel.com/acme1/exoml/start_voice/926",
    "custom_field": "order-123",
    "time_limit": None,
    "time_out": None,
    "recording_url": "https://s3-ap-southeast-1.amazonaws.com/exotelrecordings/acme1/"
    "b6cb1fa0c1b3d1a7e2d9a4b6f1c2e8pm.mp3",
    "duration": 41,
    "conversation_duration": 32,
    "on_call_duration": 41,
    "answered_at": "2024-09-16T15:50:19+05:30",
    "date_updated": "2024-09-16T15:51:00+05:30",
    "digits": "1",
    "flow": [{"applet": "passthru", "at": "2024-09-16T10:20:41Z", "digits": "1"}],
    "recording": {
        "status": "archived",
        # As archived from the simulator's recording (a WAV): a real answer's.
        "size": 48044,
        "content_type": "audio/wav",
        "sha256": "41cd1e3e44877a1d2a44163eca42f5f687dd8133c863cd7c6983e5332b7f0058",
        "attempts": 1,
        "error": None,
        "archived_at": "2026-11-27T00:24:48.312407Z",
        "deleted_at": None,
    },
    "error": None,
    "error_at": None,
    "created_at": "2026-11-27T00:24:41.845594Z",
    "dispatched_at": "2026-11-27T00:24:41.953990Z",
    "updated_at": "2026-11-27T00:24:48.312407Z",  # the archive, last
    "batch_id": None,
    "attempts": [
        {
            "n": 1,
            "sid": "b6cb1fa0c1b3d1a7e2d9a4b6f1c2e8pm",
            "status": "completed",
            "dispatched_at": "2026-11-27T00:24:41.953990Z",
            "ended_at": "2026-11-27T00:24:44.012345Z",
            "duration": 41,
            "error": None,
            "price": None,
        }
    ],
    "next_attempt_at": None,
    "not_before": None,
    "expires_at": None,
    "retry": None,
    "window": None,
    "price": None,
    "canceled_at": None,
}


class FlowStepOut(BaseModel):
    applet: Literal["passthru"] = Field(description="The applet the flow passed.")
    at: datetime = Field(description="When (Exotel's `CurrentTime`, else when it reached us).")
    digits: str | None = Field(
        description="What the customer keyed in the Gather before it, quotes stripped; "
        "empty when they keyed nothing, null when the request carried no `digits`."
    )


class RecordingOut(BaseModel):
    status: RecordingStatus = Field(
        description="pending (to be archived), archived (GET /calls/{id}/recording serves "
        "it), failed (given up), expired (Exotel's copy was gone), deleted (archived, then "
        "deleted after RECORDING_RETENTION_DAYS)."
    )
    size: int | None = Field(description="Bytes, as fetched from Exotel.")
    content_type: str | None
    sha256: str | None = Field(description="Of the bytes Exotel served, hex.")
    attempts: int = Field(description="Attempts to fetch and store it so far.")
    error: str | None = Field(description="Why the last attempt failed, when it did.")
    archived_at: datetime | None
    deleted_at: datetime | None


class CallOut(BaseModel):
    model_config = ConfigDict(
        serialize_by_alias=True,
        validate_by_name=True,
        json_schema_extra={"examples": [CALL_EXAMPLE]},
    )

    id: uuid.UUID
    sid: str | None
    status: CallStatus
    from_number: str = Field(alias="from")
    caller_id: str
    app_id: str | None
    flow_url: str | None
    custom_field: str | None
    time_limit: int | None
    time_out: int | None
    recording_url: str | None
    duration: int | None = Field(description="Seconds, ring time included.")
    conversation_duration: int | None = Field(description="Seconds the two legs talked.")
    on_call_duration: int | None = Field(
        description="Seconds the customer was on the call once they answered."
    )
    answered_at: ExotelClock = Field(
        description="When the customer answered (from Exotel's `answered` event)."
    )
    date_updated: ExotelClock
    digits: str | None = Field(
        description="The latest input the customer keyed in the flow (from its Passthru "
        "requests), quotes stripped."
    )
    flow: list[FlowStepOut] = Field(
        description="Each Passthru applet the flow passed, in time order, with its input."
    )
    recording: RecordingOut | None = Field(
        description="The recording's copy in exocall's archive; null when the call has none."
    )
    error: CallErrorOut | None
    error_at: datetime | None = Field(description="When `error` was recorded.")
    created_at: datetime
    dispatched_at: datetime | None
    updated_at: datetime
    batch_id: uuid.UUID | None
    attempts: list[AttemptOut] = Field(
        description="Each attempt made, oldest first; `sid` is the latest's."
    )
    next_attempt_at: datetime | None = Field(
        description="When a `scheduled` (or re-queued) call is next due to be dialled."
    )
    not_before: datetime | None
    expires_at: datetime | None
    retry: RetryOut | None
    window: WindowOut | None
    price: Price = Field(description="What Exotel charged for every attempt; null until known.")
    canceled_at: datetime | None = Field(description="When cancelling it was asked.")

    @classmethod
    def of(cls, call: Call | Any) -> CallOut:
        """From a `Call`, or a row of the `call` table's columns."""
        error = None
        if call.error_code:
            error = CallErrorOut(
                code=call.error_code,
                message=call.error_message or "",
                exotel_status=call.error_exotel_status,
                exotel_code=call.error_exotel_code,
            )
        recording = None
        if call.recording_status:
            recording = RecordingOut(
                status=call.recording_status,
                size=call.recording_size,
                content_type=call.recording_content_type,
                sha256=call.recording_sha256,
                attempts=call.recording_attempts,
                error=call.recording_error,
                archived_at=call.recording_archived_at,
                deleted_at=call.recording_deleted_at,
            )
        return cls(
            id=call.id,
            sid=call.sid,
            status=call.status,
            from_number=call.from_number,
            caller_id=call.caller_id,
            app_id=call.app_id,
            flow_url=call.flow_url,
            custom_field=call.custom_field,
            time_limit=call.time_limit,
            time_out=call.time_out,
            recording_url=call.recording_url,
            duration=call.duration,
            conversation_duration=call.conversation_duration,
            on_call_duration=call.on_call_duration,
            answered_at=call.answered_at,
            date_updated=call.date_updated,
            digits=call.digits,
            flow=call.flow or [],
            recording=recording,
            error=error,
            error_at=call.error_at,
            created_at=call.created_at,
            dispatched_at=call.dispatched_at,
            updated_at=call.updated_at,
            batch_id=call.batch_id,
            attempts=call.attempts,
            next_attempt_at=call.next_attempt_at,
            not_before=call.not_before,
            expires_at=call.expires_at,
            retry=call.retry,
            window=call.window,
            price=call.price,
            canceled_at=call.canceled_at,
        )
