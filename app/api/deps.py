"""Dependencies, as `Annotated` aliases so a route's signature reads as the list of its needs."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import AsyncIterator, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Annotated

from fastapi import Depends, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.errors import ApiError
from app.calls.callback_auth import verify
from app.services import Services


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_session(services: ServicesDep) -> AsyncIterator[AsyncSession]:
    """A session for the request. Routes that write commit it themselves, before they answer:
    an answer is only given for what is durable."""
    async with services.sessionmaker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def authenticate_callback(
    request: Request,
    services: ServicesDep,
    token: Annotated[str | None, Query(description="The HMAC token of the callback URL.")] = None,
    call_id: Annotated[str | None, Query(description="Our call id, signed by the token.")] = None,
) -> uuid.UUID | None:
    """Check the token that the StatusCallback URL carries; return the call id it vouches for
    (None for the account-wide URL). Checked before the body is read."""
    allowed = services.settings.callback_allowed_ips
    if allowed and not _from_any(request.client.host if request.client else None, allowed):
        raise ApiError(403, "callback_source_forbidden", "callbacks are not accepted from there")
    if not token:
        raise ApiError(401, "callback_unauthenticated", "the callback URL carries no token")
    forbidden = ApiError(403, "callback_forbidden", "the callback token is not valid")
    try:
        parsed_id = uuid.UUID(call_id) if call_id else None
    except ValueError:
        raise forbidden from None
    if not verify(services.settings.signing_secrets, parsed_id, token):
        raise forbidden
    return parsed_id


def _from_any(host: str | None, networks: Sequence[IPv4Network | IPv6Network]) -> bool:
    try:
        address = ip_address(host or "")
    except ValueError:
        return False
    return any(address in network for network in networks)


CallbackCallId = Annotated[uuid.UUID | None, Depends(authenticate_callback)]


_bearer = HTTPBearer(auto_error=False, description="One of the service's API_KEYS.")


def require_api_key(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """The internal API's bearer keys, compared in constant time against every key. Without
    API_KEYS (development only: production refuses to start) the API is open."""
    keys = services.settings.api_keys
    if not keys:
        return
    given = credentials.credentials.encode() if credentials else b""
    matches = [hmac.compare_digest(key.get_secret_value().encode(), given) for key in keys]
    if not any(matches):
        raise ApiError(
            401,
            "unauthenticated",
            "send Authorization: Bearer <one of the service's API keys>",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require_json(request: Request) -> None:
    """JSON endpoints refuse other bodies with 415 rather than guessing at them."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
