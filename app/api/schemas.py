"""The HTTP API's bodies: the request that creates a call, the call resource, its events and
batches, with the examples the OpenAPI schema shows (taken from real answers)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from app.calls import policy
from app.calls.phone import to_e164
from app.calls.placing import CallRequest
from app.calls.resource import CALL_EXAMPLE, CallOut, ExotelClock, Price
from app.db.models import EventOutcome, RequestKind
from app.exotel.status_callback import example_fields
from app.numerals import DIGIT, integer

# Exotel documents these bounds for Calls/connect (docs/exotel.md).
MAX_TIME_LIMIT = 14400
MAX_TIME_OUT = 60
MAX_CUSTOM_FIELD = 128
MAX_FLOW_URL = 512
MAX_BATCH = 1000

_CALLER_ID = re.compile(rf"\+?{DIGIT}{{6,16}}")
_APP_ID = re.compile(f"{DIGIT}{{1,32}}")
# The start of an ISO 8601 date-time, which pydantic reads the rest of. Pydantic alone would
# also take a number of seconds since 1970 (`0`, `"0.5"`), which the schema does not offer.
_DATE_TIME = re.compile(rf"{DIGIT}{{4}}-{DIGIT}{{2}}-{DIGIT}{{2}}[Tt ]{DIGIT}{{2}}:{DIGIT}{{2}}")


def _int_as_str(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _whole_number(value: Any) -> Any:
    """An integer as JSON writes one, or as a query string does (ASCII digits); pydantic alone
    would also take `true`, `"1_000"` and other scripts' digits."""
    if isinstance(value, bool):
        raise ValueError("must be an integer")
    if isinstance(value, str):
        if (number := integer(value)) is None:
            raise ValueError("must be an integer, in ASCII digits")
        return number
    return value


def _json_integer(value: Any) -> Any:
    """An integer as JSON writes one (`12`, or `12.0`); not text, nor `true`."""
    if isinstance(value, bool | str):
        raise ValueError("must be an integer")
    return value


def _date_time_text(value: Any) -> Any:
    if isinstance(value, datetime):  # given by Python code, not read from a request
        return value
    if not isinstance(value, str) or not _DATE_TIME.match(value):
        raise ValueError("must be an ISO 8601 date-time with an offset")
    return value


