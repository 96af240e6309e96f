from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from app.logs import ContextFilter, JsonFormatter, RedactingFilter, TextFormatter, about, redact
from tests.conftest import place_body

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


@contextmanager
def json_log() -> Iterator[io.StringIO]:
    """Every log line, as the service writes them with LOG_FORMAT=json, into the stream."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)  # setLevel, not `.level =`: loggers cache what is enabled
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_call_and_redact_what_they_say() -> None:
    call_id = uuid.uuid4()
    with json_log() as stream:
        logger = logging.getLogger("test_logs.json")
        logger.info("dialling %s", "+919052161119", extra=about(call_id, SID))
        try:
            raise ValueError("token=s3cr3t")
        except ValueError:
            logger.exception("failed\nacross lines")
    first, second = lines_of(stream)
    assert first["message"] == "dialling +91******1119"
    assert (first["call_id"], first["sid"], first["level"]) == (str(call_id), SID, "info")
    assert "request_id" not in first  # logged outside any request
    assert second["message"] == "failed\nacross lines"  # one event, one line
    assert "ValueError: token=[redacted]" in second["exception"]
    assert "s3cr3t" not in stream.getvalue()


def test_text_lines_name_their_context() -> None:
    record = logging.makeLogRecord({"msg": "sent", "call_id": "c-1", "sid": None})
    assert TextFormatter().format(record).endswith("sent [call_id=c-1]")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("given", "kept"), [("req-7f3a:retry/2", True), (None, False), ("two words", False)]
)
async def test_a_request_id_is_answered_and_logged(
    client: httpx.AsyncClient, given: str | None, kept: bool
) -> None:
    headers = {"X-Request-ID": given} if given else {}
    with json_log() as stream:
        response = await client.post("/calls?wait=false", json=place_body(), headers=headers)
    assert response.status_code == 202
    answered = response.headers["X-Request-ID"]
    assert (answered == given) is kept
    if not kept:
        assert len(answered) == 32  # a new one
    (queued,) = [line for line in lines_of(stream) if line["message"].startswith("call ")]
    assert queued["request_id"] == answered
    assert queued["call_id"] == response.json()["id"]
    assert "9052161110" not in queued["message"]
