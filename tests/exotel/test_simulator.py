"""The Exotel simulator (app/exotel/simulator.py) over HTTP, as real Exotel behaves on the wire
(docs/exotel.md): numbers in national form, `Details` only when asked for, bulk details in
pages, `RestException`s for every refusal, the XML declaration, and two-number calls.

Driven in-process over `httpx.ASGITransport`, raw or through the real `ExotelClient`; its status
callbacks go to an `httpx.MockTransport`. Nothing reaches the network."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any, get_args
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from defusedxml import ElementTree as SafeET

from app.api.simulator import SimulatorMount
from app.config import ConfigurationError, Settings, SimulatedOutcome
from app.exotel.client import ExotelClient
from app.exotel.errors import ExotelRateLimited
from app.exotel.simulator import (
    NAMED_OUTCOMES,
    OutcomeName,
    Simulator,
    SimulatorConfig,
    price_of,
)
from app.exotel.status_callback import parse_status_callback
from app.main import create_app
from tests.conftest import FAKE_INTERNAL_API_KEY, place_body, serving
from tests.support.eventually import DEADLINE_SECONDS, eventually
from tests.support.exotel_double import new_sid
from tests.support.processes import free_ports

pytestmark = pytest.mark.anyio

ACCOUNT = "sim-account"
CALLS = f"/v1/Accounts/{ACCOUNT}/Calls"
CALLER_ID = "08030752400"
FLOW_URL = f"http://my.exotel.com/{ACCOUNT}/exoml/start_voice/926"
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'


class CallbackReceiver:
    """Where the simulator POSTs its status callbacks: records each one and answers 200."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.arrived = anyio.Event()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.arrived.set()
        return httpx.Response(200)

    async def first(self) -> httpx.Request:
        with anyio.fail_after(DEADLINE_SECONDS):
            await self.arrived.wait()
        return self.requests[0]

    async def at_least(self, count: int) -> list[httpx.Request]:
        with anyio.fail_after(DEADLINE_SECONDS):
            while len(self.requests) < count:
                self.arrived = anyio.Event()
                await self.arrived.wait()
        return self.requests


@pytest.fixture
def config() -> SimulatorConfig:
    # Calls end at once, so call details can list them; no test here waits on a timer.
    return SimulatorConfig(callback_delay=0, rate_limit=1000)


@pytest.fixture
def receiver() -> CallbackReceiver:
    return CallbackReceiver()


@pytest.fixture
async def simulator(
    config: SimulatorConfig, receiver: CallbackReceiver
) -> AsyncIterator[Simulator]:
    simulator = Simulator(config)
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as callbacks:
        simulator.bind(callbacks)
        yield simulator
        await simulator.aclose()


@pytest.fixture
async def exotel(simulator: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    """Raw HTTP to the simulator, with Basic auth as Exotel requires."""
    transport = httpx.ASGITransport(app=simulator.app())
    async with httpx.AsyncClient(
        transport=transport, base_url="http://simulator", auth=("key", "token")
    ) as http:
        yield http


@pytest.fixture
def client(exotel: httpx.AsyncClient) -> ExotelClient:
    """The real client, talking to the simulator."""
    return ExotelClient(
        exotel,
        base_url="http://simulator",
        account_sid=ACCOUNT,
        api_key="key",
        api_token="token",
        timeout_seconds=5,
    )


async def connect(exotel: httpx.AsyncClient, number: str, **fields: str) -> httpx.Response:
    form = {"From": number, "CallerId": CALLER_ID, "Url": FLOW_URL, "CallType": "trans"}
    form |= fields
    return await exotel.post(f"{CALLS}/connect.json", data={k: v for k, v in form.items() if v})


async def place(exotel: httpx.AsyncClient, number: str, **fields: str) -> str:
    """Place an accepted call; its SID."""
    response = await connect(exotel, number, **fields)
    assert response.status_code == 200, response.text
    return str(response.json()["Call"]["Sid"])


async def settle(simulator: Simulator) -> None:
    """Until every call has ended: Exotel lists only finished calls."""
    await eventually(
        lambda: [sid for sid, call in simulator.calls.items() if call.end_time is None],
        what="every call ended (those that have not)",
        until=lambda going_on: not going_on,
    )


async def place_finished(exotel: httpx.AsyncClient, simulator: Simulator, count: int) -> list[str]:
    """`count` completed calls, from distinct numbers (each ending in 0), in the order placed."""
    sids = [await place(exotel, f"09{n:08d}0") for n in range(count)]
    await settle(simulator)
    return sids


def xml(response: httpx.Response) -> Any:
    assert response.content.startswith(XML_DECLARATION), response.text
    return SafeET.fromstring(response.content)


# --- Where its own routes are (docs/simulator.md) ----------------------------------------------

FAULT = {"status": 500, "times": 2}


async def test_standalone_its_own_routes_are_under_the_prefix() -> None:
    """As `exocall simulator` serves it: Exotel's API at the root, its own routes under
    `/_simulator`."""
    app = Simulator(SimulatorConfig(callback_delay=0)).app(owns_http=True)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://simulator", auth=("k", "t")
    ) as http:
        assert (await http.post("/_simulator/recording-faults", json=FAULT)).json() == {"queued": 2}
        assert (await http.get(f"{CALLS}.json")).status_code == 200
        log = (await http.get("/_simulator/log")).json()
        assert [entry["path"] for entry in log] == [f"{CALLS}.json"]
        assert (await http.get("/_simulator/_simulator/log")).status_code == 404
        assert (await http.get("/_simulator/outcomes")).json() == []


async def test_in_serve_its_own_routes_answer_at_the_same_paths(db_url: str) -> None:
    """Mounted at `/_simulator` in `exocall serve` (no EXOTEL_API_KEY): its own routes at the
    paths the docs give, as standalone, and Exotel's API under the mount."""
    settings = Settings.load(env_file=None, database_url=db_url)
    assert settings.exotel.simulated
    async with serving(create_app(settings)) as api:
        assert (await api.post("/_simulator/recording-faults", json=FAULT)).json() == {"queued": 2}
        calls = "/_simulator/v1/Accounts/simulated/Calls.json"
        listed = await api.get(calls, auth=("simulator-key", "simulator-token"))
        assert listed.status_code == 200, listed.text
        log = (await api.get("/_simulator/log")).json()
        assert [(entry["path"], entry["status"]) for entry in log] == [(calls, 200)]
        assert (await api.get("/_simulator/_simulator/log")).status_code == 404


