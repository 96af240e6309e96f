"""Webhook endpoints and delivery, against a real subscriber on a loopback port. Every signature
is checked with the `standardwebhooks` package, a verifier nobody here wrote."""

from __future__ import annotations

import asyncio
import importlib.util
import ipaddress
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import pytest
import uvicorn
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.config import Settings
from app.db.clock import db_now
from app.db.models import Delivery, DeliveryAttempt, DeliveryState, WebhookEndpoint
from app.db.session import create_engine
from app.events.delivery import Answer, Claimed, claim, record, release, retry_policy
from app.events.targets import Resolver, TargetPolicy, TargetRefused, guarded_session
from tests.conftest import callback_path, make_settings, serving
from tests.support.eventually import eventually
from tests.support.exotel_double import ExotelDouble
from tests.support.exotel_requests import callback, multipart, place
from tests.support.feed import feed_items
from tests.support.processes import free_ports
from tests.support.subscriber import Inbox, subscriber
from tests.support.webhooks import FAST, app_with

pytestmark = pytest.mark.anyio

RETRIES = retry_policy([0])  # due again at once


@pytest.fixture
async def hooks() -> AsyncIterator[tuple[Inbox, str]]:
    async with subscriber() as served:
        yield served


@pytest.fixture
async def client(db_url: str, exotel: ExotelDouble) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(app_with(db_url, exotel)) as c:
        yield c


async def register(client: httpx.AsyncClient, url: str, **fields: Any) -> dict[str, Any]:
    response = await client.post("/webhook-endpoints", json={"url": url} | fields)
    assert response.status_code == 201, response.text
    return dict(response.json())


def verified(delivery: dict[str, Any], secret: str) -> dict[str, Any]:
    payload = Webhook(secret).verify(delivery["body"], delivery["headers"])
    assert isinstance(payload, dict)
    return payload


async def complete(
    client: httpx.AsyncClient, exotel: ExotelDouble, status: str = "completed"
) -> str:
    call = await place(client, exotel)
    fields = callback(call["sid"], status)
    response = await client.post(callback_path(call["id"]), **multipart(fields))
    assert response.status_code == 200
    return str(call["id"])


async def test_each_event_is_delivered_signed_exactly_as_the_feed_has_it(
    client: httpx.AsyncClient, exotel: ExotelDouble, hooks: tuple[Inbox, str], db_url: str
) -> None:
    inbox, url = hooks
    endpoint = await register(client, url, description="orders")
    assert endpoint["secret"].startswith("whsec_")
    assert endpoint["enabled"] is True
    assert endpoint["event_types"] is None

    call_id = await complete(client, exotel)
    await received(inbox, 2)

    events = await feed_items(client, db_url, call_id=call_id)
    for delivery, event in zip(inbox.received, events, strict=True):
        assert verified(delivery, endpoint["secret"]) == event
        assert delivery["headers"]["webhook-id"] == event["id"]
        assert delivery["headers"]["content-type"] == "application/json"
        assert json.loads(delivery["body"]) == event
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 44).verify(inbox.received[0]["body"], inbox.received[0]["headers"])

    await endpoint_shows(client, endpoint["id"], "backlog", 0)  # the answers recorded
    assert await _get(client, endpoint["id"], "last_success_at") is not None
    shown = (await client.get(f"/webhook-endpoints/{endpoint['id']}")).json()
    assert shown["backlog"] == 0
    assert shown["failing_since"] is None
    assert "secret" not in shown


async def test_what_this_process_writes_is_delivered_without_waiting_for_the_poll(
    db_url: str, exotel: ExotelDouble, hooks: tuple[Inbox, str]
) -> None:
    """The deliverer looks for work every JOBS_POLL_SECONDS; the events of the calls this
    process dispatches, and of the callbacks it stores, are sent at once all the same."""
    inbox, url = hooks
    # A poll far past the test's deadline: only a wake-up delivers in time.
    async with serving(app_with(db_url, exotel, jobs_poll_seconds=3600)) as client:
        await register(client, url)
        call = await place(client, exotel)  # dispatched here: `call.in_progress`
        await received(inbox, 1)
        fields = callback(call["sid"], "completed")
        response = await client.post(callback_path(call["id"]), **multipart(fields))
        assert response.status_code == 200
        await received(inbox, 2)
    types = [json.loads(delivery["body"])["type"] for delivery in inbox.received]
    assert types == ["call.in_progress", "call.completed"]


async def _get(client: httpx.AsyncClient, endpoint_id: str, field: str) -> Any:
    return (await client.get(f"/webhook-endpoints/{endpoint_id}")).json()[field]


async def endpoint_shows(
    client: httpx.AsyncClient, endpoint_id: str, field: str, value: Any
) -> None:
    """Until the endpoint shows `field` as `value`."""
    await eventually(
        lambda: _get(client, endpoint_id, field),
        what=f"the endpoint's {field} {value!r}",
        until=lambda shown: shown == value,
    )


