"""Logging set-up. Whatever is logged passes a redacting filter: callback tokens and phone
numbers (personal data) never reach the log, even when a library logs a URL.

Lines are JSON objects, one event per line, for log aggregators (`LOG_FORMAT=json`, the default
in production), or plain text for people (the default in development). Each carries the id of
the request it was logged under, and the `call_id` and `sid` it is about when there is one.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

_TOKEN = re.compile(r"(token=)[^&\s\"']+")
# A number, bare or after a `+` (`%2B` in a URL's query).
_PHONE = re.compile(r"(?<![\w+*])(\+|%2B)?(\d{10,15})(?!\w)", re.IGNORECASE)
_FORMATTER = logging.Formatter()


def mask(number: str | None) -> str:
    """`+919052161119` -> `+91******1119`: numbers are personal data."""
    if not number:
        return ""
    keep_head = 3 if number.startswith("+") else 1
    if len(number) <= keep_head + 4:
        return "*" * len(number)
    return number[:keep_head] + "*" * (len(number) - keep_head - 4) + number[-4:]


def redact(text: str) -> str:
    text = _TOKEN.sub(r"\1[redacted]", text)
    return _PHONE.sub(lambda m: (m[1] or "") + mask(("+" if m[1] else "") + m[2]).lstrip("+"), text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info:
            # Tracebacks carry SQL parameters and URLs too; formatters use this text. Another
            # handler may have formatted the record already, and cached its text unredacted.
            text = record.exc_text or _FORMATTER.formatException(record.exc_info)
            record.exc_text = redact(text)
        return True


# The id of the request being served, set by `app.api.request_ids.RequestIds`.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# What a line may say besides its message: `extra=about(call_id, sid)`.
_CONTEXT = ("request_id", "call_id", "sid")


def about(call_id: uuid.UUID | None, sid: str | None = None) -> dict[str, Any]:
    """`extra` for a log line about a call."""
    return {"call_id": str(call_id) if call_id else None, "sid": sid}


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= {name: value for name in _CONTEXT if (value := getattr(record, name, None))}
        if record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{n}={v}" for n in _CONTEXT if (v := getattr(record, n, None)))
        return f"{line} [{context}]" if context else line


def logging_config(*, format: Literal["json", "text"], level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig`: what every command and every uvicorn worker applies."""
    formatter = JsonFormatter if format == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": f"{__name__}.{ContextFilter.__name__}"},
            "redact": {"()": f"{__name__}.{RedactingFilter.__name__}"},
        },
        "formatters": {"default": {"()": f"{__name__}.{formatter.__name__}"}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["context", "redact"],
            }
        },
        "root": {"level": level, "handlers": ["default"]},
        # httpx logs every request URL at INFO; our own logs say what matters.
        "loggers": {"httpx": {"level": "WARNING"}},
    }
