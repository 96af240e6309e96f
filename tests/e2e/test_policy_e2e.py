"""Calls on a policy end to end: `exocall serve` and `exocall simulator`, each a process of its
own on loopback ports, driven over HTTP as a user would. What was dialled is read from the
simulator's own log of the requests it answered (`GET /_simulator/log`) and from the `dial`
table, which the per-number limit counts.

The simulator is told what each number's attempts do in turn (`POST /_simulator/outcomes`), its
calls end a fraction of a second after they are placed, and retries wait a second: each test
lasts seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.models import Dial
from tests.conftest import AUTH, callback_path
from tests.support.eventually import eventually
from tests.support.exotel_double import new_sid
from tests.support.exotel_requests import callback, exotel_clock, multipart
from tests.support.processes import Deployment
from tests.support.subscriber import Inbox, subscriber

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

FINAL = {"completed", "busy", "no-answer", "failed", "canceled", "rejected", "expired"}
FINAL_EVENTS = {"call." + status.replace("-", "_") for status in FINAL}
EVERY_RETRYABLE = ["busy", "no-answer", "failed"]
# Scheduled calls are looked for every 0.1 s rather than every 0.5 s.
FAST_POLL = {"JOBS_POLL_SECONDS": "0.1"}


def national(number: str) -> str:
    """`+919052161110` as Exotel writes it (and the simulator logs it): `09052161110`."""
    return "0" + number.removeprefix("+91")


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


@dataclass
class Exocall:
    """The replicas' APIs and the simulator, over HTTP."""

    apis: list[httpx.AsyncClient]
    simulator: httpx.AsyncClient

    @property
    def api(self) -> httpx.AsyncClient:
        return self.apis[0]

    async def plan(self, number: str, *outcomes: str) -> None:
        """What the number's next `Calls/connect` requests do, in turn."""
        body = {"number": number, "outcomes": list(outcomes)}
        planned = await self.simulator.post("/_simulator/outcomes", json=body)
        assert planned.status_code == 200, planned.text

    async def connects(self, number: str) -> list[dict[str, Any]]:
        """Every `Calls/connect` request the simulator answered for `number`, in order."""
        log = (await self.simulator.get("/_simulator/log")).json()
        return [
            entry
            for entry in log
            if "/Calls/connect" in entry["path"] and entry["from_number"] == national(number)
        ]

    async def place(
        self, number: str, *, replica: int = 0, wait: bool = True, **policy: Any
    ) -> httpx.Response:
        body = {"from": number, "app_id": "926", **policy}
        return await self.apis[replica].post("/calls", json=body, params={"wait": wait})

    async def call(self, ref: str) -> dict[str, Any]:
        response = await self.api.get(f"/calls/{ref}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def until(
        self, call_id: str, what: str, until: Callable[[dict[str, Any]], object]
    ) -> dict[str, Any]:
        return await eventually(lambda: self.call(call_id), what=what, until=until)

    async def ended(self, call_id: str) -> dict[str, Any]:
        return await self.until(call_id, f"call {call_id} final", lambda c: c["status"] in FINAL)

    async def received(self, call_id: str, kind: str) -> list[dict[str, Any]]:
        """What was received about the call of `kind` (`status_callback`, `dispatch`: Exotel's
        answers to its requests), oldest first (`GET /calls/{id}/events`)."""
        response = await self.api.get(f"/calls/{call_id}/events")
        assert response.status_code == 200, response.text
        return [r for r in response.json() if r["kind"] == kind]


@contextlib.asynccontextmanager
async def exocall(
    deployment: Deployment, *simulator_options: str, replicas: int = 1, **env: str
) -> AsyncIterator[Exocall]:
    """The simulator (with `simulator_options`) and `replicas` servers on one database."""
    deployment.env |= FAST_POLL | env
    simulator_url = deployment.start_simulator(*simulator_options)
    urls = [deployment.start_server() for _ in range(replicas)]
    async with contextlib.AsyncExitStack() as stack:
        apis = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30)
            )
            for url in urls
        ]
        simulator = await stack.enter_async_context(
            httpx.AsyncClient(base_url=simulator_url, timeout=30)
        )
        yield Exocall(apis, simulator)


def pushed(inbox: Inbox, call_id: str) -> list[dict[str, Any]]:
    """The events the subscriber received about the call, in the call's order."""
    events = [json.loads(delivery["body"]) for delivery in inbox.received]
    mine = [event for event in events if event["data"]["call"]["id"] == call_id]
    return sorted(mine, key=lambda event: event["data"]["sequence"])