async def received(inbox: Inbox, count: int, *, at_least: bool = False) -> None:
    """Until the subscriber has answered `count` deliveries (or more, `at_least`)."""
    await eventually(
        lambda: len(inbox.received),
        what=f"{'at least ' if at_least else ''}{count} deliveries received",
        until=lambda n: n >= count if at_least else n == count,
    )


async def test_a_failing_subscriber_gets_every_event_in_order_per_call_once_it_is_back(
    client: httpx.AsyncClient, exotel: ExotelDouble, hooks: tuple[Inbox, str], db_url: str
) -> None:
    inbox, url = hooks
    endpoint = await register(client, url)
    inbox.status = 503
    calls = [await complete(client, exotel, status) for status in ("completed", "busy", "failed")]
    await received(inbox, 6, at_least=True)
    failing = (await client.get(f"/webhook-endpoints/{endpoint['id']}")).json()
    assert failing["failing_since"] is not None
    assert failing["backlog"] == 6
    inbox.status = 200
    await endpoint_shows(client, endpoint["id"], "backlog", 0)

    delivered = [verified(d, endpoint["secret"]) for d in inbox.received if d["answered"] == 200]
    assert sorted(e["id"] for e in delivered) == sorted(
        e["id"] for e in await feed_items(client, db_url)
    )
    for call_id in calls:
        # A call's later event waits until the earlier one is delivered: never out of order.
        sent = [
            json.loads(d["body"])["data"]["sequence"]
            for d in inbox.received
            if json.loads(d["body"])["data"]["call"]["id"] == call_id
        ]
        assert sent == sorted(sent)
    assert (await client.get(f"/webhook-endpoints/{endpoint['id']}")).json()[
        "failing_since"
    ] is None

    attempts = (await client.get(f"/webhook-endpoints/{endpoint['id']}/attempts")).json()["items"]
    assert {a["status_code"] for a in attempts} == {200, 503}
    failed = next(a for a in attempts if a["status_code"] == 503)
    assert failed["response_body"] == "answered 503"
    assert failed["error"] == "answered 503"
    assert failed["latency_ms"] >= 0


async def test_410_disables_the_endpoint_and_nothing_more_is_sent(
    client: httpx.AsyncClient,
    exotel: ExotelDouble,
    hooks: tuple[Inbox, str],
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    inbox, url = hooks
    endpoint = await register(client, url, event_types=["call.completed"])
    inbox.status = 410
    await complete(client, exotel)
    await endpoint_shows(client, endpoint["id"], "enabled", False)
    assert "410" in await _get(client, endpoint["id"], "disabled_reason")

    await complete(client, exotel)
    # Nothing is owed a disabled endpoint: the second call's events made no delivery for it.
    async with sessionmaker() as session:
        owed = await session.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.endpoint_id == uuid.UUID(endpoint["id"]))
        )
    assert owed == 1
    assert len(inbox.received) == 1  # only call.completed is subscribed to, and only once

    inbox.status = 200
    enabled = await client.patch(f"/webhook-endpoints/{endpoint['id']}", json={"enabled": True})
    assert enabled.json()["disabled_reason"] is None
    recovered = await client.post(
        f"/webhook-endpoints/{endpoint['id']}/recover", json={"since": "2000-01-01T00:00:00Z"}
    )
    assert recovered.status_code == 202
    assert recovered.json() == {"queued": 2}
    await received(inbox, 3)
    assert {json.loads(d["body"])["type"] for d in inbox.received} == {"call.completed"}


async def test_after_rotation_both_secrets_verify_until_the_overlap_ends(
    client: httpx.AsyncClient, exotel: ExotelDouble, hooks: tuple[Inbox, str]
) -> None:
    inbox, url = hooks
    old = await register(client, url)
    rotated = await client.post(f"/webhook-endpoints/{old['id']}/rotate-secret")
    assert rotated.status_code == 200
    new = rotated.json()["secret"]
    assert new != old["secret"]

    await complete(client, exotel)
    await received(inbox, 2)
    for delivery in inbox.received:
        assert len(delivery["headers"]["webhook-signature"].split(" ")) == 2
        verified(delivery, old["secret"])
        verified(delivery, new)


async def test_without_overlap_only_the_new_secret_signs(
    db_url: str, exotel: ExotelDouble, hooks: tuple[Inbox, str]
) -> None:
    inbox, url = hooks
    async with serving(app_with(db_url, exotel, webhook_secret_overlap_seconds=0)) as client:
        old = await register(client, url)
        new = (await client.post(f"/webhook-endpoints/{old['id']}/rotate-secret")).json()["secret"]
        await complete(client, exotel)
        await received(inbox, 2)
    verified(inbox.received[0], new)
    with pytest.raises(WebhookVerificationError):
        verified(inbox.received[0], old["secret"])


