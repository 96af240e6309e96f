from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from app.logs import RedactingFilter, redact

SID = "4116345558c26f623df7d2a6b8c184km"  # digits runs in a SID are not phone numbers


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            'POST /status-callback?call_id=9dea&token=ZlR5KML8_K6X HTTP/1.1" 200',
            'POST /status-callback?call_id=9dea&token=[redacted] HTTP/1.1" 200',
        ),
        ("dialling +919052161119 now", "dialling +91******1119 now"),
        ("From=09052161119&x=1", "From=0******1119&x=1"),
        (
            "sid 4116345558c26f623df7d2a6b8c184km stays",
            "sid 4116345558c26f623df7d2a6b8c184km stays",
        ),
        ("at 2024-09-16 15:50:02", "at 2024-09-16 15:50:02"),
        ("GET /calls?from=%2B919052161119 HTTP/1.1", "GET /calls?from=%2B91******1119 HTTP/1.1"),
        ("GET /calls?from=%2b919052161119", "GET /calls?from=%2b91******1119"),
    ],
)
def test_redact(line: str, expected: str) -> None:
    assert redact(line) == expected


@contextmanager
def redacted_log(name: str) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose lines go, through the redacting filter, to the stream yielded with it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def test_the_filter_redacts_formatted_arguments() -> None:
    with redacted_log("test_logs") as (logger, stream):
        logger.warning("calling %s via %s", "+919052161119", "/status-callback?token=s3cr3t")
    assert stream.getvalue() == "calling +91******1119 via /status-callback?token=[redacted]\n"


def test_tracebacks_are_redacted_too() -> None:
    with redacted_log("test_logs.traceback") as (logger, stream):
        try:
            raise ValueError("[parameters: ('+919052161119', 'token=s3cr3t')]")
        except ValueError:
            logger.exception("insert failed")
    logged = stream.getvalue()
    assert "ValueError" in logged
    assert "919052161119" not in logged
    assert "s3cr3t" not in logged