def all_up_to_final(events: Sequence[dict[str, Any]]) -> bool:
    """The final status event arrived, and every event the call had before it."""
    sequences = [event["data"]["sequence"] for event in events]
    finals = [event["data"]["sequence"] for event in events if event["type"] in FINAL_EVENTS]
    return bool(finals) and sequences[: finals[0]] == list(range(1, finals[0] + 1))


async def test_busy_twice_then_completed_is_one_call_of_three_attempts(
    deployment: Deployment,
) -> None:
    number = "+919052161120"
    async with exocall(deployment, "--callback-delay", "0.3") as ex, subscriber() as (inbox, url):
        hook = await ex.api.post("/webhook-endpoints", json={"url": url})
        assert hook.status_code == 201, hook.text
        await ex.plan(number, "busy", "busy", "completed")

        retry = {"max_attempts": 3, "on": ["busy"], "intervals": [1]}
        placed = await ex.place(number, retry=retry)
        assert placed.status_code == 201, placed.text
        call_id = placed.json()["id"]
        call = await ex.ended(call_id)
        events = await eventually(
            lambda: pushed(inbox, call_id),
            what="the call's events up to its final one",
            until=all_up_to_final,
        )
        dialled = await ex.connects(number)
        by_first_sid = await ex.call(call["attempts"][0]["sid"])

    assert call["status"] == "completed"
    attempts = call["attempts"]
    assert [(a["n"], a["status"]) for a in attempts] == [
        (1, "busy"),
        (2, "busy"),
        (3, "completed"),
    ]
    sids = [a["sid"] for a in attempts]
    assert None not in sids
    assert len(set(sids)) == 3
    assert call["sid"] == sids[-1]
    assert all(a["dispatched_at"] and a["ended_at"] for a in attempts)
    # Exactly three requests, one per attempt, each answered with that attempt's SID.
    assert [(entry["status"], entry["sid"]) for entry in dialled] == [(200, sid) for sid in sids]
    assert by_first_sid["id"] == call_id  # found by an earlier attempt's SID too

    types = [event["type"] for event in events if event["type"] != "call.updated"]
    assert types == [
        "call.in_progress",
        "call.scheduled",
        "call.in_progress",
        "call.scheduled",
        "call.in_progress",
        "call.completed",
    ]
    assert all(
        event["data"]["call"]["next_attempt_at"]
        for event in events
        if event["type"] == "call.scheduled"
    )
    (final,) = [event for event in events if event["type"] in FINAL_EVENTS]
    told = final["data"]["call"]["attempts"]
    assert [(a["sid"], a["status"]) for a in told] == [
        (sid, status) for sid, status in zip(sids, ["busy", "busy", "completed"], strict=True)
    ]


async def test_no_attempt_follows_unknown_nor_a_dnd_refusal(deployment: Deployment) -> None:
    timed_out, dnd = "+919052161130", "+919052161140"
    retry = {"max_attempts": 3, "on": EVERY_RETRYABLE, "intervals": [1]}
    # The simulator's own callback for the call it dialled despite its 504 comes after the
    # test: Exotel's word on it is the callback sent below, a status retried on.
    async with exocall(deployment, "--callback-delay", "600") as ex:
        await ex.plan(timed_out, "timeout", "completed")
        await ex.plan(dnd, "dnd", "completed")

        unknown = await ex.place(timed_out, retry=retry)
        assert unknown.status_code == 202, unknown.text
        assert unknown.json()["status"] == "unknown"
        refused = await ex.place(dnd, retry=retry)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "exotel_rejected"

        unknown_id, refused_id = unknown.json()["id"], refused.json()["error"]["call_id"]
        sid = new_sid()
        told = await ex.api.post(
            callback_path(unknown_id), **multipart(callback(sid, "busy", exotel_clock()))
        )
        assert told.status_code == 200, told.text
        resolved = await ex.ended(unknown_id)
        rejected = await ex.ended(refused_id)
        dialled = {number: await ex.connects(number) for number in (timed_out, dnd)}

    # Busy, which its retry names, after `unknown`: the call ends there.
    assert resolved["status"] == "busy"
    assert resolved["next_attempt_at"] is None
    assert [(a["n"], a["sid"], a["status"]) for a in resolved["attempts"]] == [(1, sid, "busy")]
    assert rejected["status"] == "rejected"
    assert rejected["next_attempt_at"] is None
    assert (rejected["error"]["code"], rejected["error"]["exotel_status"]) == (
        "exotel_rejected",
        403,
    )
    assert [(a["n"], a["status"]) for a in rejected["attempts"]] == [(1, "rejected")]
    assert [entry["status"] for entry in dialled[timed_out]] == [504]
    assert [entry["status"] for entry in dialled[dnd]] == [403]


