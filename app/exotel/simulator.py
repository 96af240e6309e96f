"""An Exotel simulator that speaks Exotel's wire format (docs/exotel.md).

It serves `Calls/connect` and call details (single and bulk) in XML (with its declaration) or JSON
(paths ending in `.json`), refuses with `RestException`s (unknown routes and wrong methods too),
answers 429 past its rate limit, and POSTs a real status callback to the StatusCallback URL once
the simulated call ends. As real Exotel does:

- Indian numbers are stored and answered in the `0`-prefixed national form (`+919052161110` and
  `9052161110` become `09052161110`); other numbers are left as sent. Filters match any spelling.
- `Calls/connect` connects `From` to the flow at `Url`, or, without `Url`, to the number `To`
  (which becomes the call's `To`).
- Single call details carry `Details` (conversation duration, legs) only with `?details=true`.
- Bulk call details come in pages of `PageSize` (default 50, at most 100), newest first unless
  `SortBy=DateCreated:asc`, with a `Metadata` object whose `NextPageUri` / `PrevPageUri` carry an
  opaque `After` / `Before` cursor (null on the last / first page).

What happens follows the last digit of the number dialled (`From`), so every path can be tried
by hand:

| last digit | outcome |
|---|---|
| 0, 1 | answered and completed (with a recording) |
| 2 | busy |
| 3 | no-answer |
| 4 | failed |
| 5 | refused: 403, TRAI NDNC (do-not-disturb) |
| 6 | refused: 400, invalid parameters |
| 7 | completed; the callback is sent twice, then a late `answered` event (`EventType=answered`) |
| 8 | completed; the status callback is lost (never sent) |
| 9 | dialled, but Exotel answers 504 (the caller cannot tell it dialled) |

A number (any spelling) can be told what its next `Calls/connect` requests do instead, one
outcome each, in turn, so that a call retried by exocall can be busy, then busy, then completed;
once they are used up, the last digit decides again. `POST /_simulator/outcomes` with
`{"number": "+919052161112", "outcomes": ["busy", "busy", "completed"]}` replaces the number's
list (`SimulatorConfig.outcomes` gives lists from the start), `GET` shows what is pending,
`DELETE` clears every list. The outcomes are named (`NAMED_OUTCOMES`): `completed`, `busy`,
`no-answer`, `failed`, `dnd` (403, TRAI NDNC), `invalid` (400) and `timeout` (504 after
dialling); any other name is refused with 422, a `RestException`, as every bad body of its own
routes is.

An app id can be given a flow (`SimulatorConfig.flows`): its applets, in order, among `play`,
`gather`, `passthru` (a GET to the Passthru URL, whose answer, 200 or 302, is logged),
`passthru_async` (the same, its answer not waited for) and `hangup`. An answered call whose
`Url` ends in that app id runs it before its status callback; its Gather keys the
second-to-last digit of the number dialled (`09052161120`: 2), so a flow's branches can be
tried by hand too.

As Exotel fills in `Price` (rupees, a string such as `"0.600"`) minutes after a call ends, call
details carry it as null until `SimulatorConfig.price_delay` seconds after the end, then
`price_of(Duration)`: `PRICE_PER_MINUTE` for each started minute; a call nobody answered lasted
0 s and costs `"0.000"`.

A completed call's `RecordingUrl` is the simulator's own: a real WAV (a tone of
`SimulatorConfig.recording_seconds`, streamed, never held whole), served only with the account's
credentials (`SimulatorConfig.credentials`). `POST /_simulator/recording-faults` makes the next
recording requests fail: `{"status": 500, "times": 2}`, or `{"cut_short": true}` (the body stops
halfway through its `Content-Length`), or answer slowly: `{"delay": 30}` (seconds before it
answers). With `SimulatorConfig.recording_url_validity`, as with
Exotel's `RecordingUrlValidity`, each `RecordingUrl` it renders (in a callback, in call details)
is signed afresh to last that many seconds, and refused with 403 once it has expired.

With `SimulatorConfig.callbacks_under` (exocall's in-process simulator: its PUBLIC_BASE_URL),
`Calls/connect` refuses with 400 a `StatusCallback` that is not under that base, so that no
request makes the simulator POST anywhere else; without it, callbacks go wherever they are
asked to, as Exotel's do.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import itertools
import logging
import math
import re
import secrets
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import quote, urlencode
from xml.sax.saxutils import escape

import httpx
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.exotel.wire import format_exotel_time, parse_exotel_time
from app.numerals import DIGIT, NUMBER_SEPARATORS, integer

log = logging.getLogger(__name__)

# Exotel retries a failed callback delivery at most twice (reported, unconfirmed).
CALLBACK_ATTEMPTS = 3

# Bulk call details: pages of 50 unless asked otherwise, never more than 100.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100

XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'

# The simulator's own routes (`/log`, `/recording-faults`, `/outcomes`) are under this, beside
# Exotel's API; `exocall serve` mounts the built-in simulator here too, so they answer at the
# same paths either way (docs/simulator.md).
SIMULATOR_PREFIX = "/_simulator"

# Recordings: telephone-quality WAV (8 kHz, 16-bit, mono), 16 000 bytes a second.
RECORDING_RATE = 8000
RECORDING_TYPE = "audio/wav"

# What the simulator charges, in rupees, for each started minute of a call's Duration (Exotel's
# rates depend on the plan; a call nobody answered lasts 0 s and so costs nothing).
PRICE_PER_MINUTE = Decimal("0.600")


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

# The outcomes a number can be told to take in turn (`POST /_simulator/outcomes`), by the name of
# the status or refusal each has in the table above. (app/config.py's SimulatedOutcome lists them
# too: config imports nothing of exotel/.)
OutcomeName = Literal["completed", "busy", "no-answer", "failed", "dnd", "invalid", "timeout"]
NAMED_OUTCOMES: dict[OutcomeName, Outcome] = {
    "completed": OUTCOMES["0"],
    "busy": OUTCOMES["2"],
    "no-answer": OUTCOMES["3"],
    "failed": OUTCOMES["4"],
    "dnd": OUTCOMES["5"],
    "invalid": OUTCOMES["6"],
    "timeout": OUTCOMES["9"],
}


@dataclass
class SimulatorConfig:
    callback_delay: float = 2.0  # seconds from connect to the terminal callback
    # Calls last longer by up to this, each its own share (from its SID: the same every run).
    callback_spread: float = 0.0
    response_delay: float = 0.0  # seconds before `Calls/connect` answers (callback races it)
    rate_limit: int = 200
    rate_window: float = 60.0
    retry_after: bool = True  # send `Retry-After` with 429s
    flows: Mapping[str, Sequence[str]] = field(default_factory=dict)  # app id -> applets
    passthru_url: str | None = None  # where a flow's Passthru applets send their GET
    recording_seconds: float = 3.0  # how long each completed call's recording lasts
    # (API key, token) the API and recordings answer to; None: any Basic credentials.
    credentials: tuple[str, str] | None = None
    # Seconds each RecordingUrl lasts from when it is rendered (signed); None: unsigned.
    recording_url_validity: float | None = None
    # The base every StatusCallback must be under (`Calls/connect` refuses any other with 400);
    # None: anywhere, as Exotel. exocall's in-process simulator must not become a way to make
    # exocall POST where nobody allowed it to.
    callbacks_under: str | None = None
    # Per number (any spelling), the outcome names its next `Calls/connect` requests take in
    # turn, from the start (as `POST /_simulator/outcomes` gives them later).
    outcomes: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # Seconds from a call's end until its details carry `Price` (about 300 at Exotel).
    price_delay: float = 300.0


class PlannedOutcomes(BaseModel):
    """What the next `Calls/connect` requests to `number` (any spelling) do, one outcome each,
    in turn; then the last digit decides again."""

    number: str = Field(min_length=1, max_length=64)
    outcomes: list[OutcomeName] = Field(min_length=1, max_length=100)


class RecordingFault(BaseModel):
    """How the next `times` recording requests fail: with `status`, or cut short; after
    `delay` seconds."""

    status: int | None = Field(None, ge=400, le=599)
    cut_short: bool = False
    delay: float = Field(0, ge=0, le=600)
    times: int = Field(1, ge=1)


@dataclass
class SimulatedCall:
    sid: str
    seq: int  # the order calls were made in: breaks ties between equal DateCreated
    from_number: str  # as Exotel answers it: national form for Indian numbers
    to_number: str | None  # the second number of a two-number call; None for a flow
    caller_id: str
    outcome: Outcome
    status_callback: str | None
    callback_events: list[str]
    callback_content_type: str
    custom_field: str | None
    date_created: datetime
    app_id: str | None = None  # the last part of a flow's `Url`
    status: str = "in-progress"
    date_updated: datetime | None = None
    end_time: datetime | None = None
    duration: int | None = None
    conversation_duration: int | None = None
    recording_url: str | None = None  # unsigned
    sign: Callable[[str], str] = field(default=lambda url: url, repr=False)
    # Seconds from its end until `Price` is filled in: read when rendered, as the config now says.
    price_delay: Callable[[], float] = field(default=lambda: 0.0, repr=False)

    @property
    def rendered_recording_url(self) -> str | None:
        """The recording's URL as Exotel renders it now: signed afresh, when URLs are signed."""
        return self.sign(self.recording_url) if self.recording_url else None

    def fields(self, account_sid: str, *, details: bool = False) -> dict[str, Any]:
        """The `Call` object as Exotel renders it: empty values as null; `Details` only when
        asked for (`?details=true` on single call details)."""
        call = {
            "Sid": self.sid,
            "ParentCallSid": None,
            "DateCreated": format_exotel_time(self.date_created),
            "DateUpdated": format_exotel_time(self.date_updated or self.date_created),
            "AccountSid": account_sid,
            "To": self.to_number,
            "From": self.from_number,
            "PhoneNumberSid": self.caller_id,
            "Status": self.status,
            "StartTime": format_exotel_time(self.date_created),
            "EndTime": format_exotel_time(self.end_time) if self.end_time else None,
            "Duration": self.duration,
            "Price": self.price,
            "Direction": "outbound-api",
            "AnsweredBy": None,
            "Uri": f"/v1/Accounts/{account_sid}/Calls/{self.sid}",
            "RecordingUrl": self.rendered_recording_url,
        }
        return (call | {"Details": self.details()}) if details else call

    @property
    def price(self) -> str | None:
        """`Price`: null until Exotel fills it in, some time after the call ended."""
        if self.end_time is None or self.duration is None:
            return None
        if _now() < self.end_time + timedelta(seconds=self.price_delay()):
            return None
        return price_of(self.duration)

    def details(self) -> dict[str, Any]:
        """`Details`: the conversation and each leg (1: `From`, 2: the flow or `To`). A leg not
        attempted has no status, as in Exotel's callbacks."""
        ended = self.end_time is not None
        leg1 = self.status if ended else "in-progress"
        leg2 = "completed" if self.status == "completed" else None
        return {
            "ConversationDuration": self.conversation_duration,
            "Leg1Status": leg1,
            "Leg2Status": leg2,
            "Legs": [
                {"Id": 1, "OnCallDuration": self.duration or 0, "Status": leg1},
                {"Id": 2, "OnCallDuration": self.conversation_duration or 0, "Status": leg2},
            ],
        }

    @property
    def order(self) -> tuple[datetime, int]:
        return self.date_created, self.seq