# --- exocall's own simulator: behind the API key, its callbacks to exocall only ---------------

MOUNTED_CALLS = "/_simulator/v1/Accounts/simulated/Calls"
CONNECT_FORM = {"From": "09052161110", "CallerId": CALLER_ID, "Url": FLOW_URL}
SIMULATOR_CREDENTIALS = ("simulator-key", "simulator-token")  # published: docs/simulator.md


def simulated(db_url: str, **values: Any) -> Settings:
    """exocall without an Exotel key, so with its simulator mounted. PUBLIC_BASE_URL is a port
    nothing listens on: the tests read the simulator, not the callbacks it sends there."""
    (port,) = free_ports(1)
    return Settings.load(
        env_file=None, database_url=db_url, public_base_url=f"http://127.0.0.1:{port}", **values
    )


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_production_never_has_the_simulator() -> None:
    """It serves only without EXOTEL_API_KEY, and production refuses to start without one."""
    production = {
        "exocall_env": "production",
        "api_keys": FAKE_INTERNAL_API_KEY,
        "callback_secrets": "fake-callback-secret",
        "exotel_account_sid": "fake-account",
        "exotel_api_token": "fake-exotel-token",
    }
    with pytest.raises(ConfigurationError, match="EXOTEL_API_KEY"):
        Settings.load(env_file=None, **production)


