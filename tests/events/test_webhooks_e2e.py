"""Webhooks end to end: real `exocall serve` replicas, the simulator and a subscriber, each a
process of its own, driven over HTTP. Signatures are checked with `standardwebhooks`.

One run goes through what production does to a subscriber: it fails for a while and comes back,
a replica is SIGKILLed with deliveries in flight, the secret is rotated, and at last the
subscriber answers 410. On PostgreSQL three replicas deliver at once.
"""

from __future__ import annotations

import json
import signal
from collections import Counter, defaultdict
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from standardwebhooks.webhooks import Webhook

from app.db.session import create_engine
from tests.conftest import AUTH
from tests.support.eventually import eventually
from tests.support.feed import feed_caught_up
from tests.support.processes import Deployment

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

# The simulator's outcome follows the last digit (app/exotel/simulator.py): completed, busy,
# no-answer, failed, and a completed call whose callback comes twice and then a late answer.
DIGITS = "012347"
CALLS = 24
ENDED = {"completed", "busy", "no-answer", "failed"}


async def test_every_event_reaches_the_subscriber_once_in_order_through_failures_and_kills(
    deployment: Deployment, db_url: str
) -> None:
    replicas = 3
    deployment.env |= {
        "WEBHOOK_RETRY_SCHEDULE": ",".join(["0.5"] * 20),
        "JOBS_POLL_SECONDS": "0.1",
        "WEBHOOK_TIMEOUT_SECONDS": "3",
        # The killed replica's callbacks are lost: its calls are looked up soon after.
        "RECONCILE_INTERVAL_SECONDS": "1",
        "RECONCILE_FIRST_LOOKUP_SECONDS": "1",
        "RECONCILE_RECHECK_SECONDS": "1",
        "RECONCILE_GRACE_SECONDS": "1",
    }
    deployment.start_simulator("--callback-delay", "0.3")
    subscriber_url = deployment.start_subscriber()
    subscriber = httpx.AsyncClient(base_url=subscriber_url, timeout=30)
    servers = [deployment.start_server() for _ in range(replicas)]
    apis = [httpx.AsyncClient(base_url=url, timeout=30, headers=AUTH) for url in servers]
    engine = create_engine(db_url)
    try:
        created = await apis[0].post("/webhook-endpoints", json={"url": f"{subscriber_url}/hook"})
        assert created.status_code == 201, created.text
        endpoint = created.json()
        first_secret = endpoint["secret"]

        # The subscriber is down for a while: every attempt fails.
        await subscriber.post("/answer", json={"status": 503})
        call_ids = []
        for n in range(CALLS):
            body = {"from": f"90521{n:04d}{DIGITS[n % len(DIGITS)]}", "app_id": "926"}
            placed = await apis[n % replicas].post("/calls", json=body, params={"wait": "false"})
            assert placed.status_code == 202, placed.text
            call_ids.append(placed.json()["id"])

        async def some_failed() -> bool:
            return len((await subscriber.get("/received")).json()) >= 10

        await eventually(some_failed, what="the subscriber refusing ten deliveries")

        async def all_sent() -> bool:  # the kill is to cut a delivery, not a dispatch
            calls = [(await apis[0].get(f"/calls/{i}")).json() for i in call_ids]
            return all(call["sid"] for call in calls)

        await eventually(all_sent, what="Exotel accepting every call")
        # Back, but slow: deliveries are in flight for a second each.
        await subscriber.post("/answer", json={"status": 200, "delay": 1})

        # SIGKILL a replica while it holds a delivery whose answer is unrecorded: frozen first
        # (SIGSTOP), it is killed only if it still holds one then, else let go and caught again.
        processes = deployment.processes[-replicas:]
        pids = [process.popen.pid for process in processes]
        caught: list[int] = []
        async with engine.connect() as db:

            async def sending() -> list[int]:
                claims = await db.scalars(
                    text("SELECT claimed_by FROM delivery WHERE state = 'sending'")
                )
                await db.commit()
                # A replica's id is host:pid:random.
                return [int(claim.split(":")[-2]) for claim in claims]

            async def one_is_caught_sending() -> bool:
                if not (holders := await sending()):
                    return False
                victim = processes[pids.index(holders[0])].popen
                victim.send_signal(signal.SIGSTOP)
                if victim.pid in await sending():
                    caught.append(pids.index(victim.pid))
                    return True
                victim.send_signal(signal.SIGCONT)
                return False

            await eventually(one_is_caught_sending, what="a replica frozen while delivering")
        index = caught[0]
        processes[index].popen.send_signal(signal.SIGKILL)
        processes[index].popen.wait()
        await apis.pop(index).aclose()
        await subscriber.post("/answer", json={"status": 200})

        async def where_things_stand() -> dict[str, Any]:
            calls = [(await apis[0].get(f"/calls/{i}")).json() for i in call_ids]
            shown = (await apis[0].get(f"/webhook-endpoints/{endpoint['id']}")).json()
            return {
                "settled": all(map(_settled, calls)) and shown["backlog"] == 0,
                "calls": Counter(map(_stage, calls)),
                "endpoint": shown,
            }

        def all_delivered(seen: dict[str, Any]) -> bool:
            return bool(seen["settled"])

        # The killed replica's claims are taken once its lease lapses.
        await eventually(
            where_things_stand,
            what="every call ended and every event delivered",
            until=all_delivered,
            within=90,
        )

        # Rotation: during the overlap each delivery verifies with the old and the new secret.
        rotated = await apis[0].post(f"/webhook-endpoints/{endpoint['id']}/rotate-secret")
        second_secret = rotated.json()["secret"]
        received_before = len((await subscriber.get("/received")).json())
        last = await apis[0].post("/calls", json={"from": "9052161190", "app_id": "926"})
        call_ids.append(last.json()["id"])
        await eventually(
            where_things_stand, what="the last call's events delivered", until=all_delivered
        )

        # 410: the endpoint is disabled, and says why.
        await subscriber.post("/answer", json={"status": 410})
        gone = await apis[0].post("/calls", json={"from": "9052161191", "app_id": "926"})
        call_ids.append(gone.json()["id"])

        async def disabled() -> bool:
            shown = (await apis[0].get(f"/webhook-endpoints/{endpoint['id']}")).json()
            return shown["enabled"] is False

        await eventually(disabled, what="a 410 disabling the endpoint")
        shown = (await apis[0].get(f"/webhook-endpoints/{endpoint['id']}")).json()
        assert "410" in shown["disabled_reason"]

        received: list[dict[str, Any]] = (await subscriber.get("/received")).json()
        # Every event committed by now, none held back by a transaction still in flight.
        await feed_caught_up(db_url)
        events = await _feed(apis[0])
        attempts = await _attempts(apis[0], endpoint["id"])
    finally:
        await engine.dispose()
        await subscriber.aclose()
        for api in apis:
            await api.aclose()

    # Every event of the calls before the 410 arrived, verified with the secret of its time.
    delivered = [r for r in received if r["answered"] == 200]
    gone_call = call_ids[-1]
    wanted = {e["id"] for e in events if e["data"]["call"]["id"] != gone_call}
    assert {r["headers"]["webhook-id"] for r in delivered} == wanted
    for index, receipt in enumerate(received):
        secrets = [first_secret] if index < received_before else [first_secret, second_secret]
        for secret in secrets:
            assert Webhook(secret).verify(receipt["body"], receipt["headers"])
    after_rotation = received[received_before:]
    assert after_rotation
    assert all(len(r["headers"]["webhook-signature"].split()) == 2 for r in after_rotation)

    # In order per call: a call's events reached the subscriber in their sequence.
    by_call: dict[str, list[int]] = defaultdict(list)
    for receipt in delivered:
        data = json.loads(receipt["body"])["data"]
        by_call[data["call"]["id"]].append(data["sequence"])
    for sequences in by_call.values():
        assert sequences == sorted(sequences)

    # Delivered twice only as a retry: each extra delivery follows a failed attempt.
    failed: Counter[str] = Counter(
        a["event_id"] for a in attempts if a["status_code"] is None or a["status_code"] >= 300
    )
    for event_id, times in Counter(r["headers"]["webhook-id"] for r in delivered).items():
        assert times <= 1 + failed[event_id], event_id
    assert any(a["error"] and a["error"].startswith("interrupted") for a in attempts)