async def test_a_redirect_or_a_timeout_is_a_failure_and_no_redirect_is_followed(
    client: httpx.AsyncClient, exotel: ExotelDouble, hooks: tuple[Inbox, str]
) -> None:
    inbox, url = hooks
    endpoint = await register(client, url, event_types=["call.completed"])
    inbox.status, inbox.headers = 307, {"location": url + "?again"}
    await complete(client, exotel)
    await received(inbox, 2, at_least=True)
    assert all("again" not in d["headers"].get("host", "") for d in inbox.received)
    inbox.status, inbox.headers, inbox.delay = 200, {}, 3  # past WEBHOOK_TIMEOUT_SECONDS (2)
    await eventually(
        lambda: _attempt_errors(client, endpoint["id"], "no answer within 2s"),
        what="an attempt that timed out",
    )
    inbox.delay = 0
    await endpoint_shows(client, endpoint["id"], "backlog", 0)
    attempts = (await client.get(f"/webhook-endpoints/{endpoint['id']}/attempts")).json()["items"]
    assert any(a["status_code"] == 307 and "not followed" in a["error"] for a in attempts)


async def _attempt_errors(client: httpx.AsyncClient, endpoint_id: str, error: str) -> bool:
    attempts = (await client.get(f"/webhook-endpoints/{endpoint_id}/attempts")).json()["items"]
    return any(a["error"] == error for a in attempts)


async def test_a_slow_endpoint_holds_back_no_other(
    db_url: str, exotel: ExotelDouble, hooks: tuple[Inbox, str]
) -> None:
    fast_inbox, fast_url = hooks
    async with (
        subscriber() as (slow_inbox, slow_url),
        serving(
            app_with(
                db_url,
                exotel,
                webhook_concurrency=4,
                webhook_endpoint_concurrency=2,
                webhook_timeout_seconds=60,  # the slow one is held, not timed out
            )
        ) as client,
    ):
        slow_inbox.answering.clear()  # the slow endpoint answers nothing until told
        await register(client, slow_url)
        await register(client, fast_url)
        for _ in range(6):
            await complete(client, exotel)
        # 12 events each: the fast endpoint has all of its own while the slow one holds two.
        await eventually(lambda: slow_inbox.in_flight == 2, what="the slow endpoint holding two")
        await received(fast_inbox, 12)
        assert (slow_inbox.received, slow_inbox.in_flight) == ([], 2)
        slow_inbox.answering.set()
        await received(slow_inbox, 12)
    assert slow_inbox.most_at_once == 2  # WEBHOOK_ENDPOINT_CONCURRENCY, and no more


async def test_one_endpoints_backlog_leaves_another_endpoint_its_turns(
    db_url: str, exotel: ExotelDouble, hooks: tuple[Inbox, str]
) -> None:
    """An endpoint with an old backlog whose slots free up every turn does not fill the turns:
    an endpoint with something due later is served while that backlog is still delivered."""
    behind, behind_url = hooks
    async with (
        subscriber() as (later, later_url),
        serving(
            app_with(db_url, exotel, webhook_concurrency=4, webhook_endpoint_concurrency=2)
        ) as client,
    ):
        behind.delay = 0.02  # its two slots free up together, every turn
        endpoint = await register(client, behind_url)
        await client.patch(f"/webhook-endpoints/{endpoint['id']}", json={"enabled": False})
        for _ in range(40):  # 80 events it is not sent
            await complete(client, exotel)
        await register(client, later_url)
        await client.patch(f"/webhook-endpoints/{endpoint['id']}", json={"enabled": True})
        recovered = await client.post(
            f"/webhook-endpoints/{endpoint['id']}/recover", json={"since": "2000-01-01T00:00:00Z"}
        )
        assert recovered.json() == {"queued": 80}  # all due now, before what comes next
        await complete(client, exotel)
        await received(later, 2)
        # Of 82: served beside the backlog, not after it (counted when the later one had both).
        served_before = [d for d in behind.received if d["order"] < later.received[-1]["order"]]
        assert len(served_before) < 60


async def test_a_retry_after_that_is_no_number_of_seconds_is_ignored(
    client: httpx.AsyncClient, exotel: ExotelDouble, hooks: tuple[Inbox, str]
) -> None:
    inbox, url = hooks
    endpoint = await register(client, url, event_types=["call.completed"])
    inbox.status, inbox.headers = 503, {"Retry-After": "nan"}
    await complete(client, exotel)

    async def failure_recorded() -> bool:
        attempts = await client.get(f"/webhook-endpoints/{endpoint['id']}/attempts")
        return any(a["status_code"] == 503 for a in attempts.json()["items"])

    await eventually(failure_recorded, what="the 503 recorded")
    inbox.status, inbox.headers = 200, {}
    await endpoint_shows(client, endpoint["id"], "backlog", 0)
    assert [d["answered"] for d in inbox.received][-1] == 200


async def test_an_endpoint_failing_for_too_long_is_disabled(
    db_url: str, exotel: ExotelDouble, hooks: tuple[Inbox, str]
) -> None:
    inbox, url = hooks
    async with serving(app_with(db_url, exotel, webhook_disable_after_seconds=0.5)) as client:
        endpoint = await register(client, url)
        inbox.status = 500
        await complete(client, exotel)
        await endpoint_shows(client, endpoint["id"], "enabled", False)
        reason = await _get(client, endpoint["id"], "disabled_reason")
        assert reason.startswith("failing without a success since")