async def test_the_mount_hands_no_websocket_to_the_simulator(db_url: str) -> None:
    reached: list[Any] = []
    sent: list[dict[str, Any]] = []

    async def simulator(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    mount = SimulatorMount(simulator, simulated(db_url, api_keys=FAKE_INTERNAL_API_KEY))
    await mount({"type": "websocket", "path": "/_simulator/log", "headers": []}, receive, send)
    assert reached == []
    assert [message["type"] for message in sent] == ["websocket.close"]


async def test_in_serve_with_api_keys_nothing_under_the_mount_answers_without_one(
    db_url: str,
) -> None:
    """Its log (every call's number), its faults, its Exotel API and its recordings: with
    API_KEYS set, each needs one of them, as a bearer token or Basic auth's password. Its own
    published credentials open nothing; what is refused never reaches it."""
    settings = simulated(db_url, api_keys=FAKE_INTERNAL_API_KEY, simulator_callback_delay_seconds=0)
    with_key = [f"Bearer {FAKE_INTERNAL_API_KEY}", basic("anyone", FAKE_INTERNAL_API_KEY)]
    without = [None, basic(*SIMULATOR_CREDENTIALS), "Bearer simulator-token", "Bearer wrong-key"]
    async with serving(create_app(settings)) as api:
        api.headers.pop("Authorization")
        paths = [
            ("GET", "/_simulator/log"),
            ("POST", "/_simulator/recording-faults"),
            ("GET", f"{MOUNTED_CALLS}.json"),
            ("GET", f"{MOUNTED_CALLS}/{new_sid()}.json"),
            ("POST", f"{MOUNTED_CALLS}/connect.json"),
            ("GET", f"/_simulator/recordings/simulated/{new_sid()}.wav"),
            ("GET", "/_simulator/outcomes"),
            ("POST", "/_simulator/outcomes"),
            ("DELETE", "/_simulator/outcomes"),
            ("GET", "/_simulator/_simulator/log"),  # where it was found open
            ("GET", "/_simulator/no-such-path"),
        ]
        for (method, path), authorization in itertools.product(paths, without):
            headers = {"Authorization": authorization} if authorization else {}
            refused = await api.request(method, path, headers=headers, data=CONNECT_FORM)
            assert refused.status_code == 401, (method, path, authorization, refused.text)
            assert refused.json()["error"]["code"] == "unauthenticated"

        placed = await api.post(
            f"{MOUNTED_CALLS}/connect.json",
            data=CONNECT_FORM,
            headers={"Authorization": with_key[0]},
        )
        assert placed.status_code == 200, placed.text
        sid = placed.json()["Call"]["Sid"]
        recording = f"/_simulator/recordings/simulated/{sid}.wav"
        for authorization in with_key:
            headers = {"Authorization": authorization}
            fetched = await eventually(
                lambda: api.get(recording, headers=headers),  # noqa: B023
                what="the call ended, with its recording",
                until=lambda response: response.status_code == 200,
            )
            assert fetched.headers["content-type"] == "audio/wav"
            listed = await api.get(f"{MOUNTED_CALLS}.json", headers=headers)
            assert [call["Sid"] for call in listed.json()["Calls"]] == [sid]
            fault = await api.post("/_simulator/recording-faults", json=FAULT, headers=headers)
            assert fault.status_code == 200
            log = (await api.get("/_simulator/log", headers=headers)).json()
            assert 401 not in {entry["status"] for entry in log}
            assert [e["sid"] for e in log if e["path"].endswith("/connect.json")] == [sid]


async def test_in_serve_with_api_keys_exocall_still_places_calls_through_it(db_url: str) -> None:
    """exocall's own requests reach it in-process, not through the mount."""
    settings = simulated(db_url, api_keys=FAKE_INTERNAL_API_KEY)
    async with serving(create_app(settings)) as api:
        placed = await api.post("/calls", json=place_body())
        assert placed.status_code == 201, placed.text
        log = (await api.get("/_simulator/log")).json()
        connects = [(e["sid"], e["status"]) for e in log if "/Calls/connect" in e["path"]]
        assert connects == [(placed.json()["sid"], 200)]


async def test_in_serve_its_callbacks_go_to_public_base_url_only(db_url: str) -> None:
    """A `Calls/connect` to it must not make exocall POST anywhere else: refused, 400."""
    settings = simulated(db_url)
    public = settings.callbacks.public_base_url
    elsewhere = [
        "http://[::1]:19602/",
        "http://127.0.0.1:19602/status-callback",
        public.replace("http://", "https://") + "/status-callback",
        f"{public}.evil.test/status-callback",
        f"{public}@evil.test/status-callback",
    ]
    async with serving(create_app(settings)) as api:
        for url in elsewhere:
            refused = await api.post(
                f"{MOUNTED_CALLS}/connect.json",
                data=CONNECT_FORM | {"StatusCallback": url},
                auth=SIMULATOR_CREDENTIALS,
            )
            assert refused.status_code == 400, (url, refused.text)
            assert "'StatusCallback' must be under" in refused.json()["RestException"]["Message"]
        placed = await api.post(
            f"{MOUNTED_CALLS}/connect.json",
            data=CONNECT_FORM | {"StatusCallback": f"{public}/status-callback?token=t"},
            auth=SIMULATOR_CREDENTIALS,
        )
        assert placed.status_code == 200, placed.text
        log = (await api.get("/_simulator/log")).json()
        assert [e["status"] for e in log] == [400] * len(elsewhere) + [200]


@pytest.mark.parametrize(
    ("url", "under"),
    [
        ("https://exocall.test/base", True),
        ("https://exocall.test/base/status-callback?token=t", True),
        ("HTTPS://EXOCALL.test:443/base/cb", True),
        ("https://exocall.test/basement", False),
        ("https://exocall.test/base/../cb", False),
        ("https://exocall.test/cb", False),
        ("http://exocall.test/base/cb", False),
        ("https://exocall.test:8443/base/cb", False),
        ("https://exocall.test.evil.test/base/cb", False),
        ("https://exocall.test@evil.test/base/cb", False),
        ("http://[::1]:19602/", False),
        ("/base/cb", False),
        ("not a url", False),
    ],
)
async def test_given_a_base_its_callbacks_go_under_it_only(
    exotel: httpx.AsyncClient,
    simulator: Simulator,
    receiver: CallbackReceiver,
    url: str,
    under: bool,
) -> None:
    simulator.config.callbacks_under = "https://exocall.test/base"
    response = await connect(exotel, "09052161112", StatusCallback=url)
    if under:
        assert response.status_code == 200, response.text
        assert (await receiver.first()).method == "POST"
    else:
        assert response.status_code == 400, response.text
        assert simulator.calls == {}  # no call: nothing will ever be sent


async def test_standalone_sends_callbacks_wherever_asked_as_exotel_does(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    """`exocall simulator` is a test tool for any receiver (docs/simulator.md)."""
    await place(exotel, "09052161112", StatusCallback="http://[::1]:19602/status-callback")
    assert (await receiver.first()).url == "http://[::1]:19602/status-callback"


# --- Numbers in Exotel's national form --------------------------------------------------------

INDIAN_SPELLINGS = ["+919052161110", "9052161110", "09052161110", "919052161110", "+91 90521-61110"]


@pytest.mark.parametrize("sent", INDIAN_SPELLINGS)
async def test_an_indian_from_is_answered_in_national_form(
    exotel: httpx.AsyncClient, simulator: Simulator, sent: str
) -> None:
    response = await connect(exotel, sent)
    assert response.status_code == 200, response.text
    call = response.json()["Call"]
    assert call["From"] == "09052161110"
    await settle(simulator)
    details = await exotel.get(f"{CALLS}/{call['Sid']}.json")
    assert details.json()["Call"]["From"] == "09052161110"
    xml_details = xml(await exotel.get(f"{CALLS}/{call['Sid']}"))
    assert xml_details.findtext("Call/From") == "09052161110"


async def test_a_number_in_other_digits_is_refused_as_exotel_refuses(
    exotel: httpx.AsyncClient,
) -> None:
    response = await connect(exotel, "+9190521611\u0967\u0966")  # Devanagari 1, 0 last
    assert response.status_code == 400, response.text
    assert "'From' is not a valid number" in response.json()["RestException"]["Message"]


async def test_the_log_keeps_from_as_it_was_sent(exotel: httpx.AsyncClient) -> None:
    # Tests read the log to count dials of the numbers they sent.
    await connect(exotel, "+919052161110")
    log = (await exotel.get("/_simulator/log")).json()
    (entry,) = [e for e in log if e["path"].endswith("/Calls/connect.json")]
    assert entry["from_number"] == "+919052161110"


@pytest.mark.parametrize("sent", ["+14155550100", "+442071838750"])
async def test_a_number_outside_india_is_left_as_sent(exotel: httpx.AsyncClient, sent: str) -> None:
    response = await connect(exotel, sent)
    assert response.status_code == 200, response.text
    assert response.json()["Call"]["From"] == sent


async def test_the_refusal_names_the_number_in_national_form(exotel: httpx.AsyncClient) -> None:
    response = await connect(exotel, "+919052161115")  # 5: TRAI NDNC
    assert response.status_code == 403
    assert response.json()["RestException"]["Message"] == (
        "Call to [09052161115] cannot be made because of TRAI NDNC regulations; "
    )


@pytest.mark.parametrize(
    "asked", [*INDIAN_SPELLINGS, " 919052161110", "+919052161110,+919999999990"]
)
async def test_the_bulk_from_filter_matches_any_spelling(
    exotel: httpx.AsyncClient, simulator: Simulator, asked: str
) -> None:
    # " 919052161110": an unencoded `+` in a query string arrives as a space.
    wanted = await place(exotel, "+919052161110")
    await place(exotel, "09052161111")
    await settle(simulator)
    response = await exotel.get(f"{CALLS}.json", params={"From": asked})
    assert [call["Sid"] for call in response.json()["Calls"]] == [wanted]


async def test_the_bulk_from_filter_takes_several_numbers(
    exotel: httpx.AsyncClient, simulator: Simulator
) -> None:
    first = await place(exotel, "+919052161110")
    second = await place(exotel, "09052161111")
    await place(exotel, "09052161120")
    await settle(simulator)
    response = await exotel.get(f"{CALLS}.json", params={"From": "9052161110,+919052161111"})
    assert {call["Sid"] for call in response.json()["Calls"]} == {first, second}


# --- Details only when asked for --------------------------------------------------------------


async def test_details_come_only_with_details_true(
    exotel: httpx.AsyncClient, simulator: Simulator
) -> None:
    connected = (await connect(exotel, "09052161110")).json()["Call"]
    assert "Details" not in connected
    await settle(simulator)
    sid = connected["Sid"]
    assert "Details" not in (await exotel.get(f"{CALLS}/{sid}.json")).json()["Call"]
    for falsy in ("false", "0", ""):
        plain = await exotel.get(f"{CALLS}/{sid}.json", params={"details": falsy})
        assert "Details" not in plain.json()["Call"]
    detailed = await exotel.get(f"{CALLS}/{sid}.json", params={"details": "true"})
    assert detailed.json()["Call"]["Details"] == {
        "ConversationDuration": 32,
        "Leg1Status": "completed",
        "Leg2Status": "completed",
        "Legs": [
            {"Id": 1, "OnCallDuration": 41, "Status": "completed"},
            {"Id": 2, "OnCallDuration": 32, "Status": "completed"},
        ],
    }


async def test_bulk_details_never_carry_details(
    exotel: httpx.AsyncClient, simulator: Simulator
) -> None:
    await place_finished(exotel, simulator, 2)
    for params in ({}, {"details": "true"}):
        calls = (await exotel.get(f"{CALLS}.json", params=params)).json()["Calls"]
        assert len(calls) == 2
        assert all("Details" not in call for call in calls)


async def test_details_of_a_call_nobody_answered(
    exotel: httpx.AsyncClient, simulator: Simulator
) -> None:
    sid = await place(exotel, "09052161112")  # 2: busy
    await settle(simulator)
    response = await exotel.get(f"{CALLS}/{sid}.json", params={"details": "true"})
    details = response.json()["Call"]["Details"]
    assert (details["ConversationDuration"], details["Leg1Status"]) == (0, "busy")
    # Leg 2 was never attempted: no status, as in Exotel's callbacks (`Legs[1][Status]=`).
    assert details["Leg2Status"] is None
    assert [leg["Status"] for leg in details["Legs"]] == ["busy", None]


async def test_details_in_xml(exotel: httpx.AsyncClient, simulator: Simulator) -> None:
    sid = await place(exotel, "09052161110")
    await settle(simulator)
    root = xml(await exotel.get(f"{CALLS}/{sid}", params={"details": "true"}))
    assert root.findtext("Call/Details/ConversationDuration") == "32"
    assert root.findtext("Call/Details/Leg2Status") == "completed"
    legs = root.findall("Call/Details/Legs/Leg")
    assert [(leg.findtext("Id"), leg.findtext("OnCallDuration")) for leg in legs] == [
        ("1", "41"),
        ("2", "32"),
    ]
    assert xml(await exotel.get(f"{CALLS}/{sid}")).find("Call/Details") is None


async def test_the_client_reads_details_from_single_lookups_only(
    client: ExotelClient, exotel: httpx.AsyncClient, simulator: Simulator
) -> None:
    sid = await place(exotel, "09052161110")
    await settle(simulator)
    call = await client.get_call(sid)  # asks for details=true
    assert call is not None
    assert (call.status, call.duration, call.conversation_duration) == ("completed", 41, 32)
    (listed,) = (await client.list_calls(sids=[sid])).calls
    assert (listed.sid, listed.duration, listed.conversation_duration) == (sid, 41, None)


# --- Bulk details in pages --------------------------------------------------------------------


def cursor_of(uri: str, name: str) -> str:
    (value,) = parse_qs(urlsplit(uri).query)[name]
    return value


async def test_bulk_details_come_in_pages_linked_by_next_page_uri(
    exotel: httpx.AsyncClient, simulator: Simulator
) -> None:
    placed = await place_finished(exotel, simulator, 5)
    first = await exotel.get(f"{CALLS}.json", params={"PageSize": "2"})
    assert first.status_code == 200, first.text
    metadata = first.json()["Metadata"]
    assert (metadata["Total"], metadata["PageSize"], metadata["PrevPageUri"]) == (5, 2, None)
    assert metadata["FirstPageUri"] == f"{CALLS}.json?PageSize=2"
    assert metadata["NextPageUri"].startswith(f"{CALLS}.json?")

    pages = [first.json()]
    while uri := pages[-1]["Metadata"]["NextPageUri"]:
        response = await exotel.get(uri)
        assert response.status_code == 200, response.text
        pages.append(response.json())

    assert [len(page["Calls"]) for page in pages] == [2, 2, 1]
    # Every call exactly once, newest first (Exotel's default order).
    listed = [call["Sid"] for page in pages for call in page["Calls"]]
    assert listed == placed[::-1]
    assert pages[-1]["Metadata"]["NextPageUri"] is None
    # The cursor is opaque: not a SID, nor a position a client could compute.
    cursors = [cursor_of(page["Metadata"]["NextPageUri"], "After") for page in pages[:-1]]
    assert not set(cursors) & set(placed)
    assert not {c for c in cursors if c.isdigit()}


async def test_the_order_is_stable_and_can_be_reversed(
    exotel: httpx.AsyncClient, simulator: Simulator
) -> None:
    placed = await place_finished(exotel, simulator, 4)
    newest_first = [
        [c["Sid"] for c in (await exotel.get(f"{CALLS}.json")).json()["Calls"]] for _ in range(3)
    ]
    assert newest_first == [placed[::-1]] * 3
    oldest = await exotel.get(f"{CALLS}.json", params={"SortBy": "DateCreated:asc", "PageSize": 3})
    assert [c["Sid"] for c in oldest.json()["Calls"]] == placed[:3]
    rest = await exotel.get(oldest.json()["Metadata"]["NextPageUri"])
    assert [c["Sid"] for c in rest.json()["Calls"]] == placed[3:]


async def test_prev_page_uri_leads_back(exotel: httpx.AsyncClient, simulator: Simulator) -> None:
    await place_finished(exotel, simulator, 6)
    pages = [(await exotel.get(f"{CALLS}.json", params={"PageSize": "2"})).json()]
    while uri := pages[-1]["Metadata"]["NextPageUri"]:
        pages.append((await exotel.get(uri)).json())
    assert len(pages) == 3
    assert pages[0]["Metadata"]["PrevPageUri"] is None
    for earlier, later in itertools.pairwise(pages):
        prev_uri = later["Metadata"]["PrevPageUri"]
        assert cursor_of(prev_uri, "Before")
        back = (await exotel.get(prev_uri)).json()
        assert back["Calls"] == earlier["Calls"]
        assert back["Metadata"]["PrevPageUri"] == earlier["Metadata"]["PrevPageUri"]


async def test_page_uris_keep_the_filters(exotel: httpx.AsyncClient, simulator: Simulator) -> None:
    mine = [await place(exotel, "+919052161110") for _ in range(3)]
    await place(exotel, "09052161120")
    await settle(simulator)
    page = (
        await exotel.get(f"{CALLS}.json", params={"From": "+919052161110", "PageSize": 2})
    ).json()
    assert page["Metadata"]["Total"] == 3
    following = (await exotel.get(page["Metadata"]["NextPageUri"])).json()
    listed = [c["Sid"] for c in page["Calls"] + following["Calls"]]
    assert listed == mine[::-1]
    assert following["Metadata"]["NextPageUri"] is None
    assert parse_qs(urlsplit(page["Metadata"]["FirstPageUri"]).query)["From"] == ["+919052161110"]


@pytest.mark.parametrize(("asked", "size"), [(None, 50), ("100", 100), ("500", 100), ("7", 7)])
async def test_page_size_defaults_to_50_and_is_at_most_100(
    exotel: httpx.AsyncClient, simulator: Simulator, asked: str | None, size: int
) -> None:
    await place_finished(exotel, simulator, 101)
    params = {"PageSize": asked} if asked else {}
    page = (await exotel.get(f"{CALLS}.json", params=params)).json()
    assert (len(page["Calls"]), page["Metadata"]["PageSize"]) == (size, size)
    assert page["Metadata"]["Total"] == 101
    assert page["Metadata"]["NextPageUri"] is not None


async def test_a_single_page_has_no_next_page(
    exotel: httpx.AsyncClient, simulator: Simulator
) -> None:
    await place_finished(exotel, simulator, 2)
    page = (await exotel.get(f"{CALLS}.json")).json()
    assert len(page["Calls"]) == 2
    assert (page["Metadata"]["NextPageUri"], page["Metadata"]["PrevPageUri"]) == (None, None)


@pytest.mark.parametrize("config", [SimulatorConfig(callback_delay=60)])
async def test_calls_in_progress_are_never_listed(exotel: httpx.AsyncClient) -> None:
    sid = await place(exotel, "09052161110")
    page = (await exotel.get(f"{CALLS}.json", params={"Sid": sid})).json()
    assert page["Calls"] == []
    assert (page["Metadata"]["Total"], page["Metadata"]["NextPageUri"]) == (0, None)


@pytest.mark.parametrize(
    "params",
    [
        {"PageSize": "0"},
        {"PageSize": "many"},
        {"PageSize": "\u0661\u0662"},  # Arabic-Indic 12: no number Exotel reads
        {"PageSize": "1_000"},
        {"After": "not-a-cursor"},
        {"Before": "bm8tc3VjaC1jYWxs"},
        {"SortBy": "Price:asc"},
    ],
)
async def test_a_bad_page_query_is_a_400_rest_exception(
    exotel: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await exotel.get(f"{CALLS}.json", params=params)
    assert response.status_code == 400
    assert response.json()["RestException"]["Status"] == 400


async def test_xml_pages(exotel: httpx.AsyncClient, simulator: Simulator) -> None:
    placed = await place_finished(exotel, simulator, 3)
    root = xml(await exotel.get(CALLS, params={"PageSize": "2"}))
    assert [e.text for e in root.findall("Calls/Call/Sid")] == placed[:0:-1]
    assert root.findtext("Metadata/Total") == "3"
    next_uri = root.findtext("Metadata/NextPageUri")
    assert next_uri is not None
    assert next_uri.startswith(f"{CALLS}?")  # XML asked for, XML pages
    last = xml(await exotel.get(next_uri))
    assert [e.text for e in last.findall("Calls/Call/Sid")] == placed[:1]
    assert last.findtext("Metadata/NextPageUri") == ""  # `<NextPageUri/>`: none


async def test_the_client_follows_the_pages(
    client: ExotelClient, exotel: httpx.AsyncClient, simulator: Simulator
) -> None:
    placed = await place_finished(exotel, simulator, 5)
    page = await client.list_calls(page_size=2)
    listed = [call.sid for call in page.calls]
    requests = 1
    while page.next_page_uri:
        page = await client.next_page(page.next_page_uri)
        listed += [call.sid for call in page.calls]
        requests += 1
    assert listed == placed[::-1]
    assert requests == 3
    assert all(call.status == "completed" for call in page.calls)


@pytest.mark.parametrize("config", [SimulatorConfig(callback_delay=0, rate_limit=4)])
async def test_every_page_counts_against_the_rate_limit(
    client: ExotelClient, exotel: httpx.AsyncClient, simulator: Simulator
) -> None:
    await place_finished(exotel, simulator, 3)  # 3 of the 4 requests
    page = await client.list_calls(page_size=1)  # the 4th
    assert page.next_page_uri is not None
    with pytest.raises(ExotelRateLimited):
        await client.next_page(page.next_page_uri)


# --- RestException for everything, XML with its declaration ----------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", f"/v1/Accounts/{ACCOUNT}/Numbers.json", 404),
        ("GET", "/v1/nothing-here.json", 404),
        ("POST", f"{CALLS}.json", 405),
        ("GET", f"{CALLS}/connect.json", 405),
        ("DELETE", f"{CALLS}/abc9g.json", 405),
        ("PUT", f"{CALLS}/connect.json", 405),
    ],
)
async def test_unknown_routes_and_wrong_methods_are_rest_exceptions(
    exotel: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    response = await exotel.request(method, path)
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"RestException"}
    assert body["RestException"]["Status"] == status
    assert body["RestException"]["Message"]
    if status == 405:
        assert response.headers["allow"]

    as_xml = await exotel.request(method, path.removesuffix(".json"))
    assert as_xml.status_code == status
    assert xml(as_xml).findtext("RestException/Status") == str(status)


async def test_an_unknown_call_is_a_rest_exception(exotel: httpx.AsyncClient) -> None:
    response = await exotel.get(f"{CALLS}/nosuchcall9g.json")
    assert response.status_code == 404
    assert response.json()["RestException"]["Status"] == 404


async def test_every_xml_answer_starts_with_the_declaration(
    exotel: httpx.AsyncClient, simulator: Simulator
) -> None:
    form = {"From": "09052161110", "CallerId": CALLER_ID, "Url": FLOW_URL}
    accepted = await exotel.post(f"{CALLS}/connect", data=form)
    sid = xml(accepted).findtext("Call/Sid")
    await settle(simulator)
    answers = [
        accepted,
        await exotel.post(f"{CALLS}/connect", data=form | {"From": "09052161115"}),  # 403
        await exotel.post(f"{CALLS}/connect", data=form | {"From": ""}),  # 400
        await exotel.get(f"{CALLS}/{sid}"),
        await exotel.get(f"{CALLS}/{sid}", params={"details": "true"}),
        await exotel.get(f"{CALLS}/nosuchcall9g"),  # 404
        await exotel.get(CALLS),
        await exotel.get(CALLS, params={"PageSize": "0"}),  # 400
        await exotel.get(CALLS, auth=None),  # 401: the client's auth is replaced by none
        await exotel.get("/v1/nothing-here"),  # 404 route
        await exotel.delete(CALLS),  # 405
    ]
    statuses = [answer.status_code for answer in answers]
    assert statuses == [200, 403, 400, 200, 200, 404, 200, 400, 401, 404, 405]
    for answer in answers:
        assert answer.headers["content-type"].startswith("application/xml")
        xml(answer)


@pytest.mark.parametrize("config", [SimulatorConfig(rate_limit=1, retry_after=True)])
async def test_a_429_in_xml_has_the_declaration_too(exotel: httpx.AsyncClient) -> None:
    await exotel.get(CALLS)
    limited = await exotel.get(CALLS)
    assert limited.status_code == 429
    assert xml(limited).findtext("RestException/Status") == "429"
    assert limited.headers["retry-after"] == "60"


# --- Two-number calls -------------------------------------------------------------------------


async def test_connect_with_to_instead_of_url_connects_two_numbers(
    exotel: httpx.AsyncClient, simulator: Simulator, receiver: CallbackReceiver
) -> None:
    response = await connect(
        exotel,
        "+919052161110",
        Url="",
        To="+919876543210",
        StatusCallback="https://exocall.test/status-callback",
        StatusCallbackContentType="application/json",
        **{"StatusCallbackEvents[0]": "terminal"},
    )
    assert response.status_code == 200, response.text
    call = response.json()["Call"]
    assert (call["From"], call["To"]) == ("09052161110", "09876543210")
    await settle(simulator)
    details = (await exotel.get(f"{CALLS}/{call['Sid']}.json")).json()["Call"]
    assert (details["To"], details["Status"]) == ("09876543210", "completed")
    callback = json.loads((await receiver.first()).content)
    assert (callback["CallSid"], callback["To"]) == (call["Sid"], "09876543210")


async def test_a_flow_call_has_no_to(exotel: httpx.AsyncClient) -> None:
    flow = (await connect(exotel, "09052161110")).json()["Call"]
    assert flow["To"] is None
    # With a flow to go to, the flow wins and `To` is not dialled.
    both = (await connect(exotel, "09052161110", To="09876543210")).json()["Call"]
    assert both["To"] is None


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ({"Url": "", "To": ""}, "'Url' or 'To'"),
        ({"CallerId": ""}, "'CallerId'"),
        ({"From": ""}, "'From'"),
    ],
)
async def test_connect_without_a_required_field_is_400(
    exotel: httpx.AsyncClient, simulator: Simulator, missing: dict[str, str], named: str
) -> None:
    response = await connect(exotel, "09052161110", **missing)
    assert response.status_code == 400
    error = response.json()["RestException"]
    assert error["Status"] == 400
    assert named in error["Message"]
    assert simulator.calls == {}


