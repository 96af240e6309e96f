"""How the client commands end: their exit statuses, and failures said plainly on stderr."""

from __future__ import annotations

import enum
from collections.abc import Callable

from rich.console import Console

from app.client.api import ServiceError, ServiceUnreachable

# The service refused the request itself: the caller has something to fix (a call or number
# named that it does not know, too).
_INVALID_REQUEST = frozenset({400, 404, 409, 413, 415, 422})


class ExitCode(enum.IntEnum):
    OK = 0  # `call`: completed; `campaign`: every call reached a final status
    NOT_COMPLETED = 1  # `call`: the call ended otherwise (busy, no-answer, failed, rejected...)
    INVALID = 2  # bad arguments or CSV rows, or the service refused the request as invalid
    SERVICE_FAILED = 3  # the service could not be reached, refused the API key, or failed
    TIMED_OUT = 4  # still not final when --timeout ran out; the calls go on
    INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


def plain_console(*, stderr: bool = False) -> Console:
    """A console that prints text as given: Exotel's messages contain `[brackets]` that rich
    would otherwise read as markup, and URLs must not be wrapped in the middle."""
    return Console(stderr=stderr, markup=False, highlight=False, emoji=False, soft_wrap=True)


def reporting_failures(err: Console, command: Callable[[], ExitCode]) -> ExitCode:
    """Run `command`; a failure of the service is printed plainly and becomes the exit status."""
    try:
        return command()
    except (ServiceUnreachable, ServiceError) as exc:
        return report_failure(err, exc)


def report_failure(err: Console, exc: ServiceUnreachable | ServiceError) -> ExitCode:
    err.print(f"error: {exc}")
    if isinstance(exc, ServiceError) and exc.status in _INVALID_REQUEST:
        return ExitCode.INVALID
    return ExitCode.SERVICE_FAILED
