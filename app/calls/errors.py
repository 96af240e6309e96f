"""The domain's refusals, as types with fields; api/errors.py maps them to HTTP in one place."""

from __future__ import annotations

import uuid

from app.db.models import Call


class CallError(Exception):
    pass


class NotFound(CallError):
    """No such resource: answered 404 with `code`."""

    code = "not_found"


class CallNotFound(NotFound):
    code = "call_not_found"

    def __init__(self, ref: str) -> None:
        super().__init__(f"no call with id or sid {ref!r}")
        self.ref = ref


class RecordingNotArchived(NotFound):
    code = "recording_not_archived"

    def __init__(self, call: Call) -> None:
        status = call.recording_status
        said = f"is {status}" if status else "has none"
        super().__init__(f"call {call.id} has no recording to serve: its recording {said}")
        self.call_id = call.id


class BatchNotFound(NotFound):
    code = "batch_not_found"

    def __init__(self, batch_id: uuid.UUID) -> None:
        super().__init__(f"no batch with id {batch_id}")


class EventNotFound(NotFound):
    code = "event_not_found"

    def __init__(self, event_id: str) -> None:
        super().__init__(f"no event with id {event_id!r}")


class EndpointNotFound(NotFound):
    code = "webhook_endpoint_not_found"

    def __init__(self, endpoint_id: uuid.UUID) -> None:
        super().__init__(f"no webhook endpoint with id {endpoint_id}")


class OptOutNotFound(NotFound):
    code = "opt_out_not_found"

    def __init__(self, number: str) -> None:
        super().__init__(f"{number} is not opted out")
        self.number = number


class IdempotencyConflict(CallError):
    """An idempotency key reused with a different request body."""

    def __init__(self, key: str, *, call_id: uuid.UUID | None, index: int | None) -> None:
        super().__init__("this Idempotency-Key was used with a different request")
        self.key = key
        self.call_id = call_id
        self.index = index


class InvalidField(CallError):
    """A request field that is well-formed but unusable (pydantic catches the rest)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class CallEnded(CallError):
    """A request for a call that has ended: answered 409."""

    def __init__(self, call: Call) -> None:
        super().__init__(f"call {call.id} has ended ({call.status}): nothing is left to cancel")
        self.call = call


class CallNotPlaced(CallError):
    """Exotel refused the call, or could not be reached; the call is kept as `rejected`."""

    def __init__(self, call: Call) -> None:
        super().__init__(call.error_message or "the call was not placed")
        self.call = call
