"""Dependencies, as `Annotated` aliases so a route's signature reads as the list of its needs.

All are `async def`, even those that never await: FastAPI runs plain functions in a thread pool,
a handoff that costs more than any of them.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.api.errors import ApiError
from app.calls.dispatch import Dispatch
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
    """The request's transaction, committed when its route returns and before the answer is
    sent (an answer is only given for what is durable); rolled back when the route raises.
    `POST /calls` alone also commits early: the call is durable before Exotel is asked."""
    async with runtime_of(request).sessionmaker() as session:
        yield session
        await session.commit()


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
DispatchDep = Annotated[Dispatch, Depends(get_dispatch)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
RecordingsDep = Annotated[RecordingStore, Depends(get_recordings)]


# "function": the commit is before the answer is sent, and a failed commit is the answer.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


_bearer = HTTPBearer(auto_error=False, description="One of the service's API_KEYS.")


def is_api_key(keys: Sequence[SecretStr], given: bytes) -> bool:
    """Whether `given` is one of `keys`: compared with every key, each in constant time, so
    the time taken tells nothing of which key, or how much of one, matched."""
    matches = [hmac.compare_digest(key.get_secret_value().encode(), given) for key in keys]
    return any(matches)


def _presented_key(authorization: str) -> bytes:
    """The key of `Authorization: Bearer <key>`, or the password of `Basic <user:key>`."""
    scheme, credentials = get_authorization_scheme_param(authorization)
    if scheme.lower() == "bearer":
        return credentials.encode()
    if scheme.lower() == "basic":
        try:
            user_and_password = base64.b64decode(credentials, validate=True)
        except (binascii.Error, ValueError):
            return b""
        _user, colon, password = user_and_password.partition(b":")
        return password if colon else b""
    return b""


class ApiKey:
    """The service's one authentication: one of API_KEYS, as a bearer token, or as the password
    of HTTP Basic auth (what a browser sends for `/ui` and a call's recording). Open without
    API_KEYS, in development only: production refuses to start without them.

    `browser`: a refusal asks for Basic auth, so that a browser asks for the key; else for a
    bearer token. `open_if`: a setting that opens the route (`METRICS_PUBLIC`)."""

    def __init__(
        self, *, browser: bool = False, open_if: Callable[[Settings], bool] | None = None
    ) -> None:
        self._challenge = {"WWW-Authenticate": 'Basic realm="exocall"' if browser else "Bearer"}
        if browser:  # the pages and recordings are personal data
            self._challenge |= {"Cache-Control": "no-store"}
        self._message = (
            "sign in with any user name and one of the service's API keys as the password"
            if browser
            else "send Authorization: Bearer <one of the service's API keys>"
        )
        self._open_if = open_if

    async def __call__(
        self,
        request: Request,
        settings: SettingsDep,
        # Read from the header below; declared so that the schema names the scheme.
        _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> None:
        keys = settings.service.api_keys
        if not keys or (self._open_if is not None and self._open_if(settings)):
            return
        if not is_api_key(keys, _presented_key(request.headers.get("authorization", ""))):
            raise ApiError(401, "unauthenticated", self._message, headers=self._challenge)


require_api_key = ApiKey()
require_page_access = ApiKey(browser=True)
require_metrics_access = ApiKey(open_if=lambda settings: settings.service.metrics_public)


async def require_json(request: Request) -> None:
    """JSON endpoints refuse other bodies with 415 rather than guessing at them."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