async def test_endpoints_are_managed_through_the_api(
    client: httpx.AsyncClient, hooks: tuple[Inbox, str]
) -> None:
    _, url = hooks
    endpoint = await register(client, url, event_types=["call.busy", "call.busy"])
    assert endpoint["event_types"] == ["call.busy"]
    listed = (await client.get("/webhook-endpoints")).json()
    assert [e["id"] for e in listed] == [endpoint["id"]]
    changed = await client.patch(
        f"/webhook-endpoints/{endpoint['id']}",
        json={"event_types": None, "description": "all of them", "enabled": False},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["event_types"] is None
    assert changed.json()["enabled"] is False
    assert changed.json()["description"] == "all of them"
    assert (await client.delete(f"/webhook-endpoints/{endpoint['id']}")).status_code == 204
    gone = await client.get(f"/webhook-endpoints/{endpoint['id']}")
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "webhook_endpoint_not_found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://127.0.0.1/hook"}, "url"),
        ({"url": "http://127.0.0.1/hook", "event_types": ["call.exploded"]}, "event_types.0"),
        ({"url": "http://127.0.0.1/hook", "event_types": []}, "event_types"),
        ({"url": "http://127.0.0.1/hook", "secret": "mine"}, "secret"),
        ({"url": "http://user:pw@127.0.0.1/hook"}, "url"),
        ({"url": "http://8.8.8.8/hook"}, "url"),  # outside WEBHOOK_ALLOWED_TARGETS
        ({"url": "http://127.0.0.1:0/hook"}, "url"),  # port 0: never a target
        ({"url": "http://no-such-host.invalid/hook"}, "url"),
        ({"url": "http://127.0.0.1/hook", "description": "a\x00b"}, "description"),  # no column
    ],
)
async def test_a_bad_endpoint_is_refused_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/webhook-endpoints", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"] == field


async def test_production_allows_no_target_until_the_operator_names_some() -> None:
    production = TargetPolicy.from_settings(None, production=True)
    with pytest.raises(TargetRefused, match="WEBHOOK_ALLOWED_TARGETS"):
        await production.check_url("http://127.0.0.1/hook")
    allowed = Settings.load(env_file=None, WEBHOOK_ALLOWED_TARGETS="hooks.test,10.1.0.0/16")
    named = TargetPolicy.from_settings(allowed.webhooks.allowed_targets, production=True)
    assert named.refusal("hooks.test", ipaddress.ip_address("93.184.216.34"), 443) is None
    assert named.refusal("other.test", ipaddress.ip_address("10.1.9.9"), 443) is None


# Where a name allowed by name must never lead: this machine, private and shared networks, the
# metadata services, and addresses nobody can connect to.
NOT_PUBLIC = [
    "127.0.0.1",
    "127.1.2.3",
    "::1",
    "10.9.9.9",
    "172.16.0.1",
    "192.168.1.1",
    "fd00::1",
    "100.64.0.1",  # shared (CGNAT)
    "169.254.169.254",  # the metadata service
    "fe80::1",
    "0.0.0.0",  # noqa: S104
    "::",
    "224.0.0.1",
    "ff02::1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",  # documentation
    "2001:db8::1",
    "::ffff:127.0.0.1",  # IPv4 written as IPv6
    "::ffff:169.254.169.254",
    "2002:7f00:1::1",  # 127.0.0.1 in 6to4
    "fec0::1",  # site-local
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, 127.0.0.1 inside
]


@pytest.mark.parametrize("address", NOT_PUBLIC)
async def test_a_host_allowed_by_name_reaches_public_addresses_only(address: str) -> None:
    by_name = TargetPolicy.of(["hooks.test", "*.internal"])
    for host in ("hooks.test", "orders.internal"):
        assert by_name.refusal(host, ipaddress.ip_address(address), 443) is not None
        assert by_name.refusal(host, ipaddress.ip_address("93.184.216.34"), 443) is None
        assert by_name.refusal(host, ipaddress.ip_address("2606:4700::1"), 443) is None


async def test_a_cidr_entry_allows_its_addresses_whatever_name_led_there() -> None:
    policy = TargetPolicy.of(["hooks.test", "127.0.0.0/8", "::1", "10.0.0.0/8", "169.254.0.0/16"])
    for address in ("127.0.0.1", "::1", "10.9.9.9", "169.254.169.254", "::ffff:10.9.9.9"):
        assert policy.refusal("hooks.test", ipaddress.ip_address(address), 443) is None
        assert policy.refusal("other.test", ipaddress.ip_address(address), 443) is None
    assert policy.refusal("hooks.test", ipaddress.ip_address("192.168.1.1"), 443) is not None


