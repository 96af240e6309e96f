"""The service as the webhook tests build it: deliveries retried within a second, at once."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from app.main import create_app
from tests.conftest import make_settings, no_dns
from tests.support.exotel_double import ExotelDouble

FAST = {
    "webhook_retry_schedule": "0.2,0.2,0.2,0.2,0.2,0.2",
    "jobs_poll_seconds": 0.05,
    "webhook_timeout_seconds": 2,
}


def app_with(db_url: str, exotel: ExotelDouble, **overrides: Any) -> FastAPI:
    settings = make_settings(db_url, **(FAST | overrides))
    transport = httpx.MockTransport(exotel.handle)
    return create_app(settings, exotel_transport=transport, resolver=no_dns)
