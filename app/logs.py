"""Logging set-up. Whatever is logged passes a redacting filter: callback tokens and phone
numbers (personal data) never reach the log, even when a library logs a URL."""

from __future__ import annotations

import logging
import re

from app.calls.phone import mask

_TOKEN = re.compile(r"(token=)[^&\s\"']+")
# A number, bare or after a `+` (`%2B` in a URL's query).
_PHONE = re.compile(r"(?<![\w+*])(\+|%2B)?(\d{10,15})(?!\w)", re.IGNORECASE)
_FORMATTER = logging.Formatter()


def redact(text: str) -> str:
    text = _TOKEN.sub(r"\1[redacted]", text)
    return _PHONE.sub(lambda m: (m[1] or "") + mask(("+" if m[1] else "") + m[2]).lstrip("+"), text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and not record.exc_text:
            # Tracebacks carry SQL parameters and URLs too; the formatter uses this text.
            record.exc_text = redact(_FORMATTER.formatException(record.exc_info))
        return True


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    # httpx logs every request URL at INFO; our own logs say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