async def test_a_scheduled_call_is_dialled_at_its_time_and_expires_when_it_cannot_be(
    deployment: Deployment, engine: AsyncEngine
) -> None:
    scheduled, limited, windowed = "+919052161150", "+919052161160", "+919052161170"
    async with exocall(deployment, "--callback-delay", "0.3", NUMBER_ATTEMPT_LIMIT="1/60s") as ex:
        # The limited number's one request in the minute.
        first = await ex.place(limited)
        assert first.status_code == 201, first.text

        not_before = later(3)
        waiting, expiring = await asyncio.gather(
            ex.place(scheduled, not_before=not_before.isoformat()),
            # Due with the other, but its number is at its limit until well after it expires.
            ex.place(limited, not_before=not_before.isoformat(), expires_at=later(6).isoformat()),
        )
        for placed in (waiting, expiring):
            assert placed.status_code == 202, placed.text
            assert placed.json()["status"] == "scheduled"
            assert datetime.fromisoformat(placed.json()["next_attempt_at"]) == not_before

        # A window that is shut until after the call expires: it expires at once.
        opens, closes = later(2 * 3600), later(3 * 3600)
        window = {"start": f"{opens:%H:%M}", "end": f"{closes:%H:%M}", "timezone": "UTC"}
        shut = await ex.place(windowed, window=window, expires_at=later(3600).isoformat())
        assert shut.status_code == 202, shut.text
        assert shut.json()["status"] == "expired"

        dialled_call = await ex.ended(waiting.json()["id"])
        expired = await ex.ended(expiring.json()["id"])
        await ex.ended(first.json()["id"])
        dialled = {number: await ex.connects(number) for number in (scheduled, limited, windowed)}
    async with engine.connect() as db:
        dials = (await db.execute(select(Dial.call_id, Dial.sent_at))).all()

    assert dialled_call["status"] == "completed"
    (sent_at,) = [sent_at for call_id, sent_at in dials if str(call_id) == dialled_call["id"]]
    assert sent_at >= not_before
    assert [entry["sid"] for entry in dialled[scheduled]] == [dialled_call["sid"]]

    assert (expired["status"], expired["attempts"], expired["sid"]) == ("expired", [], None)
    assert len(dialled[limited]) == 1  # the first call's
    assert dialled[windowed] == []
    assert {str(call_id) for call_id, _ in dials} == {first.json()["id"], dialled_call["id"]}


# NUMBER_ATTEMPT_LIMIT: one request to a number in any 2 s, so that whenever the number is free
# both replicas race for its next call, and only one may win.
LIMIT, PERIOD = 1, 2.0
# Between a replica's claim (the database's clock, `dial.sent_at`) and the simulator's seeing
# its request: the simulator's log is held to the limit over a window this much shorter.
MARGIN = 1.5
CALLS = 4


def busiest(times: Sequence[float], window: float) -> int:
    """The most `times` in any window [t, t + window) starting at one of them."""
    ordered = sorted(times)
    return max(sum(1 for t in ordered[i:] if t < start + window) for i, start in enumerate(ordered))


