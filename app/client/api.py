"""A client of exocall's HTTP API: one `httpx.Client`, answers read into small models, and the
service's one error shape read into one exception."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas import MAX_BATCH, BatchCallCreate
from app.calls.resource import AttemptOut, CallErrorOut
from app.db.models import CallStatus

DEFAULT_URL = "http://127.0.0.1:8000"
# The client's own variables: API_KEYS is the server's list of keys, not the one a client sends.
URL_ENV = "EXOCALL_URL"
API_KEY_ENV = "EXOCALL_API_KEY"

# A call can be waiting for its turn in the queue: generous, so that a slow answer is not
# mistaken for an outage.
REQUEST_TIMEOUT_SECONDS = 30.0
_PAGE_SIZE = 200  # the most `GET /calls` gives at once


class CallView(BaseModel):
    """The call resource, as much of it as the CLI shows."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: uuid.UUID
    sid: str | None = None
    status: CallStatus
    from_number: str = Field(alias="from")
    recording_url: str | None = None
    duration: int | None = None
    digits: str | None = None  # keyed in the flow
    error: CallErrorOut | None = None
    batch_id: uuid.UUID | None = None
    attempts: list[AttemptOut] = []
    next_attempt_at: datetime | None = None  # when a scheduled call is next due
    price: Decimal | None = None  # the attempts' total, once Exotel says

    @property
    def next_attempt(self) -> int:
        """The attempt a waiting call is to make next: a new one, unless its latest never
        reached Exotel."""
        if self.attempts and self.attempts[-1].status == CallStatus.QUEUED:
            return len(self.attempts)
        return len(self.attempts) + 1


class OptOutView(BaseModel):
    model_config = ConfigDict(extra="ignore")

    number: str
    reason: str | None = None
    source: str
    created_at: datetime


class BatchView(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: uuid.UUID
    calls: list[CallView]


class ServiceError(Exception):
    """The service answered with its error shape: `{"error": {"code", "message", "details"?}}`."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.code = str(body.get("code", "http_error"))
        self.message = str(body.get("message", ""))
        # Each invalid field, named: [(field, message)].
        self.fields = [
            (str(d.get("field")), str(d.get("message"))) for d in body.get("details") or []
        ]
        self.index: int | None = body.get("index")  # which call of a batch, when it says
        self.about = ""  # what the refused request was, when the caller knows better: a line
        super().__init__(self.code)

    def __str__(self) -> str:
        about = f"{self.about}: " if self.about else ""
        lines = [f"{about}the service answered {self.status} {self.code}"]
        if self.fields:  # the message repeats them, less readably
            lines += [f"  {field}: {message}" for field, message in self.fields]
        elif self.message:
            lines[0] += f": {self.message}"
        return "\n".join(lines)


class ServiceUnreachable(Exception):
    """No answer from the service: nothing listens at the URL, or it did not answer in time."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"exocall at {url}: {reason}")
        self.url = url


class ExocallClient:
    """The service's API, as the CLI uses it."""

    def __init__(
        self, base_url: str, api_key: str | None, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=REQUEST_TIMEOUT_SECONDS,
            transport=transport,
        )

    def __enter__(self) -> ExocallClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._http.close()

    def place_call(self, body: dict[str, Any]) -> CallView:
        """Queue one call and answer at once (`wait=false`): the CLI follows it itself. The
        service validates `body`, and names any field it refuses."""
        answer = self._request("POST", "/calls", params={"wait": "false"}, json=body)
        return CallView.model_validate(answer)

    def get_call(self, ref: uuid.UUID | str) -> CallView:
        return CallView.model_validate(self._request("GET", f"/calls/{ref}"))

    def place_batch(self, calls: Sequence[BatchCallCreate]) -> BatchView:
        assert len(calls) <= MAX_BATCH
        body = {
            "calls": [
                call.model_dump(mode="json", by_alias=True, exclude_none=True) for call in calls
            ]
        }
        return BatchView.model_validate(self._request("POST", "/calls/batch", json=body))

    def batch_counts(self, batch_id: uuid.UUID) -> dict[str, int]:
        """The batch's calls by status."""
        counts = self._request("GET", f"/batches/{batch_id}")["counts"]
        return {str(status): int(count) for status, count in counts.items()}

    def batch_calls(self, batch_id: uuid.UUID, *, status: str | None = None) -> Iterator[CallView]:
        params: dict[str, Any] = {"batch_id": str(batch_id), "limit": _PAGE_SIZE}
        if status:
            params["status"] = status
        for item in self._pages("/calls", params):
            yield CallView.model_validate(item)

    def cancel_call(self, ref: str) -> CallView:
        """No attempt of the call after now (`POST /calls/{id}/cancel`)."""
        return CallView.model_validate(self._request("POST", f"/calls/{ref}/cancel"))

    def opt_out(self, number: str, reason: str | None) -> tuple[OptOutView, bool]:
        """Opt `number` out; and whether it is new (else it already was, as first made)."""
        body = {"number": number} | ({"reason": reason} if reason else {})
        response = self._send("POST", "/opt-outs", json=body)
        return OptOutView.model_validate(response.json()), response.status_code == 201

    def remove_opt_out(self, number: str) -> None:
        self._send("DELETE", f"/opt-outs/{quote(number, safe='')}")

    def opt_outs(self) -> Iterator[OptOutView]:
        for item in self._pages("/opt-outs", {"limit": _PAGE_SIZE}):
            yield OptOutView.model_validate(item)

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        params = dict(params)
        while True:
            page = self._request("GET", path, params=params)
            yield from page["items"]
            if not page["next_cursor"]:
                return
            params["cursor"] = page["next_cursor"]

    def events(
        self, *, after: str | None, types: Sequence[str], call_id: uuid.UUID | None
    ) -> tuple[list[dict[str, Any]], str]:
        """The events of the feed after the cursor `after`, and the cursor to go on from."""
        params: dict[str, Any] = {"limit": 1000, "type": list(types)}
        if after:
            params["after"] = after
        if call_id:
            params["call_id"] = str(call_id)
        page = self._request("GET", "/events", params=params)
        return list(page["items"]), str(page["next_cursor"])

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._send(method, path, **kwargs).json()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            reason = f"cannot connect ({exc}); is it running there? (--url, {URL_ENV})"
            raise ServiceUnreachable(str(self._http.base_url), reason) from None
        except httpx.TransportError as exc:
            raise ServiceUnreachable(str(self._http.base_url), str(exc) or repr(exc)) from None
        if response.is_error:
            raise ServiceError(response.status_code, _error_body(response))
        return response


def _error_body(response: httpx.Response) -> dict[str, Any]:
    """The error shape's inside; a proxy in front of the service may answer with anything."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return dict(body["error"])
    return {"code": "http_error", "message": response.text[:200] or response.reason_phrase}