def rebinding(name: str, *answers: list[str]) -> Resolver:
    """DNS for `name` answering each of `answers` in turn, then the last one for good."""
    left = list(answers)

    async def resolve(host: str, port: int) -> list[str]:
        assert host == name
        return left[0] if len(left) == 1 else left.pop(0)

    return resolve


async def test_a_name_repointed_at_loopback_is_refused_at_connect(
    hooks: tuple[Inbox, str],
) -> None:
    """A name allowed by name, public when the endpoint was registered, whose DNS answer
    changes to this machine (where the subscriber listens): nothing is sent there."""
    inbox, url = hooks
    resolver = rebinding("hooks.test", ["93.184.216.34"], ["::1", "127.0.0.1"])
    policy = TargetPolicy.of(["hooks.test"], resolver=resolver)
    hook = url.replace("127.0.0.1", "hooks.test")
    await policy.check_url(hook)  # registration: a public address, allowed
    async with guarded_session(policy, limit=1) as http:
        with pytest.raises(aiohttp.ClientConnectorError, match=r"::1 is not in"):
            await http.post(hook, data=b"{}")
    assert inbox.received == []


async def test_an_entry_with_a_port_allows_that_port_only(hooks: tuple[Inbox, str]) -> None:
    inbox, url = hooks
    parts = urlsplit(url)
    (elsewhere,) = free_ports(1)
    other_port = TargetPolicy.of([f"127.0.0.1:{elsewhere}"])
    await other_port.check_url(parts._replace(netloc=f"127.0.0.1:{elsewhere}").geturl())
    with pytest.raises(TargetRefused, match=f"port {parts.port} of 127.0.0.1 is not in"):
        await other_port.check_url(url)
    async with guarded_session(other_port, limit=1) as http:
        with pytest.raises(aiohttp.ClientConnectorError, match=f"port {parts.port} of 127"):
            await http.post(url, data=b"{}")
    assert inbox.received == []
    this_port = TargetPolicy.of([f"[::1]:{elsewhere}", f"127.0.0.1:{parts.port}"])
    async with (
        guarded_session(this_port, limit=1) as http,
        http.post(url, data=b"{}") as response,
    ):
        assert response.status < 300
    assert len(inbox.received) == 1


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:0/hook", "http://[::1]:0/hook", "http://127.0.0.1:99999/hook"]
)
async def test_port_0_or_none_at_all_is_never_a_target(url: str) -> None:
    anywhere = TargetPolicy.of(["0.0.0.0/0", "::/0"])
    with pytest.raises(TargetRefused, match="port"):
        await anywhere.check_url(url)


async def test_the_address_is_checked_again_at_every_connect(hooks: tuple[Inbox, str]) -> None:
    """A host that resolved to an allowed address at registration and resolves to the metadata
    service later (DNS rebinding) is refused at connect: nothing is sent there."""
    inbox, url = hooks
    resolver = rebinding("hooks.test", ["127.0.0.1"], ["169.254.169.254", "127.0.0.1"])
    policy = TargetPolicy.of(["127.0.0.0/8"], resolver=resolver)
    hook = url.replace("127.0.0.1", "hooks.test")
    await policy.check_url(hook)  # registration: resolves to 127.0.0.1, allowed
    async with guarded_session(policy, limit=1) as http:
        with pytest.raises(aiohttp.ClientConnectorError, match=r"169\.254\.169\.254 is not in"):
            await http.post(hook, data=b"{}")
        # An address in the URL itself is checked as a resolved one is.
        literal = TargetPolicy.of(["10.0.0.0/8"])
        async with guarded_session(literal, limit=1) as other:
            with pytest.raises(aiohttp.ClientConnectorError, match=r"127\.0\.0\.1 is not in"):
                await other.post(url, data=b"{}")
    assert inbox.received == []


async def test_one_event_is_redelivered_on_request(
    client: httpx.AsyncClient, exotel: ExotelDouble, hooks: tuple[Inbox, str]
) -> None:
    inbox, url = hooks
    endpoint = await register(client, url, event_types=["call.completed"])
    await complete(client, exotel)
    await endpoint_shows(client, endpoint["id"], "backlog", 0)  # delivered, recorded
    event_id = inbox.received[0]["headers"]["webhook-id"]
    again = await client.post(f"/events/{event_id}/redeliver", json={"endpoint_id": endpoint["id"]})
    assert again.status_code == 202
    assert again.json() == {"queued": 1}
    await received(inbox, 2)
    assert inbox.received[1]["headers"]["webhook-id"] == event_id
    await endpoint_shows(client, endpoint["id"], "backlog", 0)  # the answer recorded
    attempts = (await client.get(f"/webhook-endpoints/{endpoint['id']}/attempts")).json()["items"]
    assert [a["trigger"] for a in attempts] == ["manual", "scheduled"]
    # Without a body: to every enabled endpoint that takes it (once the last is recorded).
    await endpoint_shows(client, endpoint["id"], "backlog", 0)
    assert (await client.post(f"/events/{event_id}/redeliver")).json() == {"queued": 1}
    await received(inbox, 3)


