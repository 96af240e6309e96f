"""An Exotel simulator that speaks Exotel's wire format (shared/exotel.md).

It serves `Calls/connect` and call details (single and bulk) in XML or JSON, refuses with
`RestException`s, answers 429 past its rate limit, and POSTs a real status callback to the
StatusCallback URL once the simulated call ends. What happens follows the last digit of the number
dialled, so every path can be tried by hand:

| last digit | outcome |
|---|---|
| 0, 1 | answered and completed (with a recording) |
| 2 | busy |
| 3 | no-answer |
| 4 | failed |
| 5 | refused: 403, TRAI NDNC (do-not-disturb) |
| 6 | refused: 400, invalid parameters |
| 7 | completed; the callback is sent twice, then a late `answered` event |
| 8 | completed; the status callback is lost (never sent) |
| 9 | dialled, but Exotel answers 504 (the caller cannot tell it dialled) |
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from xml.sax.saxutils import escape

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from app.exotel.wire import format_exotel_time, parse_exotel_time

log = logging.getLogger(__name__)

# Exotel retries a failed callback delivery at most twice (reported, unconfirmed).
CALLBACK_ATTEMPTS = 3


@dataclass(frozen=True)
class Outcome:
    status: str  # the terminal status, or "" for a refusal
    refusal: tuple[int, str] | None = None  # (HTTP status, Exotel's message)
    callbacks: int = 1  # how many times the terminal callback is delivered
    late_answered: bool = False  # send an `answered` event after the terminal one
    connect_status: int = 200  # what `Calls/connect` answers after dialling


OUTCOMES: dict[str, Outcome] = {
    "0": Outcome("completed"),
    "1": Outcome("completed"),
    "2": Outcome("busy"),
    "3": Outcome("no-answer"),
    "4": Outcome("failed"),
    "5": Outcome(
        "", refusal=(403, "Call to [{number}] cannot be made because of TRAI NDNC regulations; ")
    ),
    "6": Outcome("", refusal=(400, "Invalid Call Parameters: 'From' is not a valid number; ")),
    "7": Outcome("completed", callbacks=2, late_answered=True),
    "8": Outcome("completed", callbacks=0),
    "9": Outcome("completed", connect_status=504),
}


@dataclass
class SimulatorConfig:
    callback_delay: float = 2.0  # seconds from connect to the terminal callback
    response_delay: float = 0.0  # seconds before `Calls/connect` answers (callback races it)
    rate_limit: int = 200
    rate_window: float = 60.0
    retry_after: bool = True  # send `Retry-After` with 429s


@dataclass
class SimulatedCall:
    sid: str
    from_number: str
    caller_id: str
    outcome: Outcome
    status_callback: str | None
    callback_events: list[str]
    callback_content_type: str
    custom_field: str | None
    date_created: datetime
    status: str = "in-progress"
    date_updated: datetime | None = None
    end_time: datetime | None = None
    duration: int | None = None
    conversation_duration: int | None = None
    recording_url: str | None = None

    def fields(self, account_sid: str) -> dict[str, Any]:
        """The `Call` object as Exotel renders it: empty values as null."""
        return {
            "Sid": self.sid,
            "ParentCallSid": None,
            "DateCreated": format_exotel_time(self.date_created),
            "DateUpdated": format_exotel_time(self.date_updated or self.date_created),
            "AccountSid": account_sid,
            "To": None,
            "From": self.from_number,
            "PhoneNumberSid": self.caller_id,
            "Status": self.status,
            "StartTime": format_exotel_time(self.date_created),
            "EndTime": format_exotel_time(self.end_time) if self.end_time else None,
            "Duration": self.duration,
            "Price": "1.5" if self.duration else None,
            "Direction": "outbound-api",
            "AnsweredBy": None,
            "Uri": f"/v1/Accounts/{account_sid}/Calls/{self.sid}",
            "RecordingUrl": self.recording_url,
            "Details": {"ConversationDuration": self.conversation_duration},
        }


@dataclass(frozen=True)
class LoggedRequest:
    """One request the simulator answered: what tests read to check rate and dials."""

    at: float  # unix time
    method: str
    path: str
    status: int
    from_number: str | None = None
    sid: str | None = None


@dataclass
class Simulator:
    config: SimulatorConfig = field(default_factory=SimulatorConfig)
    calls: dict[str, SimulatedCall] = field(default_factory=dict)
    log: list[LoggedRequest] = field(default_factory=list)
    _windows: dict[str, deque[float]] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _http: httpx.AsyncClient | None = None

    def bind(self, http: httpx.AsyncClient) -> None:
        """Give the simulator the client it POSTs callbacks with."""
        self._http = http

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- requests -------------------------------------------------------------------------

    def _rate_limited(self, account_sid: str) -> bool:
        now = time.monotonic()
        window = self._windows.setdefault(account_sid, deque())
        while window and window[0] <= now - self.config.rate_window:
            window.popleft()
        if len(window) >= self.config.rate_limit:
            return True
        window.append(now)
        return False

    async def connect(
        self, account_sid: str, form: Mapping[str, str]
    ) -> tuple[int, dict[str, Any]]:
        number = form.get("From", "")
        if not number:
            return 400, _rest_exception(400, "Invalid Call Parameters: No 'From' specified; ")
        if not form.get("CallerId") or not form.get("Url"):
            return 400, _rest_exception(400, "Invalid Call Parameters: CallerId and Url needed; ")
        outcome = OUTCOMES[number[-1]] if number[-1].isdigit() else OUTCOMES["6"]
        if outcome.refusal:
            status, message = outcome.refusal
            return status, _rest_exception(status, message.format(number=number))
        call = SimulatedCall(
            sid=_new_sid(),
            from_number=number,
            caller_id=form["CallerId"],
            outcome=outcome,
            status_callback=form.get("StatusCallback") or None,
            callback_events=[v for k, v in form.items() if k.startswith("StatusCallbackEvents")],
            callback_content_type=form.get("StatusCallbackContentType", "multipart/form-data"),
            custom_field=form.get("CustomField"),
            date_created=datetime.now(UTC),
        )
        self.calls[call.sid] = call
        self._spawn(self._run_call(call, account_sid))
        if outcome.connect_status != 200:
            return outcome.connect_status, _rest_exception(
                outcome.connect_status, "Gateway Timeout; "
            )
        return 200, {"Call": call.fields(account_sid)}

    def lookup(self, query: Mapping[str, str]) -> list[SimulatedCall]:
        """Bulk call details: finished calls only, as Exotel does."""
        sids = set(filter(None, query.get("Sid", "").split(",")))
        after, before = _date_range(query.get("DateCreated", ""))
        found = [
            call
            for call in self.calls.values()
            if call.end_time is not None
            and (not sids or call.sid in sids)
            and (not query.get("From") or _same_number(call.from_number, query["From"]))
            and (after is None or call.date_created >= after)
            and (before is None or call.date_created <= before)
        ]
        return found[: int(query.get("PageSize") or 50)]

    # --- the call's life ------------------------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_call(self, call: SimulatedCall, account_sid: str) -> None:
        await asyncio.sleep(self.config.callback_delay)
        answered = call.outcome.status == "completed"
        call.status = call.outcome.status
        call.end_time = call.date_updated = datetime.now(UTC)
        call.duration = 41 if answered else 0
        call.conversation_duration = 32 if answered else 0
        if answered:
            call.recording_url = (
                "https://s3-ap-southeast-1.amazonaws.com/exotelrecordings/"
                f"{account_sid}/{call.sid}.mp3"
            )
        if not call.status_callback:
            return
        events = [self._callback(call, "terminal")] * call.outcome.callbacks
        if answered and "answered" in call.callback_events:
            events.insert(0, self._callback(call, "answered"))
        if call.outcome.late_answered:
            events.append(self._callback(call, "answered"))
        for payload in events:
            await self._deliver(call, payload)

    def _callback(self, call: SimulatedCall, event_type: str) -> dict[str, Any]:
        answered = event_type == "answered"
        payload: dict[str, Any] = {
            "CallSid": call.sid,
            "Status": "in-progress" if answered else call.status,
            "RecordingUrl": "" if answered else (call.recording_url or ""),
            "DateUpdated": format_exotel_time(
                call.date_created + timedelta(seconds=1) if answered else call.end_time or _now()
            ),
        }
        if call.callback_events:
            legs_status = "completed" if call.status == "completed" else call.status
            payload |= {
                "EventType": event_type,
                "DateCreated": format_exotel_time(call.date_created),
                "To": "",
                "From": call.from_number,
                "PhoneNumberSid": call.caller_id,
                "StartTime": format_exotel_time(call.date_created),
                "EndTime": "" if answered else format_exotel_time(call.end_time or _now()),
                "ConversationDuration": call.conversation_duration or 0,
                "Direction": "outbound-api",
                "CustomField": call.custom_field or "",
                "Legs": [{"OnCallDuration": call.duration or 0, "Status": legs_status}],
            }
        return payload

    async def _deliver(self, call: SimulatedCall, payload: dict[str, Any]) -> None:
        assert self._http is not None, "bind() the simulator to an HTTP client first"
        assert call.status_callback is not None
        for attempt in range(CALLBACK_ATTEMPTS):
            try:
                if call.callback_content_type == "application/json":
                    response = await self._http.post(call.status_callback, json=payload)
                else:
                    files = {key: (None, str(value)) for key, value in _flatten(payload).items()}
                    response = await self._http.post(call.status_callback, files=files)
                if response.is_success:
                    return
                log.warning("status callback for %s answered %s", call.sid, response.status_code)
            except httpx.HTTPError as exc:
                log.warning("status callback for %s failed: %r", call.sid, exc)
            await asyncio.sleep(0.5 * (attempt + 1))

    # --- HTTP -----------------------------------------------------------------------------

    def app(self, *, owns_http: bool = False) -> FastAPI:
        """The simulator as an ASGI app. With `owns_http` it makes its own callback client
        (standalone); otherwise the host app calls `bind()`."""

        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            if not owns_http:
                yield
                return
            async with httpx.AsyncClient(timeout=15) as http:
                self.bind(http)
                yield
                await self.aclose()

        app = FastAPI(title="Exotel simulator", lifespan=lifespan, openapi_url=None)
        app.add_api_route(
            "/v1/Accounts/{account_sid}/Calls/connect{ext:path}",
            self._http_connect,
            methods=["POST"],
        )
        app.add_api_route("/v1/Accounts/{account_sid}/Calls{ext:path}", self._http_calls)
        app.add_api_route("/_simulator/log", self._http_log)
        return app

    async def _http_connect(self, request: Request, account_sid: str, ext: str) -> Response:
        if denied := self._gate(request, account_sid, ext):
            return denied
        form = {key: str(value) for key, value in (await request.form()).items()}
        status, body = await self.connect(account_sid, form)
        if self.config.response_delay:
            # Exotel retries origination before answering; its callbacks can arrive first.
            await asyncio.sleep(self.config.response_delay)
        sid = body["Call"]["Sid"] if "Call" in body else None
        self._log(request, status, from_number=form.get("From"), sid=sid)
        return _render(body, status, as_json=ext == ".json")

    async def _http_calls(self, request: Request, account_sid: str, ext: str) -> Response:
        if denied := self._gate(request, account_sid, ext):
            return denied
        as_json = ext.endswith(".json")
        sid = ext.removesuffix(".json").lstrip("/")
        if sid:
            call = self.calls.get(sid)
            status = 200 if call else 404
            self._log(request, status, sid=sid)
            if call is None:
                return _render(_rest_exception(404, "Call not found; "), 404, as_json)
            return _render({"Call": call.fields(account_sid)}, 200, as_json)
        found = self.lookup(request.query_params)
        self._log(request, 200)
        return _render({"Calls": [c.fields(account_sid) for c in found]}, 200, as_json)

    async def _http_log(self) -> list[dict[str, Any]]:
        return [asdict(entry) for entry in self.log]

    def _gate(self, request: Request, account_sid: str, ext: str) -> Response | None:
        """Basic auth (any credentials), then the account's rate limit."""
        as_json = ext.endswith(".json")
        if not request.headers.get("authorization", "").startswith("Basic "):
            self._log(request, 401)
            return _render(_rest_exception(401, "Authentication is required"), 401, as_json)
        if self._rate_limited(account_sid):
            self._log(request, 429)
            headers = {"Retry-After": str(int(self.config.rate_window))}
            response = _render(_rest_exception(429, "Too Many Requests; "), 429, as_json)
            if self.config.retry_after:
                response.headers.update(headers)
            return response
        return None

    def _log(self, request: Request, status: int, **details: str | None) -> None:
        self.log.append(
            LoggedRequest(time.time(), request.method, request.url.path, status, **details)
        )