# --- What it already did, still done ----------------------------------------------------------


@pytest.mark.parametrize(
    ("digit", "status"),
    [("0", "completed"), ("1", "completed"), ("2", "busy"), ("3", "no-answer"), ("4", "failed")],
)
async def test_the_last_digit_still_picks_the_outcome(
    exotel: httpx.AsyncClient, simulator: Simulator, digit: str, status: str
) -> None:
    sid = await place(exotel, f"+91905216111{digit}")
    await settle(simulator)
    call = (await exotel.get(f"{CALLS}/{sid}.json")).json()["Call"]
    assert call["Status"] == status


async def test_7_sends_its_callback_twice_then_a_late_answered_event(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    """docs/simulator.md: a number ending in 7 completes, its callback comes twice, then a late
    `answered` event, in the shape Exotel sends one (`EventType=answered`), though the call
    asked for no events (without `EventType` it is a plain `in-progress`)."""
    sid = await place(
        exotel,
        "09052161117",
        StatusCallback="https://exocall.test/cb",
        StatusCallbackContentType="application/json",
    )
    first, again, late = [json.loads(r.content) for r in await receiver.at_least(3)]
    assert first == again
    assert (first["Status"], "EventType" in first) == ("completed", False)
    assert (late["CallSid"], late["Status"], late["EventType"]) == (sid, "in-progress", "answered")
    assert late["Legs"] == [{"OnCallDuration": 0, "Status": "in-progress"}]
    assert parse_status_callback(late).answered


async def test_a_multipart_callback_still_arrives(
    exotel: httpx.AsyncClient, simulator: Simulator, receiver: CallbackReceiver
) -> None:
    sid = await place(exotel, "9052161110", StatusCallback="https://exocall.test/cb")
    await settle(simulator)
    request = await receiver.first()
    assert len(receiver.requests) == 1
    assert request.headers["content-type"].startswith("multipart/form-data")
    assert sid.encode() in request.content


@pytest.mark.parametrize(
    "config",
    [
        SimulatorConfig(
            callback_delay=0,
            rate_limit=1000,
            flows={"926": ["play", "gather", "passthru", "hangup", "passthru"]},
            passthru_url="http://exocall.test/passthru?token=fake",
        )
    ],
)
@pytest.mark.parametrize(("number", "keyed"), [("09052161110", "1"), ("09052161120", "2")])
async def test_a_flow_keys_the_second_to_last_digit_and_passes_it_through_before_the_callback(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver, number: str, keyed: str
) -> None:
    sid = await place(
        exotel,
        number,
        StatusCallback="http://exocall.test/status-callback",
        CustomField="order-7",
    )
    passthru, callback = await receiver.at_least(2)  # the hangup ends the flow: one Passthru
    assert (passthru.method, passthru.url.path) == ("GET", "/passthru")
    query = dict(passthru.url.params)
    assert query["token"] == "fake"
    assert (query["CallSid"], query["digits"], query["CustomField"]) == (
        sid,
        f'"{keyed}"',
        "order-7",
    )
    assert query["From"] == number
    assert callback.method == "POST"
    log = (await exotel.get("/_simulator/log")).json()
    assert [e["status"] for e in log if e["path"] == "/passthru"] == [200]


@pytest.mark.parametrize(
    "config",
    [
        SimulatorConfig(
            callback_delay=0, flows={"926": ["gather", "passthru"]}, passthru_url="http://x/p"
        )
    ],
)
async def test_a_call_not_answered_runs_no_flow(
    exotel: httpx.AsyncClient, receiver: CallbackReceiver
) -> None:
    await place(exotel, "09052161112", StatusCallback="http://exocall.test/status-callback")
    # A flow runs before the call ends, and so before its callback: once the callback is in,
    # any Passthru request would be too.
    await receiver.first()
    assert [r.method for r in receiver.requests] == ["POST"]  # busy: the callback alone


# --- The account's credentials, and recording URLs that expire ---------------------------------


async def test_the_api_and_recordings_answer_only_to_the_accounts_credentials(
    exotel: httpx.AsyncClient, simulator: Simulator
) -> None:
    simulator.config.credentials = ("key", "token")
    sid = await place(exotel, "09052161110")
    await settle(simulator)
    url = (await exotel.get(f"{CALLS}/{sid}.json")).json()["Call"]["RecordingUrl"]
    assert (await exotel.get(url)).status_code == 200
    for wrong in (("key", "another-token"), ("another-key", "token")):
        assert (await exotel.get(f"{CALLS}/{sid}.json", auth=wrong)).status_code == 401
        assert (await exotel.get(url, auth=wrong)).status_code == 401
        form = {"From": "09052161110", "CallerId": CALLER_ID, "Url": FLOW_URL}
        refused = await exotel.post(f"{CALLS}/connect.json", data=form, auth=wrong)
        assert refused.status_code == 401


async def test_a_signed_recording_url_lasts_its_validity_and_details_sign_it_afresh(
    exotel: httpx.AsyncClient, simulator: Simulator, receiver: CallbackReceiver
) -> None:
    simulator.config.recording_url_validity = 0.3
    sid = await place(
        exotel,
        "09052161110",
        StatusCallback="https://exocall.test/cb",
        StatusCallbackContentType="application/json",
    )
    url = json.loads((await receiver.first()).content)["RecordingUrl"]
    assert urlsplit(url).path == f"/recordings/{ACCOUNT}/{sid}.wav"
    tampered = url.replace("Signature=", "Signature=0")
    assert (await exotel.get(tampered)).status_code == 403
    assert (await exotel.get(url.split("?")[0])).status_code == 403  # unsigned
    await eventually(lambda: exotel.get(url), what="the URL expired", until=_refused)
    # Details sign it afresh, for as long as the validity then is (long: however slow the
    # machine, the URL is fetched within it).
    simulator.config.recording_url_validity = 300
    fresh = (await exotel.get(f"{CALLS}/{sid}.json")).json()["Call"]["RecordingUrl"]
    assert fresh != url
    assert (await exotel.get(fresh)).status_code == 200


def _refused(response: httpx.Response) -> bool:
    return response.status_code == 403


# --- Outcomes per attempt: what a number's next connects do (docs/simulator.md) ----------------

OUTCOMES_ROUTE = "/_simulator/outcomes"


async def status_of(
    exotel: httpx.AsyncClient, simulator: Simulator, response: httpx.Response
) -> Any:
    """What became of a `Calls/connect`: the call's final status, or the refusal's HTTP status."""
    if response.status_code not in (200, 504):
        return response.status_code
    latest = max(simulator.calls.values(), key=lambda call: call.seq)  # a 504 names no SID
    await settle(simulator)
    status = (await exotel.get(f"{CALLS}/{latest.sid}.json")).json()["Call"]["Status"]
    return (response.status_code, status) if response.status_code == 504 else status


def test_the_outcome_names_are_the_settings_names() -> None:
    assert set(get_args(OutcomeName)) == set(NAMED_OUTCOMES) == set(get_args(SimulatedOutcome))


@pytest.mark.parametrize("told", INDIAN_SPELLINGS)
async def test_a_numbers_next_connects_take_its_outcomes_in_turn_then_its_last_digit(
    exotel: httpx.AsyncClient, simulator: Simulator, told: str
) -> None:
    """Told in any spelling, dialled in each in turn: busy, no-answer, failed, refused for DND,
    refused as invalid, 504 after dialling, completed; then the last digit (0) decides again."""
    planned = ["busy", "no-answer", "failed", "dnd", "invalid", "timeout", "completed", "busy"]
    response = await exotel.post(OUTCOMES_ROUTE, json={"number": told, "outcomes": planned})
    assert response.status_code == 200, response.text
    assert response.json() == {"number": "09052161110", "outcomes": planned}
    seen = []
    for dialled in itertools.islice(itertools.cycle(INDIAN_SPELLINGS), len(planned) + 2):
        seen.append(await status_of(exotel, simulator, await connect(exotel, dialled)))
    assert seen == [
        "busy",
        "no-answer",
        "failed",
        403,
        400,
        (504, "completed"),
        "completed",
        "busy",
        "completed",
        "completed",
    ]
    assert (await exotel.get(OUTCOMES_ROUTE)).json() == []


async def test_what_is_pending_is_shown_replaced_and_cleared(
    exotel: httpx.AsyncClient, simulator: Simulator
) -> None:
    first = {"number": "+91 90521-61110", "outcomes": ["busy", "busy", "completed"]}
    other = {"number": "+14155550100", "outcomes": ["failed"]}
    for plan in (first, other):
        assert (await exotel.post(OUTCOMES_ROUTE, json=plan)).status_code == 200
    await place(exotel, "9052161110")
    assert (await exotel.get(OUTCOMES_ROUTE)).json() == [
        {"number": "09052161110", "outcomes": ["busy", "completed"]},
        other,
    ]
    # Told again, a number's plan is replaced, not added to.
    replaced = await exotel.post(OUTCOMES_ROUTE, json=first | {"outcomes": ["no-answer"]})
    assert replaced.json() == {"number": "09052161110", "outcomes": ["no-answer"]}
    assert len((await exotel.get(OUTCOMES_ROUTE)).json()) == 2
    assert (await exotel.delete(OUTCOMES_ROUTE)).status_code == 204
    assert (await exotel.get(OUTCOMES_ROUTE)).json() == []
    assert await status_of(exotel, simulator, await connect(exotel, "09052161112")) == "busy"


async def test_a_request_refused_before_dialling_takes_no_outcome(
    exotel: httpx.AsyncClient, simulator: Simulator
) -> None:
    await exotel.post(OUTCOMES_ROUTE, json={"number": "09052161110", "outcomes": ["busy"]})
    assert (await connect(exotel, "09052161110", CallerId="")).status_code == 400
    assert (await connect(exotel, "09052161110", Url="")).status_code == 400
    assert (await exotel.get(OUTCOMES_ROUTE)).json()[0]["outcomes"] == ["busy"]
    assert await status_of(exotel, simulator, await connect(exotel, "09052161110")) == "busy"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"number": "09052161110", "outcomes": ["busy", "ringing"]}, "outcomes.1"),
        ({"number": "09052161110", "outcomes": []}, "outcomes"),
        ({"number": "09052161110", "outcomes": "busy"}, "outcomes"),
        ({"outcomes": ["busy"]}, "number"),
        ({"number": "", "outcomes": ["busy"]}, "number"),
    ],
)
async def test_an_outcome_it_does_not_know_is_refused_422_as_a_rest_exception(
    exotel: httpx.AsyncClient, simulator: Simulator, body: dict[str, Any], named: str
) -> None:
    response = await exotel.post(OUTCOMES_ROUTE, json=body)
    assert response.status_code == 422
    (error,) = response.json().values()
    assert (error["Status"], error["Code"]) == (422, None)
    assert error["Message"].startswith(f"Invalid parameters: {named}: ")
    assert simulator.planned == {}
    if "ringing" in body["outcomes"]:
        assert "'completed', 'busy', 'no-answer'" in error["Message"]