async def test_the_per_number_limit_holds_across_two_replicas(
    deployment: Deployment, engine: AsyncEngine
) -> None:
    number = "+919052161180"
    async with (
        exocall(
            deployment,
            "--callback-delay",
            "0.2",
            replicas=2,
            NUMBER_ATTEMPT_LIMIT=f"{LIMIT}/{PERIOD:g}s",
        ) as ex,
        subscriber() as (inbox, url),
    ):
        hook = await ex.api.post("/webhook-endpoints", json={"url": url})
        assert hook.status_code == 201, hook.text
        await ex.plan(number, *["completed"] * CALLS)
        placed = await asyncio.gather(
            *(ex.place(number, replica=n % 2, wait=False) for n in range(CALLS))
        )
        assert [response.status_code for response in placed] == [202] * CALLS
        ids = [response.json()["id"] for response in placed]
        calls = [await ex.ended(call_id) for call_id in ids]
        dialled = await ex.connects(number)
        events = {
            call_id: await eventually(
                functools.partial(pushed, inbox, call_id),
                what=f"call {call_id}'s events up to its final one",
                until=all_up_to_final,
            )
            for call_id in ids
        }
    async with engine.connect() as db:
        dials = (await db.execute(select(Dial.call_id, Dial.n, Dial.sent_at))).all()

    # Every call had its turn, once.
    assert [call["status"] for call in calls] == ["completed"] * CALLS
    assert sorted((str(call_id), n) for call_id, n, _ in dials) == sorted((i, 1) for i in ids)
    assert len(dialled) == CALLS
    # Never more than the limit in any period: as the limit counts, and as the simulator saw.
    sent = [sent_at.timestamp() for _, _, sent_at in dials]
    assert busiest(sent, PERIOD) <= LIMIT, sorted(sent)
    seen = [entry["at"] for entry in dialled]
    assert busiest(seen, PERIOD - MARGIN) <= LIMIT, sorted(seen)
    # Each call that waited for its turn was last told the time the number was free for it:
    # a period after the request before its own.
    in_turn = sorted((sent_at, str(call_id)) for call_id, _, sent_at in dials)
    told = {
        call_id: [
            datetime.fromisoformat(event["data"]["call"]["next_attempt_at"])
            for event in events[call_id]
            if event["type"] == "call.scheduled"
        ]
        for call_id in ids
    }
    assert told[in_turn[0][1]] == []
    for (before, _), (_, call_id) in itertools.pairwise(in_turn):
        assert told[call_id][-1] == before + timedelta(seconds=PERIOD), (call_id, told, in_turn)


async def test_an_opt_out_while_a_retry_waits_ends_the_call(deployment: Deployment) -> None:
    number = "+919052161190"
    interval = 3  # long enough for the opt-out to be in before attempt 2 is due
    async with exocall(deployment, "--callback-delay", "0.3") as ex:
        await ex.plan(number, "busy", "completed")
        retry = {"max_attempts": 3, "on": ["busy"], "intervals": [interval]}
        placed = await ex.place(number, retry=retry)
        assert placed.status_code == 201, placed.text
        call_id = placed.json()["id"]
        waiting = await ex.until(
            call_id, "attempt 2 scheduled", lambda c: c["status"] in FINAL | {"scheduled"}
        )
        assert waiting["status"] == "scheduled", waiting

        opt_out = {"number": national(number), "reason": "asked on the first call"}
        added = await ex.api.post("/opt-outs", json=opt_out)
        assert added.status_code == 201, added.text
        # It came before attempt 2 was claimed: otherwise this test proves nothing.
        assert (await ex.call(call_id))["status"] == "scheduled"

        call = await ex.ended(call_id)
        dialled = await ex.connects(number)

    assert call["status"] == "rejected"
    assert call["error"]["code"] == "number_opted_out"
    assert call["next_attempt_at"] is None
    assert [(a["n"], a["status"]) for a in call["attempts"]] == [(1, "busy")]
    assert len(dialled) == 1


async def test_cancel_in_each_state(deployment: Deployment) -> None:
    later_number, live_number = "+919052161210", "+919052161220"
    # Calls last 2.5 s: the cancel below comes while the first attempt is under way.
    async with exocall(deployment, "--callback-delay", "2.5") as ex:
        waiting = await ex.place(later_number, not_before=later(3600).isoformat())
        assert waiting.status_code == 202, waiting.text
        assert waiting.json()["status"] == "scheduled"
        canceled = await ex.api.post(f"/calls/{waiting.json()['id']}/cancel")
        assert canceled.status_code == 200, canceled.text
        assert canceled.json()["status"] == "canceled"
        assert canceled.json()["next_attempt_at"] is None

        await ex.plan(live_number, "busy", "completed")
        retry = {"max_attempts": 3, "on": ["busy"], "intervals": [1]}
        live = await ex.place(live_number, retry=retry)
        assert live.status_code == 201, live.text
        assert live.json()["status"] == "in-progress"
        call_id = live.json()["id"]
        stopped = await ex.api.post(f"/calls/{call_id}/cancel")
        assert stopped.status_code == 200, stopped.text
        assert stopped.json()["status"] == "in-progress"
        assert stopped.json()["canceled_at"]

        ended = await ex.ended(call_id)
        again = await ex.api.post(f"/calls/{call_id}/cancel")
        twice = await ex.api.post(f"/calls/{waiting.json()['id']}/cancel")
        dialled = {number: await ex.connects(number) for number in (later_number, live_number)}

    # The attempt under way ended as Exotel said, and none followed, though busy is retried on.
    assert ended["status"] == "busy"
    assert ended["next_attempt_at"] is None
    assert [(a["n"], a["status"]) for a in ended["attempts"]] == [(1, "busy")]
    for final in (again, twice):
        assert final.status_code == 409, final.text
        assert final.json()["error"]["code"] == "call_ended"
    assert dialled[later_number] == []
    assert len(dialled[live_number]) == 1


