"""The bodies of `/opt-outs`, with the examples the OpenAPI schema shows."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.api.schemas import NO_NUL, PhoneNumber
from app.calls.opt_outs import OptOutEntry, OptOutSource

MAX_REASON = 500

# Text, not a blank: a reason of only spaces is none.
Reason = Annotated[
    str | None,
    Field(max_length=MAX_REASON, pattern=NO_NUL),
    AfterValidator(lambda value: value or None),
]

OPT_OUT_EXAMPLE: dict[str, Any] = {
    "number": "+919052161119",
    "reason": "asked not to be called, ticket 4411",
    "source": "api",
    "created_at": "2026-12-05T10:12:31.207461Z",
}


class OptOutCreate(BaseModel):
    """`POST /opt-outs`: a number never to be called."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [{"number": "09052161119", "reason": OPT_OUT_EXAMPLE["reason"]}]
        },
    )

    number: PhoneNumber = Field(
        description="Indian (any spelling `POST /calls` takes) or E.164; stored in E.164."
    )
    reason: Reason = Field(None, description="Why, for people; null when absent or blank.")


class OptOutOut(BaseModel):
    """A number that is never called."""

    model_config = ConfigDict(json_schema_extra={"examples": [OPT_OUT_EXAMPLE]})

    number: str = Field(description="E.164.")
    reason: str | None
    source: OptOutSource = Field(
        description="`api`: by `POST /opt-outs`; `passthru`: the customer, keying "
        "PASSTHRU_OPT_OUT_DIGITS in a flow."
    )
    created_at: datetime = Field(description="When it was first opted out.")

    @classmethod
    def of(cls, entry: OptOutEntry) -> OptOutOut:
        return cls(
            number=entry.number,
            reason=entry.reason,
            source=entry.source,
            created_at=entry.created_at,
        )


class OptOutPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [OPT_OUT_EXAMPLE],
                    "next_cursor": "WyIyMDI2LTEyLTA1VDEwOjEyOjMxLjIwNzQ2MSswMDowMCIsICIrOTE5MD"
                    "UyMTYxMTE5Il0",
                }
            ]
        }
    )

    items: list[OptOutOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )
