"""The Exotel voice v1 client: `Calls/connect`, call details, and fetching recordings.

The HTTP transport is chosen at construction (a real `httpx.AsyncClient`, one bound to the
in-process simulator, or a `MockTransport` in tests); nothing here is ever patched.

Every method makes exactly one request: the caller spends the account's rate budget (200 a
minute, look-ups included) per request, so paging through bulk call details is the caller's loop
(`list_calls`, then `next_page` while `next_page_uri` is set), never one hidden in here.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO
from urllib.parse import quote

import httpx

from app.exotel.errors import (
    ExotelOutcomeUnknown,
    ExotelRateLimited,
    ExotelRejected,
    ExotelUnreachable,
    RecordingCutShort,
)
from app.exotel.wire import (
    ExotelCall,
    ExotelResponse,
    UnreadableBody,
    format_exotel_time,
    parse_response,
)
from app.numerals import integer
from app.retry_after import retry_after_seconds

# Bulk call details take at most 100 SIDs, and pages of at most 100 calls.
MAX_SIDS_PER_LOOKUP = 100
MAX_PAGE_SIZE = 100


@dataclass(frozen=True)
class ConnectRequest:
    """The form of `Calls/connect` (connect a number to a flow), in the app's names."""

    from_number: str  # as Exotel wants it dialled: `0` + 10 digits for Indian numbers
    caller_id: str
    flow_url: str
    status_callback: str | None = None
    time_limit: int | None = None
    time_out: int | None = None
    custom_field: str | None = None
    status_callback_events: Sequence[str] = ()
    status_callback_content_type: str | None = None

    def form(self) -> dict[str, str]:
        form = {
            "From": self.from_number,
            "CallerId": self.caller_id,
            "Url": self.flow_url,
            # The only call type Exotel still supports.
            "CallType": "trans",
        }
        optional = {
            "StatusCallback": self.status_callback,
            "TimeLimit": self.time_limit,
            "TimeOut": self.time_out,
            "CustomField": self.custom_field,
            "StatusCallbackContentType": self.status_callback_content_type,
        }
        form.update({name: str(value) for name, value in optional.items() if value is not None})
        for index, event in enumerate(self.status_callback_events):
            form[f"StatusCallbackEvents[{index}]"] = event
        return form


@dataclass(frozen=True)
class CallsPage:
    """One page of bulk call details. `next_page_uri` is where the next page is (give it to
    `ExotelClient.next_page`), None on the last page."""

    calls: list[ExotelCall]
    next_page_uri: str | None


# Exotel's recordings are MP3s; a response that names no type is taken for one.
DEFAULT_RECORDING_TYPE = "audio/mpeg"
_RECORDING_CHUNK = 64 * 1024


@dataclass(frozen=True)
class FetchedRecording:
    """What a recording's fetch wrote: its length, type and SHA-256 (hex)."""

    size: int
    content_type: str
    sha256: str


# Told of every request: the operation, the HTTP status (None: no answer came), the seconds.
Observer = Callable[[str, int | None, float], None]


class ExotelClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        account_sid: str,
        api_key: str,
        api_token: str,
        timeout_seconds: float,
        recording_hosts: Sequence[str] = (),
        observe: Observer | None = None,
    ) -> None:
        self._http = http
        self._recording_hosts = [host.lower() for host in recording_hosts]
        self._observe = observe
        self._root_url = base_url.rstrip("/")
        self._accounts_url = f"{self._root_url}/v1/Accounts/{account_sid}"
        # Basic auth always goes in the header, never as key:token@host (URLs end up in logs).
        self._auth = httpx.BasicAuth(api_key, api_token)
        self._timeout = httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 10.0))

    def __repr__(self) -> str:
        return f"ExotelClient({self._accounts_url!r})"

    async def connect(self, request: ConnectRequest) -> ExotelCall:
        """Ask Exotel to dial `request.from_number` and connect them to the flow.

        A 200 means Exotel handed the first leg to the operator, not that anyone answered.
        """
        url = f"{self._accounts_url}/Calls/connect.json"
        parsed = await self._request("connect", "POST", url, data=request.form())
        if not parsed.calls:
            # Exotel said yes but we cannot read which call it made: it may well be dialling.
            raise ExotelOutcomeUnknown("Exotel accepted the call but its response has no Sid")
        return parsed.calls[0]

    async def get_call(self, sid: str) -> ExotelCall | None:
        """One call's details, with the conversation duration; None if Exotel does not know it."""
        url = f"{self._accounts_url}/Calls/{quote(sid, safe='')}.json"
        try:
            parsed = await self._request("call_details", "GET", url, params={"details": "true"})
        except ExotelRejected as exc:
            if exc.status == httpx.codes.NOT_FOUND:
                return None
            raise
        return parsed.calls[0] if parsed.calls else None

    async def list_calls(
        self,
        *,
        sids: Sequence[str] = (),
        from_number: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> CallsPage:
        """The first page of bulk call details. Exotel never lists calls still in progress."""
        if len(sids) > MAX_SIDS_PER_LOOKUP:
            raise ValueError(f"at most {MAX_SIDS_PER_LOOKUP} SIDs per request")
        params: dict[str, str] = {"PageSize": str(min(page_size, MAX_PAGE_SIZE))}
        if sids:
            params["Sid"] = ",".join(sids)
        if from_number:
            params["From"] = from_number
        bounds = [
            f"{op}:{format_exotel_time(instant)}"
            for op, instant in (("gte", created_after), ("lte", created_before))
            if instant is not None
        ]
        if bounds:
            params["DateCreated"] = ";".join(bounds)
        return await self._page(httpx.URL(f"{self._accounts_url}/Calls.json", params=params))

    async def next_page(self, next_page_uri: str) -> CallsPage:
        """The page of bulk call details that a previous page's `next_page_uri` points to.

        Raises ValueError, before sending anything, for a URI outside this client's own account
        on its own host: the request carries the API credentials.
        """
        return await self._page(self._own_page_url(next_page_uri))

    def _own_page_url(self, next_page_uri: str) -> httpx.URL:
        # Not in the error: a URI can carry anything, credentials included, and errors get logged.
        refusal = "not a page of this account's call details on this client's host"
        try:
            given = httpx.URL(next_page_uri)
            if given.is_relative_url and not given.host and next_page_uri.startswith("/"):
                # Exotel's page URIs are a path and query relative to the API host.
                url = httpx.URL(self._root_url + next_page_uri)
            else:
                url = given
        except httpx.InvalidURL as exc:
            raise ValueError(refusal) from exc
        accounts = httpx.URL(self._accounts_url)
        segments = url.path.split("/")
        if (
            (url.scheme, url.host, url.port) != (accounts.scheme, accounts.host, accounts.port)
            or url.userinfo
            or not url.path.startswith(accounts.path + "/")
            or "." in segments
            or ".." in segments
        ):
            raise ValueError(refusal)
        return url.copy_with(fragment=None)

    async def fetch_recording(self, url: str, into: IO[bytes]) -> FetchedRecording:
        """Stream the recording at `url` into `into`, with the account's credentials (Exotel
        serves recordings only with them since October 2024), never holding it whole.

        Raises ValueError, before sending anything, for a URL the credentials must not go to
        (`recording_url_allowed`); ExotelRejected for an error status; ExotelUnreachable or
        ExotelOutcomeUnknown when no whole answer came; RecordingCutShort when the body ended
        before its length.
        """
        if not self.recording_url_allowed(url):
            raise ValueError("not a recording URL on a host the credentials may be sent to")
        started = time.perf_counter()
        status = None
        digest, size = hashlib.sha256(), 0
        try:
            # A redirect is followed; httpx drops the credentials if it leaves the origin.
            async with self._http.stream(
                "GET", url, auth=self._auth, timeout=self._timeout, follow_redirects=True
            ) as response:
                status = response.status_code
                if not response.is_success:
                    await response.aread()
                    raise ExotelRejected(status, response.reason_phrase or "error")
                async for chunk in response.aiter_bytes(_RECORDING_CHUNK):
                    digest.update(chunk)
                    into.write(chunk)
                    size += len(chunk)
                # The length is of the encoded body: compare only an unencoded one.
                encoded = "content-encoding" in response.headers
                expected = None if encoded else response.headers.get("content-length")
                content_type = response.headers.get("content-type") or DEFAULT_RECORDING_TYPE
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ExotelUnreachable(f"could not connect: {type(exc).__name__}") from exc
        except httpx.RemoteProtocolError as exc:
            raise RecordingCutShort(size, None) from exc  # closed before its length was served
        except httpx.HTTPError as exc:
            raise ExotelOutcomeUnknown(f"no whole answer: {type(exc).__name__}") from exc
        finally:
            if self._observe:
                self._observe("recording", status, time.perf_counter() - started)
        declared = integer(expected) if expected else None
        if declared is not None and declared != size:
            raise RecordingCutShort(size, declared)
        return FetchedRecording(size, content_type[:100], digest.hexdigest())

    def recording_url_allowed(self, url: str) -> bool:
        """Whether the credentials may go to `url`: over HTTPS to one of the recording hosts,
        each `host` or `*.domain` (any subdomain) with maybe a path prefix
        (`s3.example.com/bucket/`); or to the API's own origin."""
        try:
            given = httpx.URL(url)
        except httpx.InvalidURL:
            return False
        root = httpx.URL(self._root_url)
        if given.userinfo or not given.host:
            return False
        if (given.scheme, given.host, given.port) == (root.scheme, root.host, root.port):
            return True
        host, path = given.host.lower(), given.path
        if given.scheme != "https" or "/../" in path or "/./" in path:
            return False
        for allowed in self._recording_hosts:
            allowed_host, slash, prefix = allowed.partition("/")
            on_host = host == allowed_host or (
                allowed_host.startswith("*.") and host.endswith(allowed_host[1:])
            )
            if on_host and path.startswith(slash + prefix):
                return True
        return False

    async def _page(self, url: httpx.URL) -> CallsPage:
        parsed = await self._request("bulk_call_details", "GET", url)
        return CallsPage(calls=parsed.calls, next_page_uri=parsed.next_page_uri)

    async def _request(
        self,
        operation: str,
        method: str,
        url: str | httpx.URL,
        *,
        data: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> ExotelResponse:
        started = time.perf_counter()
        status = None
        try:
            response = await self._http.request(
                method,
                url,
                data=data,
                params=params,
                auth=self._auth,
                timeout=self._timeout,
            )
            status = response.status_code
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ExotelUnreachable(f"could not connect to Exotel: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:  # a timeout, a dropped connection, a corrupt body
            raise ExotelOutcomeUnknown(f"no answer from Exotel: {type(exc).__name__}") from exc
        finally:
            if self._observe:
                self._observe(operation, status, time.perf_counter() - started)
        return _read(response)


def _read(response: httpx.Response) -> ExotelResponse:
    try:
        parsed = parse_response(response.content)
    except UnreadableBody as exc:
        if response.is_success:
            raise ExotelOutcomeUnknown(f"unreadable response from Exotel: {exc}") from exc
        parsed = None
    error = parsed.error if parsed else None
    if response.is_success and error is None and parsed is not None:
        return parsed
    # The HTTP status wins over the body's: a RestException can carry Status 200 on a 4xx.
    status = response.status_code if not response.is_success else (error and error.status) or 500
    message = error.message if error else response.reason_phrase or "error"
    code = error.code if error else None
    answer = error.raw if error else None
    if status == httpx.codes.TOO_MANY_REQUESTS:
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        raise ExotelRateLimited(status, message, code, retry_after, answer=answer)
    raise ExotelRejected(status, message, code, answer=answer)
