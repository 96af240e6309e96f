"""What can go wrong talking to Exotel, as types with fields. Callers decide by type and fields,
never by parsing a message."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ExotelError(Exception):
    """Base of every Exotel failure."""


class ExotelRejected(ExotelError):
    """Exotel answered with an error (a `RestException`, or a non-2xx status). `answer` is the
    `RestException`'s fields as Exotel sent them; empty when the body held none."""

    def __init__(
        self,
        status: int,
        message: str,
        code: int | None = None,
        *,
        answer: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"Exotel answered {status}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.answer: Mapping[str, Any] = answer or {}


class ExotelRateLimited(ExotelRejected):
    """HTTP 429. `retry_after` is Exotel's `Retry-After` in seconds, when it sent one."""

    def __init__(
        self,
        status: int,
        message: str,
        code: int | None = None,
        retry_after: float | None = None,
        *,
        answer: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(status, message, code, answer=answer)
        self.retry_after = retry_after


class ExotelUnreachable(ExotelError):
    """No connection was ever established: the request certainly did not reach Exotel."""


class ExotelOutcomeUnknown(ExotelError):
    """The request may have reached Exotel but no usable answer came back (a read timeout, a
    dropped connection, an unreadable body). For `Calls/connect` the customer may have been
    dialled: never send it again."""


class RecordingCutShort(ExotelError):
    """A recording's body ended before its `Content-Length`."""

    def __init__(self, received: int, expected: int | None) -> None:
        of = f" of {expected}" if expected is not None else ""
        super().__init__(f"the recording ended after {received}{of} bytes")
        self.received = received
        self.expected = expected