def _now() -> datetime:
    return datetime.now(UTC)


def _new_sid() -> str:
    # Real SIDs are 32 characters and not hex (they end in letters past `f`).
    return secrets.token_hex(15) + secrets.choice("ghjkmnpqrstuvwxyz") + secrets.choice("gm")


def _same_number(a: str, b: str) -> bool:
    return a.lstrip("+0")[-10:] == b.lstrip("+0")[-10:]


def _date_range(value: str) -> tuple[datetime | None, datetime | None]:
    bounds: dict[str, datetime | None] = {}
    for part in filter(None, value.split(";")):
        op, _, raw = part.partition(":")
        bounds[op] = parse_exotel_time(raw)
    return bounds.get("gte"), bounds.get("lte")


def _rest_exception(status: int, message: str) -> dict[str, Any]:
    return {"RestException": {"Status": status, "Message": message, "Code": None}}


def _flatten(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Multipart callbacks carry `Legs` flattened: `Legs[0][Status]=completed`."""
    flat = {key: value for key, value in payload.items() if key != "Legs"}
    for index, leg in enumerate(payload.get("Legs", [])):
        for name, value in leg.items():
            flat[f"Legs[{index}][{name}]"] = value
    return flat


def _render(body: dict[str, Any], status: int, as_json: bool) -> Response:
    if as_json:
        return JSONResponse(body, status_code=status)
    return Response(_to_xml(body), status_code=status, media_type="application/xml")


def _to_xml(body: Mapping[str, Any]) -> str:
    def element(name: str, value: Any) -> str:
        if isinstance(value, Mapping):
            return f"<{name}>{''.join(itertools.starmap(element, value.items()))}</{name}>"
        if isinstance(value, list):
            return "".join(element(name.removesuffix("s"), item) for item in value)
        if value is None or value == "":
            return f"<{name}/>"
        return f"<{name}>{escape(str(value))}</{name}>"

    if "Calls" in body:
        return f"<TwilioResponse><Calls>{element('Calls', body['Calls'])}</Calls></TwilioResponse>"
    return f"<TwilioResponse>{''.join(itertools.starmap(element, body.items()))}</TwilioResponse>"