async def test_a_deliverer_process_of_its_own_sends_what_the_api_replicas_leave(
    deployment: Deployment,
) -> None:
    """WEBHOOK_DELIVERY_IN_SERVE=false: the API replica sends nothing; `exocall deliver`
    beside it sends every event, signed, counts them in its /metrics, and on SIGTERM exits
    cleanly."""
    deployment.env |= {"WEBHOOK_DELIVERY_IN_SERVE": "false", "JOBS_POLL_SECONDS": "0.1"}
    deployment.start_simulator("--callback-delay", "0.3")
    subscriber_url = deployment.start_subscriber()
    subscriber = httpx.AsyncClient(base_url=subscriber_url, timeout=30)
    api = httpx.AsyncClient(base_url=deployment.start_server(), timeout=30, headers=AUTH)
    try:
        created = await api.post("/webhook-endpoints", json={"url": f"{subscriber_url}/hook"})
        endpoint = created.json()
        call_ids = []
        for n in range(4):
            body = {"from": f"90522{n:04d}0", "app_id": "926"}
            call_ids.append((await api.post("/calls", json=body)).json()["id"])

        async def ended() -> bool:
            return all([_settled((await api.get(f"/calls/{i}")).json()) for i in call_ids])

        await eventually(ended, what="every call ended and its recording archived")
        # Nothing sent, and all of it owed. (Had the replica sent any, then or later, the
        # deliverer would not have sent exactly what is owed now: below.)
        assert (await subscriber.get("/received")).json() == []
        owed = (await api.get(f"/webhook-endpoints/{endpoint['id']}")).json()["backlog"]
        assert owed > 0

        deliverer = httpx.AsyncClient(base_url=deployment.start_deliverer(), headers=AUTH)

        async def delivered() -> bool:
            shown = (await api.get(f"/webhook-endpoints/{endpoint['id']}")).json()
            return shown["backlog"] == 0

        await eventually(delivered, what="the deliverer sending the backlog")
        received = (await subscriber.get("/received")).json()
        metrics = (await deliverer.get("/metrics")).text
        # Its /metrics is guarded by the API keys, as every replica's is.
        anonymous = await deliverer.get("/metrics", headers={"Authorization": ""})
        await deliverer.aclose()
    finally:
        await subscriber.aclose()
        await api.aclose()
    assert len(received) == owed
    for receipt in received:
        assert Webhook(endpoint["secret"]).verify(receipt["body"], receipt["headers"])
    assert f'exocall_webhook_deliveries_total{{outcome="delivered"}} {owed:.1f}' in metrics
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthenticated"
    deliverer_process = deployment.processes[-1]
    deliverer_process.stop()  # SIGTERM: it shuts down, then exits by the signal it caught
    output = deliverer_process.output()
    assert deliverer_process.popen.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output, output
    assert "Traceback" not in output, output


def _stage(call: dict[str, Any]) -> str:
    return f"{call['status']}, recording {(call['recording'] or {}).get('status')}"


def _settled(call: dict[str, Any]) -> bool:
    """Ended, and its recording (a later call.updated when archived) no longer pending."""
    return call["status"] in ENDED and (call["recording"] or {}).get("status") != "pending"


async def _feed(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    events, cursor = [], None
    while True:
        page = (await api.get("/events", params={"after": cursor} if cursor else {})).json()
        events += page["items"]
        if not page["items"]:
            return events
        cursor = page["next_cursor"]


async def _attempts(api: httpx.AsyncClient, endpoint_id: str) -> list[dict[str, Any]]:
    attempts, cursor = [], None
    while True:
        params = {"limit": 200} | ({"cursor": cursor} if cursor else {})
        page = (await api.get(f"/webhook-endpoints/{endpoint_id}/attempts", params=params)).json()
        attempts += page["items"]
        if page["next_cursor"] is None:
            return attempts
        cursor = page["next_cursor"]
