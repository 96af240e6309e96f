"""Dependencies, as `Annotated` aliases so a route's signature reads as the list of its needs.

All are `async def`, even those that never await: FastAPI runs plain functions in a thread pool,
a handoff that costs more than any of them.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Sequence
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.api.errors import ApiError
from app.calls.dispatcher import Dispatch
from app.config import Settings
from app.metrics import Metrics
from app.recordings.store import RecordingStore
from app.runtime import Runtime


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime  # built by the lifespan
    return runtime


async def get_settings(request: Request) -> Settings:
    return settings_of(request)


async def get_engine(request: Request) -> AsyncEngine:
    return runtime_of(request).engine


async def get_dispatch(request: Request) -> Dispatch:
    return runtime_of(request).dispatch


async def get_metrics(request: Request) -> Metrics:
    return runtime_of(request).metrics


async def get_recordings(request: Request) -> RecordingStore:
    return runtime_of(request).recordings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session for the request. Routes that write commit it themselves, before they answer:
    an answer is only given for what is durable."""
    async with runtime_of(request).sessionmaker() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
DispatchDep = Annotated[Dispatch, Depends(get_dispatch)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
RecordingsDep = Annotated[RecordingStore, Depends(get_recordings)]


SessionDep = Annotated[AsyncSession, Depends(get_session)]


_bearer = HTTPBearer(auto_error=False, description="One of the service's API_KEYS.")


def is_api_key(keys: Sequence[SecretStr], given: bytes) -> bool:
    """Whether `given` is one of `keys`: compared with every key, each in constant time, so
    the time taken tells nothing of which key, or how much of one, matched."""
    matches = [hmac.compare_digest(key.get_secret_value().encode(), given) for key in keys]
    return any(matches)


async def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """The internal API's bearer keys, compared in constant time against every key. Without
    API_KEYS (development only: production refuses to start) the API is open."""
    keys = settings.service.api_keys
    if not keys:
        return
    if not is_api_key(keys, credentials.credentials.encode() if credentials else b""):
        raise ApiError(
            401,
            "unauthenticated",
            "send Authorization: Bearer <one of the service's API keys>",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def require_json(request: Request) -> None:
    """JSON endpoints refuse other bodies with 415 rather than guessing at them."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")


async def require_metrics_access(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """`/metrics`: an API key, unless METRICS_PUBLIC opens it."""
    if not settings.service.metrics_public:
        await require_api_key(settings, credentials)
