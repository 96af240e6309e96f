"""Exotel's wire formats, parsed leniently.

Real bodies differ from the documentation (docs/exotel.md): empty values come as `null`, `""` or
empty XML elements; numbers as `11` or `"11"`; SIDs are opaque, not hex. Everything here accepts
all of those and turns them into the app's own names.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from defusedxml import ElementTree as SafeET

from app.numerals import DIGIT, integer

IST = timezone(timedelta(hours=5, minutes=30), "IST")

CallFields = Mapping[str, Any]


class UnreadableBody(ValueError):
    """A body that is neither Exotel's XML nor its JSON."""


def clean_str(value: Any) -> str | None:
    """A string, or None for Exotel's many spellings of nothing."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def clean_int(value: Any) -> int | None:
    """A whole number of 0 or more (every number Exotel sends counts something) from `11`,
    `"11"` or `"11.0"`; None when absent or anything else: `-5`, `true`, `{}`, `"1e3"`, or
    digits that are not ASCII (`"١٢"`)."""
    if isinstance(value, bool):  # an int to Python, never a number to Exotel
        return None
    if isinstance(value, float):
        value = int(value) if value.is_integer() else None
    elif isinstance(value, str):
        value = integer(text) if (text := clean_str(value)) else None
    return value if isinstance(value, int) and value >= 0 else None


# An amount as Exotel writes `Price` ("0.600"): ASCII digits, maybe a fraction.
_AMOUNT = re.compile(rf"{DIGIT}+(?:\.{DIGIT}+)?")


def clean_amount(value: Any) -> Decimal | None:
    """An amount of 0 or more from `"0.600"` or `0.6`; None when absent or anything else:
    `"-1"`, `"NaN"`, `"1e3"`, `"₹0.60"`, `true`."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        value = str(value)
    text = clean_str(value) if isinstance(value, str) else None
    if text is None or not _AMOUNT.fullmatch(text):
        return None
    return Decimal(text)


def parse_exotel_time(raw: str | None) -> datetime | None:
    """Exotel's `YYYY-MM-DD HH:MM:SS` has no zone: evidence says IST. An offset, if any, wins."""
    if raw is None:
        return None
    try:
        parsed = datetime.fromisoformat(raw.strip())
        parsed = parsed.replace(tzinfo=IST) if parsed.tzinfo is None else parsed
        parsed.astimezone(UTC)  # an instant every clock can name (not year 1 in IST)
    except (ValueError, OverflowError):
        return None
    return parsed


def format_exotel_time(instant: datetime) -> str:
    """The inverse of parse_exotel_time: IST, no zone."""
    return instant.astimezone(IST).strftime("%Y-%m-%d %H:%M:%S")


def clean_message(message: Any) -> str:
    # Exotel's messages often end in "; " (`Service Unavailable; `).
    text = clean_str(message) or ""
    return text.rstrip("; ").strip() or "no message"


@dataclass(frozen=True)
class ExotelCall:
    """A `Call` object from `Calls/connect` or call details."""

    sid: str
    status: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    caller_id: str | None = None
    date_created_raw: str | None = None
    date_updated_raw: str | None = None
    start_time_raw: str | None = None
    end_time_raw: str | None = None
    duration: int | None = None
    conversation_duration: int | None = None
    # `Price`: what Exotel charged (INR), null until it fills it in, minutes after the end,
    # and None for what is no amount; `price_raw`: as sent, to tell the two apart.
    price: Decimal | None = None
    price_raw: str | None = None
    recording_url: str | None = None
    direction: str | None = None
    # The `Call` object's fields as Exotel sent them (XML elements as their text), read no
    # further: what exocall keeps of the answer beside what it read from it.
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def date_updated(self) -> datetime | None:
        return parse_exotel_time(self.date_updated_raw)

    @property
    def date_created(self) -> datetime | None:
        return parse_exotel_time(self.date_created_raw)

    @classmethod
    def from_fields(cls, fields: CallFields) -> ExotelCall | None:
        sid = clean_str(fields.get("Sid"))
        if sid is None:
            return None
        details = fields.get("Details")
        details = details if isinstance(details, Mapping) else {}
        return cls(
            sid=sid,
            status=clean_str(fields.get("Status")),
            from_number=clean_str(fields.get("From")),
            to_number=clean_str(fields.get("To")),
            caller_id=clean_str(fields.get("PhoneNumberSid")),
            date_created_raw=clean_str(fields.get("DateCreated")),
            date_updated_raw=clean_str(fields.get("DateUpdated")),
            start_time_raw=clean_str(fields.get("StartTime")),
            end_time_raw=clean_str(fields.get("EndTime")),
            duration=clean_int(fields.get("Duration")),
            conversation_duration=clean_int(details.get("ConversationDuration")),
            price=clean_amount(fields.get("Price")),
            price_raw=clean_str(fields.get("Price")),
            recording_url=clean_str(fields.get("RecordingUrl")),
            direction=clean_str(fields.get("Direction")),
            raw=dict(fields),
        )