async def test_a_recording_fault_out_of_range_is_refused_the_same_way(
    exotel: httpx.AsyncClient,
) -> None:
    response = await exotel.post("/_simulator/recording-faults", json={"status": 200})
    assert response.status_code == 422
    assert response.json()["RestException"]["Message"].startswith("Invalid parameters: status: ")


@pytest.mark.parametrize(
    "config",
    [SimulatorConfig(callback_delay=0, outcomes={"+91 90521 61110": ["no-answer", "dnd"]})],
)
async def test_outcomes_can_be_planned_from_the_start(
    exotel: httpx.AsyncClient, simulator: Simulator
) -> None:
    seen = [await status_of(exotel, simulator, await connect(exotel, "09052161110")) for _ in "abc"]
    assert seen == ["no-answer", 403, "completed"]


def test_a_plan_from_the_start_with_an_unknown_outcome_is_refused() -> None:
    with pytest.raises(ValueError, match="outcomes"):
        Simulator(SimulatorConfig(outcomes={"09052161110": ["ringing"]}))


async def test_in_serve_simulator_outcomes_plan_exocalls_own_calls(db_url: str) -> None:
    """`make run` with SIMULATOR_OUTCOMES: exocall's calls to the number take them in turn."""
    planned = json.dumps({"+91 90521 61110": ["dnd"]})
    settings = simulated(db_url, simulator_outcomes=planned, simulator_callback_delay_seconds=0)
    async with serving(create_app(settings)) as api:
        pending = (await api.get(OUTCOMES_ROUTE)).json()
        assert pending == [{"number": "09052161110", "outcomes": ["dnd"]}]
        refused = await api.post("/calls", json=place_body("+919052161110"))
        assert refused.status_code == 422, refused.text
        placed = await api.post("/calls", json=place_body("+919052161110"))
        assert placed.status_code == 201, placed.text
        log = (await api.get("/_simulator/log")).json()
        assert [e["status"] for e in log if "/Calls/connect" in e["path"]] == [403, 200]
        assert (await api.get(OUTCOMES_ROUTE)).json() == []


