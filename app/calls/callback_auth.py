"""The StatusCallback URL we give Exotel, and how a callback proves it came from that URL.

Exotel signs nothing and publishes no source addresses (docs/exotel.md), so the URL carries
our call id and an HMAC of it. The HMAC covers only the call id, not the host or the path, so a
TLS-terminating proxy in front of us does not break it. Every secret in CALLBACK_SECRETS verifies,
the first signs: a secret can be rotated without losing calls still in flight.

A URL without a call id (`call_id` absent) is the account-wide one, for status callbacks set up
in a flow or the dashboard; such callbacks are matched to their call by `CallSid`. A flow's
Passthru URL carries the same account-wide token.
"""

from __future__ import annotations

import base64
import hmac
import uuid
from collections.abc import Sequence
from urllib.parse import urlencode

_ACCOUNT_SCOPE = "*"


def sign(secret: bytes, call_id: uuid.UUID | None) -> str:
    scope = str(call_id) if call_id else _ACCOUNT_SCOPE
    digest = hmac.digest(secret, b"exocall-status-callback:" + scope.encode(), "sha256")
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def verify(secrets: Sequence[bytes], call_id: uuid.UUID | None, token: str) -> bool:
    """Constant-time check of `token` against every secret (no early exit on a match)."""
    given = token.encode()
    matches = [hmac.compare_digest(sign(secret, call_id).encode(), given) for secret in secrets]
    return any(matches)


def status_callback_url(public_base_url: str, secret: bytes, call_id: uuid.UUID | None) -> str:
    query = {"call_id": str(call_id)} if call_id else {}
    query["token"] = sign(secret, call_id)
    return f"{public_base_url}/status-callback?{urlencode(query)}"


def passthru_url(public_base_url: str, secret: bytes) -> str:
    """The URL for a flow's Passthru applets: account-wide, since a flow is set up once."""
    return f"{public_base_url}/passthru?{urlencode({'token': sign(secret, None)})}"