async def test_each_event_is_owed_to_the_enabled_endpoints_that_take_its_type(
    db_url: str, exotel: ExotelDouble
) -> None:
    async with serving(app_with(db_url, exotel, webhook_delivery_in_serve=False)) as client:
        every = await register(client, "http://127.0.0.1:9/every")
        busy = await register(client, "http://127.0.0.1:9/busy", event_types=["call.busy"])
        off = await register(client, "http://127.0.0.1:9/off")
        disabled = await client.patch(f"/webhook-endpoints/{off['id']}", json={"enabled": False})
        assert disabled.status_code == 200
        for status in ("completed", "busy", "busy"):
            await complete(client, exotel, status)
        events = await feed_items(client, db_url)
        types = [event["type"] for event in events]
        assert types.count("call.busy") == 2
        assert "call.completed" in types
        backlogs = [await _get(client, e["id"], "backlog") for e in (every, busy, off)]
        assert backlogs == [len(events), 2, 0]


async def test_an_answer_to_a_claim_given_back_and_taken_again_changes_nothing(
    db_url: str, exotel: ExotelDouble, hooks: tuple[Inbox, str]
) -> None:
    """A replica that stalls past the claim's time-out answers late: its answer is kept as an
    attempt, but the delivery is the new claim's to settle."""
    _, url = hooks
    async with serving(app_with(db_url, exotel, webhook_delivery_in_serve=False)) as client:
        await register(client, url, event_types=["call.completed"])
        await complete(client, exotel)
    settings = make_settings(db_url, **FAST)
    engine = create_engine(db_url)
    ok = Answer(200, None, 5, "ok")
    try:
        async with engine.begin() as db:
            [first] = await claim(db, worker="stalled", limit=8, per_endpoint=8)
        async with engine.begin() as db:
            assert await release(db, [first.delivery_id], retries=RETRIES) == 1
        async with engine.begin() as db:
            [second] = await claim(db, worker="other", limit=8, per_endpoint=8)
        assert (first.delivery_id, first.attempt, second.attempt) == (second.delivery_id, 1, 2)
        async with engine.begin() as db:
            await record(db, [(first, ok)], settings=settings.webhooks, retries=RETRIES)
        async with engine.connect() as db:
            row = (await db.execute(select(Delivery).where(Delivery.id == first.delivery_id))).one()
            assert (row.state, row.claimed_by, row.attempts) == (DeliveryState.SENDING, "other", 2)
        async with engine.begin() as db:
            await record(db, [(second, ok)], settings=settings.webhooks, retries=RETRIES)
        async with engine.connect() as db:
            row = (await db.execute(select(Delivery).where(Delivery.id == first.delivery_id))).one()
            assert (row.state, row.claimed_by) == (DeliveryState.DELIVERED, None)
            attempts = await db.scalar(select(func.count()).select_from(DeliveryAttempt))
            assert attempts == 3  # interrupted, the late answer, the retry's answer
    finally:
        await engine.dispose()


async def test_endpoints_that_are_down_are_tried_a_few_at_a_time_beside_one_that_is_up(
    db_url: str, exotel: ExotelDouble
) -> None:
    """Each endpoint that is down is owed every event: tried at their full share, a few of them
    would take every slot of a replica, and one that is up would wait behind them."""
    async with serving(app_with(db_url, exotel, webhook_delivery_in_serve=False)) as client:
        down = [await register(client, f"http://127.0.0.1:9/{n}") for n in range(2)]
        up = await register(client, "http://127.0.0.1:9/up")
        for _ in range(6):
            await complete(client, exotel)
    engine = create_engine(db_url)
    try:
        async with engine.begin() as db:
            await db.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id.in_([uuid.UUID(e["id"]) for e in down]))
                .values(failing_since=func.now())
            )
        async with engine.begin() as db:
            claimed = await claim(db, worker="w", limit=8, per_endpoint=4)
    finally:
        await engine.dispose()
    counts = {e["id"]: sum(str(one.endpoint_id) == e["id"] for one in claimed) for e in [*down, up]}
    assert counts == {down[0]["id"]: 2, down[1]["id"]: 2, up["id"]: 4}


async def set_endpoint(engine: AsyncEngine, endpoint_id: str, **values: Any) -> None:
    """Write the endpoint's row by hand: its health, as time would have made it."""
    async with engine.begin() as db:
        await db.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == uuid.UUID(endpoint_id))
            .values(**values)
        )


FAILING_FOR_TWO_MINUTES = {"failing_since": func.now() - timedelta(minutes=2)}


