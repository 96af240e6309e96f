"""End to end, as a user would: the real `exocall serve` and `exocall simulator` processes on
loopback ports, driven over HTTP, on every database backend.

The simulator's outcome follows the last digit of the number dialled (app/exotel/simulator.py):
each outcome is placed once and followed to where the contract says it ends.
"""

from __future__ import annotations

import base64
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.conftest import (
    AUTH,
    FAKE_API_KEY,
    FAKE_API_TOKEN,
    FAKE_CALLBACK_SECRET,
    FAKE_INTERNAL_API_KEY,
    callback_path,
)
from tests.conftest import FAKE_CALLER_ID as CALLER_ID
from tests.support.eventually import eventually
from tests.support.feed import feed_items
from tests.support.processes import Deployment

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


def number(digit: str) -> str:
    """An Indian mobile in the 0-prefixed form Exotel documents; `digit` picks the outcome."""
    return f"0905216111{digit}"


@dataclass(frozen=True)
class Urls:
    api_url: str
    simulator_url: str


StartExocall = Callable[..., Urls]


@pytest.fixture
def start_exocall(deployment: Deployment) -> StartExocall:
    """Starts the simulator (with the given options) and one server against it."""

    def start(*simulator_options: str) -> Urls:
        simulator_url = deployment.start_simulator(*simulator_options)
        return Urls(deployment.start_server(), simulator_url)

    return start


async def place(api: httpx.AsyncClient, digit: str) -> httpx.Response:
    return await api.post("/calls", json={"from": number(digit), "app_id": "926"})


async def get_call(api: httpx.AsyncClient, ref: str) -> dict[str, Any]:
    response = await api.get(f"/calls/{ref}")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def get_events(api: httpx.AsyncClient, ref: str) -> list[dict[str, Any]]:
    response = await api.get(f"/calls/{ref}/events")
    assert response.status_code == 200, response.text
    return list(response.json())


