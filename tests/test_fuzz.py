"""Fuzzing the service's own OpenAPI schema with schemathesis, in-process, on each backend: no
input makes it answer 5xx, and every answer is one the schema documents (status, content type,
body). Bounded: a fixed number of examples per operation."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, reject, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import text
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    # Starlette now asks for an `httpx2` package for its test client; httpx still works.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

from app.db.session import create_engine
from app.main import create_app
from tests.conftest import AUTH, make_settings
from tests.exotel_double import ExotelDouble

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _sendable(header_value: Any) -> bool:
    try:
        str(header_value).encode("ascii")
    except UnicodeEncodeError:
        return False
    return True


def _empty_tables(url: str) -> None:
    async def empty() -> None:
        engine = create_engine(url)
        async with engine.begin() as connection:
            for table in ("call_event", "call", "batch", "exotel_request", "lease"):
                await connection.execute(text(f"DELETE FROM {table}"))  # noqa: S608
        await engine.dispose()

    asyncio.run(empty())


@pytest.fixture
def fuzzed_app(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    """The app on a real, migrated database, its lifespan running, Exotel a double."""
    exotel = ExotelDouble()
    app = create_app(
        make_settings(database_url, spool_dir=tmp_path / "spool", dispatch_wait_seconds=0.2),
        exotel_transport=httpx.MockTransport(exotel.handle),
    )
    with TestClient(app, headers=AUTH, raise_server_exceptions=False) as client:
        yield client
    _empty_tables(database_url)


# The schema as the app serves it at /openapi.json (making it needs no database).
schema = schemathesis.openapi.from_dict(create_app(make_settings("sqlite+aiosqlite://")).openapi())


@schema.parametrize()
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_no_input_gets_a_5xx_or_an_undocumented_answer(case: Any, fuzzed_app: TestClient) -> None:
    request = case.as_transport_kwargs(base_url="http://testserver")
    # As httpx wants them: no per-request cookies (the schema has none), raw bodies as content.
    request.pop("cookies", None)
    if isinstance(request.get("data"), bytes | str):
        request["content"] = request.pop("data")
    if not all(_sendable(value) for value in (request.get("headers") or {}).values()):
        reject()  # no HTTP client can put that in a header; no server will ever see it
    response = fuzzed_app.request(**request)
    case.validate_response(response, checks=CHECKS)