@dataclass(frozen=True)
class BulkPage:
    """One page of bulk call details, with the cursors around it."""

    calls: list[SimulatedCall]
    total: int  # calls matching the filters, on every page
    page_size: int
    before: str | None  # cursor of the previous page, None on the first
    after: str | None  # cursor of the next page, None on the last


class InvalidQuery(ValueError):
    """A bulk call details query Exotel would refuse with 400."""


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
    recording_faults: deque[RecordingFault] = field(default_factory=deque)
    # By each number's comparable form (`_comparable`): what its next connects do.
    planned: dict[str, PlannedOutcomes] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _http: httpx.AsyncClient | None = None
    _url_key: bytes = field(default_factory=lambda: secrets.token_bytes(16))

    def __post_init__(self) -> None:
        for number, outcomes in self.config.outcomes.items():
            self.plan(PlannedOutcomes.model_validate({"number": number, "outcomes": outcomes}))

    def plan(self, planned: PlannedOutcomes) -> PlannedOutcomes:
        """Have the next `Calls/connect` requests to `planned.number` take its outcomes in turn,
        in place of any still pending for that number; what is now pending for it."""
        number = national_form(planned.number)
        pending = PlannedOutcomes(number=number, outcomes=list(planned.outcomes))
        self.planned[_comparable(number)] = pending
        return pending

    def _next_outcome(self, number: str) -> Outcome:
        """The outcome planned next for `number`, taken off its plan; else its last digit's."""
        key = _comparable(number)
        if (planned := self.planned.get(key)) is None:
            return OUTCOMES.get(number[-1], OUTCOMES["6"])
        name = planned.outcomes.pop(0)
        if not planned.outcomes:
            del self.planned[key]
        return NAMED_OUTCOMES[name]

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
        self, account_sid: str, form: Mapping[str, str], *, base_url: str = "http://simulator/"
    ) -> tuple[int, dict[str, Any]]:
        """Place a call; its recording will be served under `base_url` (where the simulator
        was reached)."""
        number = national_form(form.get("From", ""))
        if not number:
            return 400, _rest_exception(400, "Invalid Call Parameters: No 'From' specified; ")
        if not form.get("CallerId"):
            return 400, _rest_exception(400, "Invalid Call Parameters: No 'CallerId' specified; ")
        # With `Url` the call enters that flow; without, Exotel connects `From` to `To`.
        to_number = None if form.get("Url") else national_form(form.get("To", "")) or None
        if not form.get("Url") and to_number is None:
            message = "Invalid Call Parameters: No 'Url' or 'To' specified; "
            return 400, _rest_exception(400, message)
        status_callback = form.get("StatusCallback") or None
        base = self.config.callbacks_under
        if status_callback and base is not None and not is_under(status_callback, base):
            message = f"Invalid Call Parameters: 'StatusCallback' must be under {base}; "
            return 400, _rest_exception(400, message)
        # Taken only by a request that gets this far: one refused before (401, 429, a missing
        # field) dials nothing, and leaves the plan as it was.
        outcome = self._next_outcome(number)
        if outcome.refusal:
            status, message = outcome.refusal
            return status, _rest_exception(status, message.format(number=number))
        call = SimulatedCall(
            sid=_new_sid(),
            seq=len(self.calls),
            from_number=number,
            to_number=to_number,
            caller_id=form["CallerId"],
            outcome=outcome,
            status_callback=status_callback,
            callback_events=[v for k, v in form.items() if k.startswith("StatusCallbackEvents")],
            callback_content_type=form.get("StatusCallbackContentType", "multipart/form-data"),
            custom_field=form.get("CustomField"),
            date_created=datetime.now(UTC),
            app_id=form.get("Url", "").rstrip("/").rpartition("/")[2] or None,
            sign=self._signed,
            price_delay=lambda: self.config.price_delay,
        )
        self.calls[call.sid] = call
        self._spawn(self._run_call(call, account_sid, base_url))
        if outcome.connect_status != 200:
            return outcome.connect_status, _rest_exception(
                outcome.connect_status, "Gateway Timeout; "
            )
        return 200, {"Call": call.fields(account_sid)}

    def lookup(self, query: Mapping[str, str]) -> BulkPage:
        """Bulk call details: finished calls only, as Exotel does, one page of them.

        The order is stable (DateCreated, then the order calls were made in), newest first unless
        `SortBy=DateCreated:asc`. `After` gives the page following the call its cursor names,
        `Before` the page preceding it.
        """
        page_size = _page_size(query.get("PageSize"))
        sort_by = query.get("SortBy") or "DateCreated:desc"
        if sort_by not in ("DateCreated:asc", "DateCreated:desc"):
            raise InvalidQuery(f"SortBy must be DateCreated:asc or DateCreated:desc, not {sort_by}")
        newest_first = sort_by == "DateCreated:desc"
        sids = set(filter(None, query.get("Sid", "").split(",")))
        numbers = list(filter(None, query.get("From", "").split(",")))
        after, before = _date_range(query.get("DateCreated", ""))
        found = sorted(
            (
                call
                for call in self.calls.values()
                if call.end_time is not None
                and (not sids or call.sid in sids)
                and (not numbers or any(_same_number(call.from_number, n) for n in numbers))
                and (after is None or call.date_created >= after)
                and (before is None or call.date_created <= before)
            ),
            key=lambda call: call.order,
            reverse=newest_first,
        )

        def comes_before(call: SimulatedCall, mark: SimulatedCall) -> bool:
            return call.order > mark.order if newest_first else call.order < mark.order

        if query.get("After"):
            mark = self._cursor_call(query["After"])
            following = [call for call in found if comes_before(mark, call)]
            page = following[:page_size]
        elif query.get("Before"):
            mark = self._cursor_call(query["Before"])
            preceding = [call for call in found if comes_before(call, mark)]
            page = preceding[-page_size:]
        else:
            page = found[:page_size]
        more_after = bool(page) and page[-1] is not found[-1]
        more_before = bool(page) and page[0] is not found[0]
        return BulkPage(
            calls=page,
            total=len(found),
            page_size=page_size,
            before=_cursor(page[0]) if more_before else None,
            after=_cursor(page[-1]) if more_after else None,
        )

    def _cursor_call(self, cursor: str) -> SimulatedCall:
        try:
            sid = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError):
            sid = ""
        if (call := self.calls.get(sid)) is None:
            raise InvalidQuery(f"not a cursor of this account: {cursor}")
        return call

    # --- the call's life ------------------------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_call(self, call: SimulatedCall, account_sid: str, base_url: str) -> None:
        share = int(hashlib.sha256(call.sid.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        lasts = self.config.callback_delay + share * self.config.callback_spread
        answered = call.outcome.status == "completed"
        flow = self.config.flows.get(call.app_id or "") if answered else None
        if flow:
            await asyncio.sleep(lasts / 2)  # the customer hears the flow, keys, and so on
            await self._run_flow(call, flow)
            lasts /= 2
        await asyncio.sleep(lasts)
        call.status = call.outcome.status
        call.end_time = call.date_updated = datetime.now(UTC)
        call.duration = 41 if answered else 0
        call.conversation_duration = 32 if answered else 0
        if answered:
            call.recording_url = f"{base_url}recordings/{account_sid}/{call.sid}.wav"
        if not call.status_callback:
            return
        events = [self._callback(call, "terminal")] * call.outcome.callbacks
        if answered and "answered" in call.callback_events:
            events.insert(0, self._callback(call, "answered"))
        if call.outcome.late_answered:
            events.append(self._callback(call, "answered"))
        for payload in events:
            await self._deliver(call, payload)

    async def _run_flow(self, call: SimulatedCall, applets: Sequence[str]) -> None:
        digits = None
        for applet in applets:
            if applet == "gather":
                digits = call.from_number[-2]
            elif applet in ("passthru", "passthru_async") and self.config.passthru_url:
                sent = self._passthru(call, digits)
                if applet == "passthru":
                    await sent
                else:
                    self._spawn(sent)
            elif applet == "hangup":
                return

    async def _passthru(self, call: SimulatedCall, digits: str | None) -> None:
        assert self._http is not None, "bind() the simulator to an HTTP client first"
        assert self.config.passthru_url is not None
        query = {
            "CallSid": call.sid,
            "From": call.from_number,
            "To": call.to_number or call.caller_id,
            "Direction": "outbound-api",
            "CurrentTime": format_exotel_time(_now()),
            "CustomField": call.custom_field or "",
            "RecordingUrl": "",
        }
        if digits is not None:
            query["digits"] = f'"{digits}"'  # as Exotel sends it: in double quotes
        separator = "&" if "?" in self.config.passthru_url else "?"
        url = f"{self.config.passthru_url}{separator}{urlencode(query)}"
        try:
            response = await self._http.get(url, follow_redirects=False)
        except httpx.HTTPError as exc:
            log.warning("passthru for %s failed: %r", call.sid, exc)
            return
        path = httpx.URL(url).path
        self.log.append(LoggedRequest(time.time(), "GET", path, response.status_code, sid=call.sid))

    def _callback(self, call: SimulatedCall, event_type: str) -> dict[str, Any]:
        """A status callback's fields: the four always sent, and, to a call that asked for
        events (`StatusCallbackEvents`), `EventType` and the rest. An `answered` event is
        only ever sent in that shape: without `EventType` it would read as a plain
        `in-progress` status."""
        answered = event_type == "answered"
        payload: dict[str, Any] = {
            "CallSid": call.sid,
            "Status": "in-progress" if answered else call.status,
            "RecordingUrl": "" if answered else (call.rendered_recording_url or ""),
            "DateUpdated": format_exotel_time(
                call.date_created + timedelta(seconds=1) if answered else call.end_time or _now()
            ),
        }
        if call.callback_events or answered:
            # As the call stood when the event happened: an answered call has talked for 0 s.
            talked, on_call = (0, 0) if answered else (call.conversation_duration, call.duration)
            payload |= {
                "EventType": event_type,
                "DateCreated": format_exotel_time(call.date_created),
                "To": call.to_number or "",
                "From": call.from_number,
                "PhoneNumberSid": call.caller_id,
                "StartTime": format_exotel_time(call.date_created),
                "EndTime": "" if answered else format_exotel_time(call.end_time or _now()),
                "ConversationDuration": talked or 0,
                "Direction": "outbound-api",
                "CustomField": call.custom_field or "",
                "Legs": [{"OnCallDuration": on_call or 0, "Status": payload["Status"]}],
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

    def app(self, *, owns_http: bool = False, mounted: bool = False) -> FastAPI:
        """The simulator as an ASGI app: Exotel's API at its root, its own routes under
        SIMULATOR_PREFIX. With `owns_http` it makes its own callback client (standalone);
        otherwise the host app calls `bind()`. `mounted`: the host app mounts it at
        SIMULATOR_PREFIX, so its own routes are at its root (`/_simulator/log` either way)."""

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
        app.add_exception_handler(StarletteHTTPException, self._http_error)
        app.add_exception_handler(RequestValidationError, self._http_invalid)
        calls = "/v1/Accounts/{account_sid}/Calls"
        for ext in ("", ".json"):
            app.add_api_route(f"{calls}/connect{ext}", self._http_connect, methods=["POST"])
            app.add_api_route(f"{calls}{ext}", self._http_bulk, methods=["GET"])
        app.add_api_route(calls + "/{sid}", self._http_call, methods=["GET"])
        app.add_api_route(
            "/recordings/{account_sid}/{sid}.wav", self._http_recording, methods=["GET"]
        )
        own = "" if mounted else SIMULATOR_PREFIX
        app.add_api_route(f"{own}/log", self._http_log, methods=["GET"])
        app.add_api_route(f"{own}/recording-faults", self._http_recording_faults, methods=["POST"])
        app.add_api_route(f"{own}/outcomes", self._http_plan, methods=["POST"])
        app.add_api_route(f"{own}/outcomes", self._http_planned, methods=["GET"])
        app.add_api_route(f"{own}/outcomes", self._http_unplan, methods=["DELETE"])
        return app

    async def _http_connect(self, request: Request, account_sid: str) -> Response:
        as_json = request.url.path.endswith(".json")
        if denied := self._gate(request, account_sid, as_json):
            return denied
        form = {key: str(value) for key, value in (await request.form()).items()}
        status, body = await self.connect(account_sid, form, base_url=str(request.base_url))
        if self.config.response_delay:
            # Exotel retries origination before answering; its callbacks can arrive first.
            await asyncio.sleep(self.config.response_delay)
        sid = body["Call"]["Sid"] if "Call" in body else None
        self._log(request, status, from_number=form.get("From"), sid=sid)
        return _render(body, status, as_json)

    async def _http_call(self, request: Request, account_sid: str, sid: str) -> Response:
        as_json = sid.endswith(".json")
        sid = sid.removesuffix(".json")
        if sid == "connect":
            # `Calls/{sid}` would take `GET Calls/connect` for a call's details.
            raise HTTPException(405, headers={"Allow": "POST"})
        if denied := self._gate(request, account_sid, as_json):
            return denied
        call = self.calls.get(sid)
        status = 200 if call else 404
        self._log(request, status, sid=sid)
        if call is None:
            return _render(_rest_exception(404, "Call not found; "), 404, as_json)
        details = request.query_params.get("details", "").lower() == "true"
        return _render({"Call": call.fields(account_sid, details=details)}, 200, as_json)

    async def _http_bulk(self, request: Request, account_sid: str) -> Response:
        as_json = request.url.path.endswith(".json")
        if denied := self._gate(request, account_sid, as_json):
            return denied
        query = request.query_params
        try:
            page = self.lookup(query)
        except InvalidQuery as exc:
            self._log(request, 400)
            message = f"Invalid Call Parameters: {exc}; "
            return _render(_rest_exception(400, message), 400, as_json)
        self._log(request, 200)
        # Page URIs are relative to the API host (never to where the simulator is mounted).
        path = f"/v1/Accounts/{account_sid}/Calls{'.json' if as_json else ''}"
        filters = {k: v for k, v in query.items() if k not in ("After", "Before", "PageSize")}
        filters["PageSize"] = str(page.page_size)

        def uri(**cursor: str) -> str:
            return f"{path}?{urlencode(filters | cursor, quote_via=quote)}"

        metadata = {
            "Total": page.total,
            "PageSize": page.page_size,
            "FirstPageUri": uri(),
            "PrevPageUri": uri(Before=page.before) if page.before else None,
            "NextPageUri": uri(After=page.after) if page.after else None,
        }
        calls = [call.fields(account_sid) for call in page.calls]
        return _render({"Metadata": metadata, "Calls": calls}, 200, as_json)

    async def _http_recording(self, request: Request, account_sid: str, sid: str) -> Response:
        call = self.calls.get(sid)
        fault = self._next_recording_fault()
        if fault and fault.delay:
            await asyncio.sleep(fault.delay)
        status = 200
        if not self._has_credentials(request):
            status = 401
        elif call is None or call.recording_url is None:
            status = 404
        elif not self._signature_valid(request):
            status = 403  # as S3 answers a presigned URL that has expired
        elif fault and fault.status:
            status = fault.status
        self._log(request, status, sid=sid)
        if status != 200:
            return Response(status_code=status)
        size = recording_size(self.config.recording_seconds)
        served = size // 2 if fault and fault.cut_short else size
        return StreamingResponse(
            recording_bytes(sid, size, stop_after=served),
            media_type=RECORDING_TYPE,
            headers={"Content-Length": str(size)},
        )

    async def _http_recording_faults(self, fault: RecordingFault) -> dict[str, int]:
        self.recording_faults.append(fault)
        return {"queued": sum(f.times for f in self.recording_faults)}

    async def _http_plan(self, planned: PlannedOutcomes) -> PlannedOutcomes:
        return self.plan(planned)

    async def _http_planned(self) -> list[PlannedOutcomes]:
        return list(self.planned.values())

    async def _http_unplan(self) -> Response:
        self.planned.clear()
        return Response(status_code=204)

    def _next_recording_fault(self) -> RecordingFault | None:
        if not self.recording_faults:
            return None
        fault = self.recording_faults[0]
        if fault.times <= 1:
            self.recording_faults.popleft()
        else:
            self.recording_faults[0] = fault.model_copy(update={"times": fault.times - 1})
        return fault

    def _signed(self, url: str) -> str:
        validity = self.config.recording_url_validity
        if validity is None:
            return url
        expires = f"{time.time() + validity:.3f}"
        query = {"Expires": expires, "Signature": self._signature(httpx.URL(url).path, expires)}
        return f"{url}?{urlencode(query)}"

    def _signature(self, path: str, expires: str) -> str:
        return hmac.new(self._url_key, f"{path}\n{expires}".encode(), "sha256").hexdigest()

    def _signature_valid(self, request: Request) -> bool:
        if self.config.recording_url_validity is None:
            return True
        expires = request.query_params.get("Expires", "")
        given = request.query_params.get("Signature", "")
        try:
            expired = float(expires) <= time.time()
        except ValueError:
            return False
        signature = self._signature(request.url.path, expires)
        return not expired and hmac.compare_digest(given, signature)

    def _has_credentials(self, request: Request) -> bool:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        if self.config.credentials is None:
            return True
        try:
            given = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            return False
        wanted = ":".join(self.config.credentials).encode()
        return secrets.compare_digest(given, wanted)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        """Unknown routes and wrong methods answer as Exotel does, with a `RestException`."""
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        messages = {404: "Resource not found; ", 405: "Method not allowed; "}
        body = _rest_exception(status, messages.get(status, f"{exc.detail}; "))
        self._log(request, status)
        response = _render(body, status, request.url.path.endswith(".json"))
        response.headers.update(exc.headers or {})
        return response

    async def _http_invalid(self, request: Request, exc: Exception) -> Response:
        """A body its own routes cannot take (an unknown outcome, a fault's status out of
        range): 422, a `RestException` naming each problem, in JSON as its own routes speak."""
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'][1:])}: {error['msg']}"
            for error in exc.errors()
        )
        self._log(request, 422)
        body = _rest_exception(422, f"Invalid parameters: {problems}; ")
        return _render(body, 422, as_json=True)

    async def _http_log(self) -> list[dict[str, Any]]:
        return [asdict(entry) for entry in self.log]

    def _gate(self, request: Request, account_sid: str, as_json: bool) -> Response | None:
        """Basic auth (the account's credentials, if configured), then its rate limit."""
        # Logged at its arrival, when the rate limit counts it (as Exotel counts).
        request.state.arrived = time.time()
        if not self._has_credentials(request):
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
        at = getattr(request.state, "arrived", None) or time.time()
        self.log.append(LoggedRequest(at, request.method, request.url.path, status, **details))


def recording_size(seconds: float) -> int:
    """The bytes of a recording `seconds` long: a 44-byte WAV header and its samples."""
    return 44 + 2 * int(seconds * RECORDING_RATE)


async def recording_bytes(
    sid: str, size: int, *, stop_after: int | None = None
) -> AsyncIterator[bytes]:
    """A WAV of `size` bytes: a tone whose pitch comes from the SID (the same every time),
    a second of it at a time; only the first `stop_after` bytes (a body cut short)."""
    samples = (size - 44) // 2
    header = b"RIFF" + struct.pack("<I4s", 36 + 2 * samples, b"WAVE")
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, RECORDING_RATE, 2 * RECORDING_RATE, 2, 16)
    header += b"data" + struct.pack("<I", 2 * samples)
    pitch = 300 + int(hashlib.sha256(sid.encode()).hexdigest()[:4], 16) % 600
    second = struct.pack(
        f"<{RECORDING_RATE}h",
        *(
            int(8000 * math.sin(2 * math.pi * pitch * t / RECORDING_RATE))
            for t in range(RECORDING_RATE)
        ),
    )
    left = size if stop_after is None else stop_after
    chunk = header
    while left > 0:
        piece = chunk[:left]
        left -= len(piece)
        yield piece
        chunk = second
        await asyncio.sleep(0)


def _now() -> datetime:
    return datetime.now(UTC)


def price_of(duration: int) -> str:
    """What a call of `duration` seconds costs, as Exotel writes a `Price`: `PRICE_PER_MINUTE`
    for each started minute (41 s: `"0.600"`, 61 s: `"1.200"`, 0 s: `"0.000"`)."""
    minutes = -(-duration // 60)
    return f"{PRICE_PER_MINUTE * minutes:.3f}"


def _new_sid() -> str:
    # Real SIDs are 32 characters and not hex (they end in letters past `f`).
    return secrets.token_hex(15) + secrets.choice("ghjkmnpqrstuvwxyz") + secrets.choice("gm")


_SEPARATORS = re.compile(f"[{re.escape(NUMBER_SEPARATORS)}]")
# The simulator's own reading of numbers, as `exotel/` imports nothing of the rest of the app: an
# Indian number in any usual spelling is `+91`, `0091`, `91` or `0`, then 10 digits that do not
# start with 0 (mobiles start with 6-9, landlines with their STD code).
_INDIAN = re.compile(rf"(?:\+91|0091|91|0)?(?P<nsn>[1-9]{DIGIT}{{9}})")


def national_form(number: str) -> str:
    """Exotel answers Indian numbers in `0`-prefixed national form, whatever form was sent:
    `+919052161110` -> `09052161110`. Any other number is left as sent."""
    indian = _INDIAN.fullmatch(_SEPARATORS.sub("", number))
    return "0" + indian["nsn"] if indian else number


_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_under(url: str, base: str) -> bool:
    """Whether `url` is `base` or below it: the same scheme, host and port, and a path at or
    under `base`'s (`/base/x`, not `/basement`). Dot segments are resolved first."""
    try:
        given, root = httpx.URL(url), httpx.URL(base)
    except httpx.InvalidURL:
        return False
    if not given.is_absolute_url or _origin(given) != _origin(root):
        return False
    prefix = root.path.rstrip("/")
    return given.path == prefix or given.path.startswith(f"{prefix}/")


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme)


def _same_number(a: str, b: str) -> bool:
    """Equal in any spelling. Spaces and a leading `+` are dropped first: an unencoded `+` in a
    query string arrives as a space."""
    return _comparable(a) == _comparable(b)


def _comparable(number: str) -> str:
    return national_form(_SEPARATORS.sub("", number).lstrip("+"))


def _page_size(raw: str | None) -> int:
    if not raw:
        return DEFAULT_PAGE_SIZE
    size = integer(raw)
    if size is None or size < 1:
        raise InvalidQuery(f"PageSize must be a positive integer, not {raw}")
    return min(size, MAX_PAGE_SIZE)


def _cursor(call: SimulatedCall) -> str:
    # Opaque to clients, who must follow the page URIs rather than build cursors.
    return base64.urlsafe_b64encode(call.sid.encode()).decode().rstrip("=")


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
            # `Calls` holds `Call`s, `Legs` holds `Leg`s.
            items = "".join(element(name.removesuffix("s"), item) for item in value)
            return f"<{name}>{items}</{name}>" if items else f"<{name}/>"
        if value is None or value == "":
            return f"<{name}/>"
        return f"<{name}>{escape(str(value))}</{name}>"

    content = "".join(itertools.starmap(element, body.items()))
    return f"{XML_DECLARATION}\n<TwilioResponse>{content}</TwilioResponse>"