async def test_an_endpoint_failing_for_over_a_minute_is_tried_one_delivery_at_a_time(
    db_url: str, exotel: ExotelDouble
) -> None:
    """An endpoint that is down is owed an event of every call: retried each on its own
    schedule, it would cost an attempt a call. Failing for over a minute, it is tried by one
    delivery, then by none until a tenth of the time it has been failing has passed; the
    others wait, their attempts unspent. Once it answers, they all go."""
    down = Answer(None, "ClientConnectorError: refused", 1)
    async with serving(app_with(db_url, exotel, webhook_delivery_in_serve=False)) as client:
        endpoint = await register(client, "http://127.0.0.1:9/down")
        for _ in range(4):
            await complete(client, exotel)
        endpoint_id = uuid.UUID(endpoint["id"])
        settings = make_settings(db_url, **FAST)
        later = retry_policy([600])
        engine = create_engine(db_url)

        async def claimed() -> list[Claimed]:
            async with engine.begin() as db:
                return await claim(db, worker="w", limit=8, per_endpoint=8)

        async def answered(claims: list[Claimed], answer: Answer) -> None:
            async with engine.begin() as db:
                answers = [(one, answer) for one in claims]
                await record(db, answers, settings=settings.webhooks, retries=later)

        try:
            await set_endpoint(engine, endpoint["id"], **FAILING_FOR_TWO_MINUTES)
            [first] = await claimed()
            assert await claimed() == []  # one in flight at a time
            async with engine.connect() as db:
                before = await db_now(db)
            await answered([first], down)
            async with engine.connect() as db:
                after = await db_now(db)
                failing_since, retry_at = (
                    await db.execute(
                        select(WebhookEndpoint.failing_since, WebhookEndpoint.retry_at).where(
                            WebhookEndpoint.id == endpoint_id
                        )
                    )
                ).one()
            assert before + (before - failing_since) / 10 <= retry_at
            assert retry_at <= after + (after - failing_since) / 10
            assert await claimed() == []  # not before retry_at
            assert await _get(client, endpoint["id"], "retry_at") is not None

            await set_endpoint(engine, endpoint["id"], retry_at=func.now())  # retry_at comes
            [second] = await claimed()
            assert second.delivery_id != first.delivery_id  # the first waits for its retry
            async with engine.connect() as db:
                tried = await db.scalars(
                    select(Delivery.id).where(Delivery.attempts > 0).order_by(Delivery.id)
                )
                assert list(tried) == sorted([first.delivery_id, second.delivery_id])
            await answered([second], Answer(200, None, 1, ""))
            assert await _get(client, endpoint["id"], "retry_at") is None
            rest = await claimed()
            assert len(rest) == 3  # the other calls' first events, all at once
        finally:
            await engine.dispose()


async def test_an_endpoint_disabled_for_failing_too_long_has_no_next_try(
    db_url: str, exotel: ExotelDouble
) -> None:
    async with serving(app_with(db_url, exotel, webhook_delivery_in_serve=False)) as client:
        endpoint = await register(client, "http://127.0.0.1:9/down")
        await complete(client, exotel)
        settings = make_settings(db_url, **FAST, webhook_disable_after_seconds=90)
        engine = create_engine(db_url)
        try:
            await set_endpoint(engine, endpoint["id"], **FAILING_FOR_TWO_MINUTES)
            async with engine.begin() as db:
                [probe] = await claim(db, worker="w", limit=8, per_endpoint=8)
            async with engine.begin() as db:
                down = Answer(None, "ClientConnectorError: refused", 1)
                await record(db, [(probe, down)], settings=settings.webhooks, retries=RETRIES)
        finally:
            await engine.dispose()
        shown = (await client.get(f"/webhook-endpoints/{endpoint['id']}")).json()
        assert (shown["enabled"], shown["retry_at"]) == (False, None)


async def test_a_failing_endpoint_given_a_new_url_starts_with_a_clean_record(
    db_url: str, exotel: ExotelDouble
) -> None:
    async with serving(app_with(db_url, exotel, webhook_delivery_in_serve=False)) as client:
        endpoint = await register(client, "http://127.0.0.1:9/old")
        engine = create_engine(db_url)
        try:
            retry_at = func.now() + timedelta(minutes=5)
            await set_endpoint(engine, endpoint["id"], **FAILING_FOR_TWO_MINUTES, retry_at=retry_at)
        finally:
            await engine.dispose()
        assert await _get(client, endpoint["id"], "retry_at") is not None
        changed = await client.patch(
            f"/webhook-endpoints/{endpoint['id']}", json={"url": "http://127.0.0.1:9/new"}
        )
        assert changed.status_code == 200, changed.text
        assert (changed.json()["failing_since"], changed.json()["retry_at"]) == (None, None)


