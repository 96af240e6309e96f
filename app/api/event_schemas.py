"""The bodies of `/events` and `/webhook-endpoints` (docs/events.md)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AnyHttpUrl, BaseModel, ConfigDict, Field

from app.api.schemas import NO_NUL, Instant
from app.calls.outbox import EVENT_TYPES
from app.calls.resource import CALL_EXAMPLE, CallOut
from app.db.models import DeliveryAttempt, WebhookEndpoint

EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]
MAX_URL = 2048


def _unique(types: list[str]) -> list[str]:
    return list(dict.fromkeys(types))


def _short(url: AnyHttpUrl) -> AnyHttpUrl:
    if len(str(url)) > MAX_URL:
        raise ValueError(f"at most {MAX_URL} characters")
    return url


EndpointUrl = Annotated[AnyHttpUrl, AfterValidator(_short)]
EventTypes = Annotated[list[EventType], Field(min_length=1), AfterValidator(_unique)] | None
Description = Annotated[str | None, Field(max_length=500, pattern=NO_NUL)]

EVENT_EXAMPLE: dict[str, Any] = {
    "id": "evt_5b1e0c0f2f6a4bdfa1d1d0f8e3b2c9a7",
    "type": "call.completed",
    "timestamp": "2026-11-27T00:24:42.190204+00:00",
    "data": {"call": CALL_EXAMPLE, "previous_status": "in-progress", "sequence": 2},
}


# Base64 of "fake-secret-for-the-docs-only-0000": no endpoint has it.
_FAKE_SECRET = "whsec_ZmFrZS1zZWNyZXQtZm9yLXRoZS1kb2NzLW9ubHktMDAwMA=="  # noqa: S105
ENDPOINT_EXAMPLE: dict[str, Any] = {
    "id": "0b6f6f2e-3f4c-4a59-9d7e-2b1f3c4d5e6f",
    "url": "http://orders.internal:8080/exocall-events",
    "event_types": ["call.completed", "call.busy", "call.no_answer"],
    "description": "order service",
    "enabled": True,
    "disabled_reason": None,
    "created_at": "2026-12-01T16:34:06.701020Z",
    "updated_at": "2026-12-01T16:34:06.701020Z",
    "last_success_at": "2026-12-01T16:34:07.112331Z",
    "failing_since": None,
    "retry_at": None,
    "backlog": 0,
}
REDELIVER_EXAMPLE = {"endpoint_id": ENDPOINT_EXAMPLE["id"]}
ATTEMPT_EXAMPLE: dict[str, Any] = {
    "id": 41,
    "event_id": EVENT_EXAMPLE["id"],
    "attempted_at": "2026-12-01T16:34:06.790112Z",
    "status_code": 503,
    "error": "answered 503",
    "latency_ms": 4,
    "response_body": "Service Unavailable",
    "trigger": "scheduled",
}


class EventData(BaseModel):
    call: CallOut = Field(description="The call resource after the change.")
    previous_status: str
    sequence: int = Field(description="Counts the call's events from 1: drop an older one.")


class EventOut(BaseModel):
    """An event, exactly as delivered (the body webhooks sign)."""

    model_config = ConfigDict(json_schema_extra={"examples": [EVENT_EXAMPLE]})

    id: str
    type: EventType
    timestamp: datetime
    data: EventData


class EventPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"items": [EVENT_EXAMPLE], "next_cursor": "WzgxMzQ1NiwgMTJd"},
            ]
        }
    )

    items: list[EventOut]
    next_cursor: str = Field(
        description="Pass as `after` for the events after these: the same cursor when there "
        "are none yet, so a consumer polls with it."
    )


class Redeliver(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [REDELIVER_EXAMPLE]})

    endpoint_id: uuid.UUID | None = Field(
        None, description="Only this endpoint; every enabled endpoint taking the type if absent."
    )


class Queued(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"queued": 1}]})

    queued: int = Field(description="Deliveries queued again.")


class EndpointCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "http://orders.internal:8080/exocall-events",
                    "event_types": ["call.completed", "call.busy", "call.no_answer"],
                    "description": "order service",
                }
            ]
        },
    )

    url: EndpointUrl
    event_types: EventTypes = Field(None, description="Every type when absent or null.")
    description: Description = None


class EndpointChange(BaseModel):
    """Only the fields given change."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"enabled": True}, {"event_types": None}]},
    )

    url: EndpointUrl | None = None
    event_types: EventTypes = None
    description: Description = None
    enabled: bool | None = None


class EndpointOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [ENDPOINT_EXAMPLE]})

    id: uuid.UUID
    url: str
    event_types: list[str] | None
    description: str | None
    enabled: bool
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime
    last_success_at: datetime | None
    failing_since: datetime | None = Field(description="The first failure since the last success.")
    retry_at: datetime | None = Field(
        description="Failing for over a minute: when one delivery may be tried next (past while "
        "a try is in flight)."
    )
    backlog: int = Field(description="Deliveries owed: pending or in flight.")

    @classmethod
    def of(cls, endpoint: WebhookEndpoint, *, backlog: int) -> EndpointOut:
        return cls(
            id=endpoint.id,
            url=endpoint.url,
            event_types=endpoint.event_types,
            description=endpoint.description,
            enabled=endpoint.enabled,
            disabled_reason=endpoint.disabled_reason,
            created_at=endpoint.created_at,
            updated_at=endpoint.updated_at,
            last_success_at=endpoint.last_success_at,
            failing_since=endpoint.failing_since,
            retry_at=endpoint.retry_at,
            backlog=backlog,
        )


class EndpointWithSecret(EndpointOut):
    """As created or rotated: the only times the secret is shown."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [ENDPOINT_EXAMPLE | {"secret": _FAKE_SECRET}]}
    )

    secret: str = Field(description="`whsec_...`: verify each delivery's signature with it.")


class Recover(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"since": "2026-12-01T09:00:00+05:30"}]}
    )

    since: Instant


class AttemptOut(BaseModel):
    id: int
    event_id: str
    attempted_at: datetime
    status_code: int | None = Field(description="Null when no answer came.")
    error: str | None
    latency_ms: int | None
    response_body: str | None = Field(description="The first KiB of the answer.")
    trigger: str = Field(description="scheduled, or manual (a redelivery, a recovery).")

    @classmethod
    def of(cls, attempt: DeliveryAttempt, event_id: str) -> AttemptOut:
        return cls(
            id=attempt.id,
            event_id=event_id,
            attempted_at=attempt.attempted_at,
            status_code=attempt.status_code,
            error=attempt.error,
            latency_ms=attempt.latency_ms,
            response_body=attempt.response_body,
            trigger=attempt.trigger,
        )


class AttemptPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [ATTEMPT_EXAMPLE], "next_cursor": "WzQxXQ"}]}
    )

    items: list[AttemptOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for older ones; null at the end.")