async def test_a_cancel_between_an_attempts_end_and_exotels_answer_to_it(
    deployment: Deployment,
) -> None:
    """Exotel's status callback can come before its answer to the `Calls/connect`: attempt 1
    has ended, busy, and the call waits for attempt 2 while the request that made attempt 1 is
    still open. Nothing is under way: a cancel ends the call at once."""
    number = "+919052161250"
    async with exocall(deployment, "--callback-delay", "0.1", "--response-delay", "2") as ex:
        await ex.plan(number, "busy", "completed")
        retry = {"max_attempts": 3, "on": ["busy"], "intervals": [1]}
        placed = await ex.place(number, retry=retry, wait=False)
        assert placed.status_code == 202, placed.text
        call_id = placed.json()["id"]
        await ex.until(call_id, "attempt 1 ended", lambda c: c["status"] in FINAL | {"scheduled"})
        canceled = await ex.api.post(f"/calls/{call_id}/cancel")
        # Exotel had not answered yet: otherwise this test proves nothing.
        assert await ex.received(call_id, "dispatch") == []
        answered: list[dict[str, Any]] = await eventually(
            lambda: ex.received(call_id, "dispatch"), what="Exotel's answer to attempt 1"
        )
        call = await ex.call(call_id)
        dialled = await ex.connects(number)

    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    assert [(a["attempt"], a["outcome"]) for a in answered] == [(1, "stale")]
    assert (call["status"], call["next_attempt_at"]) == ("canceled", None)
    assert [(a["n"], a["status"]) for a in call["attempts"]] == [(1, "busy")]
    assert call["attempts"][0]["dispatched_at"]  # when Exotel's answer came
    assert len(dialled) == 1


async def test_a_late_callback_of_an_earlier_attempt_moves_nothing(
    deployment: Deployment,
) -> None:
    # The last digit 8: once its plan is used up, the simulator's call completes but its
    # callback is lost, so attempt 2 stays under way for as long as the test looks.
    number = "+919052161238"
    async with exocall(
        deployment, "--callback-delay", "0.3", RECONCILE_FIRST_LOOKUP_SECONDS="600"
    ) as ex:
        await ex.plan(number, "busy")
        retry = {"max_attempts": 2, "on": ["busy"], "intervals": [1]}
        placed = await ex.place(number, retry=retry)
        assert placed.status_code == 201, placed.text
        call_id = placed.json()["id"]
        before = await ex.until(
            call_id,
            "attempt 2 under way",
            lambda c: c["status"] == "in-progress" and len(c["attempts"]) == 2,
        )
        (first,) = await ex.received(call_id, "status_callback")
        assert (first["attempt"], first["status"]) == (1, "busy")

        replayed = await ex.api.post(callback_path(call_id), **multipart(first["payload"]))
        assert replayed.status_code == 200, replayed.text
        callbacks: list[dict[str, Any]] = await eventually(
            lambda: ex.received(call_id, "status_callback"),
            what="the replayed callback kept",
            until=lambda kept: len(kept) == 2,
        )
        after = await ex.call(call_id)

    assert before["attempts"][0]["sid"] == first["sid"] != before["sid"]
    assert (after["status"], after["sid"]) == ("in-progress", before["sid"])
    assert after["attempts"] == before["attempts"]
    # Kept with attempt 1, which already had it.
    assert [(r["attempt"], r["sid"], r["status"], r["outcome"]) for r in callbacks] == [
        (1, first["sid"], "busy", "applied"),
        (1, first["sid"], "busy", "duplicate"),
    ]