def _matches(pattern: re.Pattern[str], message: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(message)
        return value

    return AfterValidator(check)


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59-23:59 is past the end of time in UTC
        raise ValueError("out of range") from None


def _short_url(value: AnyHttpUrl) -> AnyHttpUrl:
    if len(str(value)) > MAX_FLOW_URL:  # as normalised (punycode, a trailing slash)
        raise ValueError(f"at most {MAX_FLOW_URL} characters")
    return value


# Text a column can hold: PostgreSQL stores no NUL (a query or row with one fails whole).
NO_NUL = r"^[^\x00]*$"
# A timestamp with its offset (a naive one is ambiguous), in UTC.
Instant = Annotated[AwareDatetime, BeforeValidator(_date_time_text), AfterValidator(_in_utc)]
# An integer read strictly (what the schema's `integer` promises), after any bounds of its own
# (`Annotated[int, Field(ge=1), WHOLE_NUMBER]`): before them, the bounds would leave the schema.
WHOLE_NUMBER = BeforeValidator(_whole_number)
# The same for a JSON body's integer, which JSON writes as a number, never as text.
JSON_INTEGER = BeforeValidator(_json_integer)
PhoneNumber = Annotated[str, AfterValidator(to_e164)]
# What Exotel hands to the flow's applets: printable text only.
CustomField = Annotated[str, Field(max_length=MAX_CUSTOM_FIELD, pattern=r"^[^\x00-\x1f\x7f]*$")]
CallerId = Annotated[
    str,
    AfterValidator(lambda v: re.sub(r"[\s\-]", "", v)),
    _matches(_CALLER_ID, "must be an ExoPhone number: digits, optionally after +"),
]
AppId = Annotated[
    str, BeforeValidator(_int_as_str), _matches(_APP_ID, "must be Exotel's numeric app id")
]


class RetryIn(BaseModel):
    """Attempts in all, the statuses that lead to another, and the waits between them."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: Annotated[int, Field(ge=1, le=policy.MAX_ATTEMPTS), JSON_INTEGER] = Field(
        description="Attempts in all, the first included."
    )
    on: list[Literal["busy", "no-answer", "failed"]] = Field(
        min_length=1,
        max_length=3,
        description="The statuses of an attempt that lead to another.",
    )
    intervals: list[Annotated[int, Field(ge=1, le=policy.MAX_INTERVAL_SECONDS), JSON_INTEGER]] = (
        Field(
            [policy.DEFAULT_INTERVAL_SECONDS],
            min_length=1,
            max_length=policy.MAX_ATTEMPTS,
            description="Seconds to wait before attempt 2, 3, ...; the last repeats.",
        )
    )

    def to_policy(self) -> policy.Retry:
        return policy.Retry(self.max_attempts, policy.retryable(self.on), tuple(self.intervals))


ClockTime = Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", examples=["09:00"])]


class WindowIn(BaseModel):
    """The hours of the day attempts are made in."""

    model_config = ConfigDict(extra="forbid")

    start: ClockTime = Field(description="HH:MM, 24-hour.")
    end: ClockTime = Field(description="HH:MM; before `start`: the window runs past midnight.")
    timezone: Annotated[str, Field(max_length=64, pattern=NO_NUL)] = Field(
        policy.INDIA, description="An IANA time zone."
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, name: str) -> str:
        policy.time_zone(name)
        return name

    @model_validator(mode="after")
    def _some_hours(self) -> WindowIn:
        if self.start == self.end:
            raise ValueError("start and end must differ")
        return self

    def to_policy(self) -> policy.Window:
        return policy.Window(
            policy.clock_time(self.start),
            policy.clock_time(self.end),
            policy.time_zone(self.timezone),
        )


PLACE_EXAMPLE: dict[str, Any] = {
    "from": "+919052161119",
    "app_id": "926",
    "caller_id": "08030752400",
    "time_limit": 300,
    "time_out": 30,
    "custom_field": "order-123",
}


class CallCreate(BaseModel):
    """`POST /calls`: whom to phone, and which Exotel flow to connect them to."""

    model_config = ConfigDict(
        extra="forbid", str_strip_whitespace=True, json_schema_extra={"examples": [PLACE_EXAMPLE]}
    )

    from_number: PhoneNumber = Field(
        alias="from", description="The customer's number: Indian (any usual form) or E.164."
    )
    app_id: AppId | None = Field(None, description="Exotel's numeric flow (app) id.")
    flow_url: Annotated[AnyHttpUrl, AfterValidator(_short_url)] | None = Field(
        None, description="A full flow URL, instead of app_id."
    )
    caller_id: CallerId | None = Field(
        None, description="The ExoPhone to call from; EXOTEL_CALLER_ID when absent."
    )
    time_limit: Annotated[int, Field(ge=1, le=MAX_TIME_LIMIT), JSON_INTEGER] | None = Field(
        None, description="Seconds."
    )
    time_out: Annotated[int, Field(ge=1, le=MAX_TIME_OUT), JSON_INTEGER] | None = Field(
        None, description="Ring seconds."
    )
    custom_field: CustomField | None = None
    not_before: Instant | None = Field(None, description="Not dialled before then.")
    expires_at: Instant | None = Field(
        None, description="Not dialled after then: a call still waiting ends `expired`."
    )
    retry: RetryIn | None = Field(None, description="Absent: one attempt.")
    window: WindowIn | None = Field(
        None, description="Absent: CALLING_WINDOW's, if it is set; else any hour."
    )

    @model_validator(mode="after")
    def _one_flow(self) -> CallCreate:
        if (self.app_id is None) == (self.flow_url is None):
            raise ValueError("give exactly one of app_id and flow_url")
        return self

    @field_validator("expires_at")
    @classmethod
    def _after_not_before(cls, expires_at: datetime | None, info: ValidationInfo) -> Any:
        not_before = info.data.get("not_before")
        if expires_at and not_before and expires_at <= not_before:
            raise ValueError("must be after not_before")
        return expires_at

    def to_request(self, idempotency_key: str | None) -> CallRequest:
        return CallRequest(
            from_number=self.from_number,
            app_id=self.app_id,
            flow_url=str(self.flow_url) if self.flow_url else None,
            caller_id=self.caller_id,
            time_limit=self.time_limit,
            time_out=self.time_out,
            custom_field=self.custom_field,
            idempotency_key=idempotency_key,
            not_before=self.not_before,
            expires_at=self.expires_at,
            retry=self.retry.to_policy() if self.retry else None,
            window=self.window.to_policy() if self.window else None,
        )


class CallPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [CALL_EXAMPLE],
                    "next_cursor": "WyIyMDI2LTExLTI3VDAwOjI0OjQxLjg0NTU5NCswMDowMCIsICI0NTIyNTVk"
                    "YS1kZDUxLTRiYjctYTA5Zi1mOGI1YWRkZDkyZjUiXQ",
                }
            ]
        }
    )

    items: list[CallOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class EventOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": 1,
                    "kind": "status_callback",
                    "receipt_id": "2751a23d-306b-47ec-9735-9527b08858b8",
                    "sid": CALL_EXAMPLE["sid"],
                    "attempt": 1,
                    "received_at": "2026-11-27T00:24:42.149051Z",
                    "method": "POST",
                    "content_type": "multipart/form-data",
                    "outcome": "applied",
                    "status": "completed",
                    "event_type": None,
                    "recording_url": CALL_EXAMPLE["recording_url"],
                    "date_updated": "2024-09-16T15:51:00+05:30",
                    "date_updated_raw": "2024-09-16 15:51:00",
                    "payload": example_fields(CALL_EXAMPLE["sid"], CALL_EXAMPLE["recording_url"]),
                    "problem": None,
                },
                {
                    "id": 2,
                    "kind": "dispatch",
                    "receipt_id": None,
                    "sid": None,
                    "attempt": 1,
                    "received_at": "2026-11-27T00:24:40.911226Z",
                    "method": "POST",
                    "content_type": None,
                    "outcome": "applied",
                    "status": None,
                    "event_type": None,
                    "recording_url": None,
                    "date_updated": None,
                    "date_updated_raw": None,
                    "payload": {
                        "Status": 403,
                        "Message": "Call to [09052161115] cannot be made because of TRAI NDNC "
                        "regulations; ",
                        "Code": None,
                    },
                    "problem": "Call to [09052161115] cannot be made because of TRAI NDNC "
                    "regulations",
                },
            ]
        },
    )

    id: int
    kind: RequestKind = Field(
        description="How it reached us: a status callback, a flow's Passthru request, or "
        "Exotel's answer to our request about the call: to its `Calls/connect` (`dispatch`) or "
        "for its details (`lookup`, reconciliation)."
    )
    receipt_id: uuid.UUID | None
    sid: str | None = Field(description="The Exotel call SID it was about, when it named one.")
    attempt: int | None = Field(
        description="The call's attempt it was about (`attempts[].n`); null when it matched "
        "no call."
    )
    received_at: datetime = Field(
        description="When it was received; an answer of Exotel's, when it was recorded."
    )
    method: str = Field(description="The request's; for an answer of Exotel's, our request's.")
    content_type: str | None = Field(
        description="Null when the fields came in the query, and for an answer of Exotel's."
    )
    outcome: EventOutcome
    status: str | None
    event_type: str | None
    recording_url: str | None
    date_updated: ExotelClock
    date_updated_raw: str | None
    payload: dict[str, Any] = Field(
        description="Exotel's fields as received: the query string's and the body's (the "
        "body's value where both had one). For an answer of Exotel's, the `Call` it answered "
        "about this call, or its `RestException`; empty when no readable answer came."
    )
    problem: str | None = Field(
        description="Why it is `unreadable`: what it lacks, or why it could not be stored as "
        "read (it is then kept as received, nothing read from it). For an answer of Exotel's "
        "that is not a call: what Exotel said, or why no answer came.",
    )


IdempotencyKey = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")]


class BatchCallCreate(CallCreate):
    idempotency_key: IdempotencyKey | None = Field(
        None, description="As the Idempotency-Key header of POST /calls, for this call."
    )


class BatchCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "calls": [
                        {"from": "09052161112", "app_id": "926", "idempotency_key": "order-7"},
                        {
                            "from": "+91 90521 61113",
                            "app_id": "926",
                            "custom_field": "order-8",
                            "idempotency_key": "order-8",
                        },
                    ]
                }
            ]
        },
    )

    calls: list[BatchCallCreate] = Field(min_length=1, max_length=MAX_BATCH)


# A call still in the queue (nothing from Exotel yet).
QUEUED_EXAMPLE = CALL_EXAMPLE | {
    "sid": None,
    "status": "queued",
    "recording_url": None,
    "duration": None,
    "conversation_duration": None,
    "on_call_duration": None,
    "answered_at": None,
    "date_updated": None,
    "dispatched_at": None,
    "updated_at": CALL_EXAMPLE["created_at"],
}
_BATCHED_EXAMPLE = QUEUED_EXAMPLE | {
    "id": "dd212c95-bd81-4dce-993e-f9085132ac82",
    "from": "+919052161112",
    "custom_field": None,
    "created_at": "2026-11-27T00:24:42.103242Z",
    "updated_at": "2026-11-27T00:24:42.103242Z",
    "batch_id": "2b41daf5-96c3-4f5c-afee-82069c921da7",
}


class BatchOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "2b41daf5-96c3-4f5c-afee-82069c921da7",
                    "size": 1,
                    "calls": [_BATCHED_EXAMPLE],
                }
            ]
        }
    )

    id: uuid.UUID
    size: int
    calls: list[CallOut] = Field(description="In the order given; a repeated key repeats its call.")


class BatchSummary(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "2b41daf5-96c3-4f5c-afee-82069c921da7",
                    "size": 1000,
                    "created_at": "2026-11-27T00:24:42.101903Z",
                    "counts": {"completed": 812, "busy": 21, "in-progress": 17, "queued": 150},
                    "price": 774.6,
                }
            ]
        }
    )

    id: uuid.UUID
    size: int
    created_at: datetime
    counts: dict[str, int] = Field(description="Calls of the batch by status.")
    price: Price = Field(
        description="What Exotel charged for the batch's calls, in all (INR), as far as known: "
        "the sum of their `price`; null while none is known."
    )