@dataclass(frozen=True)
class RestException:
    status: int | None
    message: str
    code: int | None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)  # as sent


@dataclass(frozen=True)
class ExotelResponse:
    """A parsed response body: its calls, or the error it carries.

    `next_page_uri` is bulk call details' `Metadata.NextPageUri`, as Exotel sent it (a path and
    query relative to the API host); None on the last page, where Exotel sends null or "".
    """

    calls: list[ExotelCall] = field(default_factory=list)
    error: RestException | None = None
    next_page_uri: str | None = None


def parse_response(body: bytes) -> ExotelResponse:
    """Parse any Exotel voice response, XML or JSON, whatever `.json` asked for."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        if text.startswith("<"):
            return _parse_xml(text)
        if text.startswith(("{", "[")):
            return _parse_json(text)
    except RecursionError as exc:  # absurdly deep nesting, in either format
        raise UnreadableBody("nested too deeply") from exc
    raise UnreadableBody("neither XML nor JSON")


def _parse_json(text: str) -> ExotelResponse:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnreadableBody(f"invalid JSON: {exc.msg}") from exc
    if not isinstance(document, dict):
        raise UnreadableBody("JSON body is not an object")
    error = document.get("RestException")
    if isinstance(error, Mapping):
        return ExotelResponse(error=_rest_exception(error))
    raw_calls: list[Any] = []
    if isinstance(document.get("Call"), Mapping):
        raw_calls = [document["Call"]]
    elif isinstance(document.get("Calls"), list):
        raw_calls = document["Calls"]
    metadata = document.get("Metadata")
    return ExotelResponse(
        calls=_calls(c for c in raw_calls if isinstance(c, Mapping)),
        next_page_uri=_next_page_uri(metadata) if isinstance(metadata, Mapping) else None,
    )


def _parse_xml(text: str) -> ExotelResponse:
    try:
        root = SafeET.fromstring(text)
    except (ET.ParseError, ValueError) as exc:
        raise UnreadableBody(f"invalid XML: {exc}") from exc
    error = root if root.tag == "RestException" else root.find("RestException")
    if error is not None:
        return ExotelResponse(error=_rest_exception(_xml_fields(error)))
    elements = [root] if root.tag == "Call" else root.iter("Call")
    metadata = next(root.iter("Metadata"), None)
    return ExotelResponse(
        calls=_calls(_xml_fields(element) for element in elements),
        next_page_uri=_next_page_uri(_xml_fields(metadata)) if metadata is not None else None,
    )


def _xml_fields(element: ET.Element) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for child in element:
        fields[child.tag] = _xml_fields(child) if len(child) else child.text
    return fields


def _rest_exception(fields: Mapping[str, Any]) -> RestException:
    return RestException(
        status=clean_int(fields.get("Status")),
        message=clean_message(fields.get("Message")),
        code=clean_int(fields.get("Code")),
        raw=dict(fields),
    )


def _next_page_uri(metadata: Mapping[str, Any]) -> str | None:
    uri = metadata.get("NextPageUri")
    # Only a string is a URI; anything else (a nested object, a number) is not one to follow.
    return clean_str(uri) if isinstance(uri, str) else None


def _calls(raw_calls: Iterable[CallFields]) -> list[ExotelCall]:
    return [call for call in map(ExotelCall.from_fields, raw_calls) if call is not None]