async def test_a_calls_later_events_wait_for_its_earlier_ones_retry_unread_by_claims(
    db_url: str, exotel: ExotelDouble
) -> None:
    """When a call's event is to be retried later, its later events (those owed already and
    those owed meanwhile) are due no sooner: a claim does not read them as due, and a dead
    endpoint's backlog is not read at every claim. Once it is delivered, the next is due."""
    later = retry_policy([600])
    async with serving(app_with(db_url, exotel, webhook_delivery_in_serve=False)) as client:
        await register(client, "http://127.0.0.1:9/dead")
        call = await place(client, exotel)
        answered = callback(call["sid"], "completed")
        response = await client.post(callback_path(call["id"]), **multipart(answered))
        assert response.status_code == 200
        settings = make_settings(db_url, **FAST)
        engine = create_engine(db_url)
        try:
            async with engine.begin() as db:
                [head] = await claim(db, worker="w", limit=8, per_endpoint=8)
            async with engine.begin() as db:
                refused = Answer(503, "answered 503", 5, "")
                await record(db, [(head, refused)], settings=settings.webhooks, retries=later)
            # A later event of the same call, owed while the first waits for its retry.
            recorded = answered | {"RecordingUrl": "https://recordings.example.test/1.mp3"}
            response = await client.post(callback_path(call["id"]), **multipart(recorded))
            assert response.status_code == 200

            async with engine.connect() as db:
                rows = await db.execute(
                    select(Delivery.sequence, Delivery.state, Delivery.next_attempt_at)
                    .where(Delivery.call_id == uuid.UUID(call["id"]))
                    .order_by(Delivery.sequence)
                )
                first, *followers = rows.all()
            assert first[1] == DeliveryState.PENDING
            assert len(followers) >= 2
            assert [(state, at) for _, state, at in followers] == [
                (DeliveryState.PENDING, first[2])
            ] * len(followers)
            async with engine.begin() as db:
                assert await claim(db, worker="w", limit=8, per_endpoint=8) == []

            # Delivered at its retry (its time come, as the clock would bring it): the next is
            # due at once, and is the one claimed.
            async with engine.begin() as db:
                await db.execute(
                    update(Delivery)
                    .where(Delivery.call_id == uuid.UUID(call["id"]))
                    .values(next_attempt_at=Delivery.next_attempt_at - text("'20 min'::interval"))
                )
            async with engine.begin() as db:
                [retried] = await claim(db, worker="w", limit=8, per_endpoint=8)
            assert retried.delivery_id == head.delivery_id
            async with engine.begin() as db:
                ok = Answer(200, None, 5, "ok")
                await record(db, [(retried, ok)], settings=settings.webhooks, retries=later)
            async with engine.begin() as db:
                [after] = await claim(db, worker="w", limit=8, per_endpoint=8)
            assert json.loads(after.body)["data"]["sequence"] == followers[0][0]
        finally:
            await engine.dispose()


async def test_the_pages_show_endpoints_and_what_each_call_pushed(
    client: httpx.AsyncClient, exotel: ExotelDouble, hooks: tuple[Inbox, str]
) -> None:
    inbox, url = hooks
    endpoint = await register(client, url, description="orders")
    inbox.status = 503
    call_id = await complete(client, exotel)
    await received(inbox, 2, at_least=True)

    status = (await client.get("/ui")).text
    row = status.split(f'id="endpoint-{endpoint["id"]}"')[1].split("</tr>")[0]
    assert url in row
    assert "orders" in row
    assert "<td>2</td>" in row  # two events owed
    assert "enabled" in row

    page = (await client.get(f"/ui/calls/{call_id}")).text
    events = page.split('id="events"')[1]
    assert "call.in_progress" in events
    assert "call.completed" in events
    assert 'class="chip dl-pending"' in events  # the first is retried, the second waits
    inbox.status = 200
    await endpoint_shows(client, endpoint["id"], "backlog", 0)
    events = (await client.get(f"/ui/calls/{call_id}")).text.split('id="events"')[1]
    assert events.count('class="chip dl-delivered"') == 2


async def test_the_readme_subscriber_verifies_and_takes_each_event_once(
    client: httpx.AsyncClient,
    exotel: ExotelDouble,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """examples/subscriber.py, shown in docs/events.md, against real deliveries."""
    example = Path(__file__).parents[2] / "examples" / "subscriber.py"
    shown = (Path(__file__).parents[2] / "docs" / "events.md").read_text()
    assert example.read_text() in shown  # the manual shows the file as it is

    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}/exocall-events"
    endpoint = await register(client, url, event_types=["call.completed", "call.busy"])
    monkeypatch.setenv("EXOCALL_WEBHOOK_SECRET", endpoint["secret"])
    spec = importlib.util.spec_from_file_location("readme_subscriber", example)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = uvicorn.Config(module.app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    serving_task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started or serving_task.done(), what="the subscriber serving")
    try:
        await complete(client, exotel, "busy")
        await endpoint_shows(client, endpoint["id"], "backlog", 0)
        headers = {"webhook-id": "evt_x", "webhook-timestamp": "1", "webhook-signature": "v1,AA"}
        async with httpx.AsyncClient() as http:
            forged = await http.post(url, content=b'{"id": "evt_x"}', headers=headers)
        assert forged.status_code == 400
    finally:
        server.should_exit = True
        await serving_task
    attempts = (await client.get(f"/webhook-endpoints/{endpoint['id']}/attempts")).json()["items"]
    assert [(a["status_code"], a["response_body"]) for a in attempts] == [(200, '{"status":"ok"}')]
    assert "call again later" in capsys.readouterr().out