async def wait_for_statuses(
    api: httpx.AsyncClient, expected: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Poll `GET /calls/{id}` until every call has its expected status; the calls, by id."""

    async def calls() -> dict[str, dict[str, Any]]:
        return {call_id: await get_call(api, call_id) for call_id in expected}

    def statuses(calls: dict[str, dict[str, Any]]) -> dict[str, str]:
        return {call_id: call["status"] for call_id, call in calls.items()}

    return await eventually(
        calls, what=f"the calls {expected}", until=lambda c: statuses(c) == expected
    )


async def wait_for_events(api: httpx.AsyncClient, call_id: str, count: int) -> list[dict[str, Any]]:
    return await eventually(
        lambda: get_events(api, call_id),
        what=f"{count} callbacks of call {call_id}",
        until=lambda events: len(events) >= count,
    )


ACCEPTED = {"0": "completed", "2": "busy", "3": "no-answer", "4": "failed", "7": "completed"}
REFUSED = {
    "5": (403, f"Call to [{number('5')}] cannot be made because of TRAI NDNC regulations"),
    "6": (400, "Invalid Call Parameters: 'From' is not a valid number"),
}


async def test_every_simulated_outcome_over_real_http(
    start_exocall: StartExocall, db_url: str
) -> None:
    exocall = start_exocall("--callback-delay", "0.3")
    async with httpx.AsyncClient(base_url=exocall.api_url, timeout=30, headers=AUTH) as api:
        answers = {digit: await place(api, digit) for digit in "023456789"}

        # The immediate answers.
        for digit in [*ACCEPTED, "8"]:
            answer = answers[digit]
            assert answer.status_code == 201, (digit, answer.text)
            call = answer.json()
            assert call["sid"], digit
            assert call["status"] == "in-progress", digit
            assert call["from"] == f"+91905216111{digit}"
            assert (call["app_id"], call["caller_id"]) == ("926", CALLER_ID)
        for digit, (exotel_status, message) in REFUSED.items():
            answer = answers[digit]
            assert answer.status_code == 422, (digit, answer.text)
            error = answer.json()["error"]
            assert error["code"] == "exotel_rejected"
            assert error["message"] == message
            stored = await get_call(api, error["call_id"])
            assert stored["status"] == "rejected"
            assert stored["sid"] is None
            assert stored["error"]["code"] == "exotel_rejected"
            assert stored["error"]["exotel_status"] == exotel_status
            # How it became `rejected`: Exotel's answer, kept as it came.
            (refusal,) = await get_events(api, error["call_id"])
            assert (refusal["kind"], refusal["outcome"]) == ("dispatch", "applied")
            assert refusal["payload"]["Status"] == exotel_status
            assert refusal["problem"] == message
        unknown = answers["9"]
        assert unknown.status_code == 202, unknown.text
        assert unknown.json()["status"] == "unknown"
        assert unknown.json()["sid"] is None
        # (Its callback, 0.3 s later, may come before or after.)
        received_9 = await get_events(api, unknown.json()["id"])
        (gateway_timeout,) = [e for e in received_9 if e["kind"] == "dispatch"]
        assert (gateway_timeout["payload"]["Status"], gateway_timeout["problem"]) == (
            504,
            "Gateway Timeout",
        )

        # The status callbacks move each accepted call to its end; the one for 9 tells us the
        # call Exotel dialled despite its 504, which resolves `unknown`.
        ids = {digit: answers[digit].json()["id"] for digit in [*ACCEPTED, "8", "9"]}
        expected = {ids[digit]: status for digit, status in ACCEPTED.items()}
        expected[ids["9"]] = "completed"
        final = await wait_for_statuses(api, expected)
        # Exotel's answer to its Calls/connect, and its three callbacks.
        events_7 = await wait_for_events(api, ids["7"], count=4)

        completed = final[ids["0"]]
        # The simulator's own recording, which the archive keeps.
        assert "/recordings/" in completed["recording_url"]
        assert completed["recording"]["status"] in ("pending", "archived")
        assert completed["sid"] == answers["0"].json()["sid"]
        # Every way its status was learnt: Exotel's answer to Calls/connect (usually first,
        # unless its callback beat it), then the callback.
        learnt = {e["kind"]: e for e in await get_events(api, ids["0"])}
        assert sorted(learnt) == ["dispatch", "status_callback"]
        assert learnt["dispatch"]["payload"]["Sid"] == completed["sid"]
        assert learnt["dispatch"]["status"] == "in-progress"
        assert learnt["status_callback"]["outcome"] == "applied"

        # 7: the terminal callback twice, then a late `answered` event: the call stays
        # completed, and learns when the customer answered (docs/simulator.md).
        events_7 = [e for e in events_7 if e["kind"] == "status_callback"]
        assert [(e["status"], e["event_type"], e["outcome"]) for e in events_7] == [
            ("completed", None, "applied"),
            ("completed", None, "duplicate"),
            ("in-progress", "answered", "applied"),
        ]
        assert [e["id"] for e in events_7] == sorted(e["id"] for e in events_7)
        assert all(e["payload"]["CallSid"] == final[ids["7"]]["sid"] for e in events_7)
        call_7 = await get_call(api, ids["7"])
        assert call_7["status"] == "completed"
        assert call_7["answered_at"] is not None
        feed_7 = await feed_items(api, db_url, call_id=ids["7"])
        told_answered = next(e for e in feed_7 if e["data"]["call"]["answered_at"])
        assert told_answered["type"] == "call.updated"  # a final call's news: docs/events.md

        # 9 got its SID from the callback, and Exotel was not asked again.
        assert final[ids["9"]]["sid"]

        # 8: its callback is lost, so it stays in progress (until reconciliation exists).
        lost = await get_call(api, ids["8"])
        assert lost["status"] == "in-progress"
        assert [e["kind"] for e in await get_events(api, ids["8"])] == ["dispatch"]

        # Found by Exotel's SID; listed by status.
        by_sid = await get_call(api, final[ids["2"]]["sid"])
        assert by_sid["id"] == ids["2"]
        busy = await api.get("/calls", params={"status": "busy"})
        assert busy.status_code == 200, busy.text
        assert [call["id"] for call in busy.json()["items"]] == [ids["2"]]

    # Every number was asked for exactly once: nothing is retried, not even the 504.
    async with httpx.AsyncClient(base_url=exocall.simulator_url, timeout=30) as simulator:
        log = (await simulator.get("/_simulator/log")).json()
    dialled = Counter(
        entry["from_number"] for entry in log if entry["path"].endswith("/Calls/connect.json")
    )
    assert dialled == Counter(number(digit) for digit in "023456789")


async def test_a_callback_that_beats_the_connect_response(start_exocall: StartExocall) -> None:
    """Exotel's status callback can arrive before its answer to Calls/connect does."""
    exocall = start_exocall("--response-delay", "1.0", "--callback-delay", "0.1")
    async with httpx.AsyncClient(base_url=exocall.api_url, timeout=30, headers=AUTH) as api:
        answer = await place(api, "0")
        assert answer.status_code == 201, answer.text
        placed = answer.json()
        # The callback was stored before Exotel's answer was: the call is over when it is
        # answered, and the late answer's `in-progress` did not move it back.
        assert placed["sid"]
        assert placed["status"] == "completed"
        assert placed["recording_url"]
        event, answer = await get_events(api, placed["id"])
        assert (event["kind"], event["status"], event["outcome"]) == (
            "status_callback",
            "completed",
            "applied",
        )
        assert event["payload"]["CallSid"] == placed["sid"]
        # Exotel's answer is kept too: its `in-progress` came after the end, and is stale.
        assert (answer["kind"], answer["status"], answer["outcome"]) == (
            "dispatch",
            "in-progress",
            "stale",
        )
        received, dispatched = event["received_at"], placed["dispatched_at"]
        assert datetime.fromisoformat(received) < datetime.fromisoformat(dispatched)


async def test_the_logs_of_a_full_run_leak_nothing(
    start_exocall: StartExocall, deployment: Deployment
) -> None:
    """Placing, callbacks and errors, then every line both processes logged: no credential, no
    callback token, no phone number unmasked."""
    exocall = start_exocall("--callback-delay", "0.2")
    async with httpx.AsyncClient(base_url=exocall.api_url, timeout=30, headers=AUTH) as api:
        placed = [await place(api, digit) for digit in "0592"]
        ids = [r.json().get("id") or r.json()["error"]["call_id"] for r in placed]
        await api.post("/calls", json={"from": "09052161110", "app_id": "x"})  # invalid
        await api.get("/calls", params={"from": "+919052161113"})
        await api.get("/calls", headers={"Authorization": "Bearer not-the-key"})
        await api.post(callback_path(ids[0]).replace("token=", "token=forged"), data={})
        await wait_for_statuses(api, {ids[0]: "completed", ids[3]: "busy"})

    logs = deployment.outputs()
    secrets = [FAKE_API_KEY, FAKE_API_TOKEN, FAKE_CALLBACK_SECRET, FAKE_INTERNAL_API_KEY]
    secrets += [base64.b64encode(f"{FAKE_API_KEY}:{FAKE_API_TOKEN}".encode()).decode()]
    secrets += [callback_path(call_id).split("token=")[1] for call_id in ids]
    assert "POST /status-callback" in logs  # the log did record the callbacks
    assert [secret for secret in secrets if secret in logs] == []
    # Every number masked. (Digit runs inside SIDs and ids are not numbers: hence the bounds.)
    assert re.findall(r"(?<![\w*+-])\+?\d{10,15}(?![\w-])", logs) == []
    assert "+91******1110" in logs or "0******1110" in logs