# --- Price: filled in some time after the call ends -------------------------------------------


@pytest.mark.parametrize(
    ("duration", "price"), [(0, "0.000"), (1, "0.600"), (41, "0.600"), (60, "0.600"), (61, "1.200")]
)
def test_price_is_per_started_minute(duration: int, price: str) -> None:
    assert price_of(duration) == price


async def prices(exotel: httpx.AsyncClient, sids: list[str]) -> list[list[str | None]]:
    """Each call's `Price` as single and bulk details give it, in JSON and in XML (where an
    empty element, `<Price/>`, is null)."""
    single = [(await exotel.get(f"{CALLS}/{sid}.json")).json()["Call"]["Price"] for sid in sids]
    single_xml = [xml(await exotel.get(f"{CALLS}/{sid}")).find("Call") for sid in sids]
    query = {"Sid": ",".join(sids), "SortBy": "DateCreated:asc"}
    bulk = [c["Price"] for c in (await exotel.get(f"{CALLS}.json", params=query)).json()["Calls"]]
    bulk_xml = list(xml(await exotel.get(CALLS, params=query)).iter("Call"))
    single_xml_prices = [call.findtext("Price") or None for call in single_xml]
    bulk_xml_prices = [call.findtext("Price") or None for call in bulk_xml]
    return [single, single_xml_prices, bulk, bulk_xml_prices]


async def test_price_is_null_until_its_delay_after_the_end_then_set(
    exotel: httpx.AsyncClient, simulator: Simulator
) -> None:
    connected = (await connect(exotel, "09052161110")).json()["Call"]
    assert connected["Price"] is None
    sids = [connected["Sid"], await place(exotel, "09052161112")]  # completed, busy
    await settle(simulator)
    # The default delay is Exotel's, about five minutes: long past this test's end.
    assert simulator.config.price_delay == 300
    assert await prices(exotel, sids) == [[None, None]] * 4
    simulator.config.price_delay = 0.2
    await eventually(
        lambda: prices(exotel, sids),
        what="Price filled in: 41 s answered, a started minute; busy, nothing",
        until=lambda seen: seen == [["0.600", "0.000"]] * 4,
    )


async def test_in_serve_simulator_price_delay_seconds_is_its_delay(db_url: str) -> None:
    settings = simulated(
        db_url, simulator_price_delay_seconds=0.2, simulator_callback_delay_seconds=0
    )
    async with serving(create_app(settings)) as api:
        placed = await api.post(
            f"{MOUNTED_CALLS}/connect.json", data=CONNECT_FORM, auth=SIMULATOR_CREDENTIALS
        )
        assert placed.json()["Call"]["Price"] is None
        details = f"{MOUNTED_CALLS}/{placed.json()['Call']['Sid']}.json"
        await eventually(
            lambda: api.get(details, auth=SIMULATOR_CREDENTIALS),
            what="the call's Price filled in",
            until=lambda response: response.json()["Call"]["Price"] == "0.600",
        )
