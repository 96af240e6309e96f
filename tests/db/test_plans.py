"""Each query of a hot path stays on an index (issue #26): the tables that grow with every call
are never read whole, so that exocall is as fast with ten million calls as with none.

Each test runs a real code path on a few rows, then reads the plan of every statement it sent
(tests/support/plans.py): with sequential scans disabled, a `Seq Scan` of a growing table is one
no index can serve. The app's own background work (dispatch) runs meanwhile; what it sends is
checked too. Delivery's claim, release and record are run by a test itself.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import ColumnElement, and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.calls import ratelimit
from app.calls.callback_auth import passthru_url
from app.calls.dispatch import budget_of, claim_due
from app.calls.policy import NumberLimit
from app.calls.reconcile import reconcile_once
from app.calls.retention import forget_unmatched_receipts
from app.config import Settings
from app.db.models import Call, CallStatus, Delivery, RecordingJob, WebhookEndpoint
from app.events.deliverer import Delivering
from app.events.delivery import Answer, claim, record, release, retry_policy
from app.events.endpoints import align_followers
from app.events.retention import forget_old_events
from app.jobs.worker import backlogs
from app.metrics import Metrics
from app.recordings.archive import Archive
from app.recordings.retention import forget_old_recordings
from app.recordings.store import RecordingStore
from tests.conftest import FAKE_CALLBACK_SECRET, callback_path, place_body, serving
from tests.support.calls import queued
from tests.support.eventually import eventually
from tests.support.exotel_double import ExotelDouble, call_json, exotel_client_of
from tests.support.exotel_requests import callback, exotel_clock, multipart
from tests.support.plans import (
    Plan,
    Sent,
    analyzed,
    assert_on_indexes,
    captured,
    explained,
    whole_table_reads,
)
from tests.support.webhooks import app_with

pytestmark = pytest.mark.anyio

PASSTHRU = passthru_url("", FAKE_CALLBACK_SECRET.encode())
RECORDING = "https://recordings.exotel.test/fake-account/a.mp3"
# Nothing listens on port 9: each delivery fails, and is owed again.
UNREACHABLE = "http://127.0.0.1:9/hook"
RETRIES = retry_policy([0])
FOLLOWERS_INDEX = "ix_delivery_endpoint_id_call_id_sequence"


@pytest.fixture
def app(db_url: str, exotel: ExotelDouble) -> FastAPI:
    # Idle work polls seldom (work queued here is taken at once): what a test captures is
    # mostly its own path's. Deliveries are the tests' own to claim: no deliverer of the app's
    # takes them first (a callback's events would wake it).
    return app_with(db_url, exotel, jobs_poll_seconds=3600, webhook_delivery_in_serve=False)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(app) as c:
        yield c


@dataclass
class World:
    """A few calls in each state, with their events and deliveries, made through the API."""

    completed: dict[str, Any]  # ended with a recording, its events owed to the endpoint
    keyed: dict[str, Any]  # in progress, digits "1" keyed in its flow
    batch: dict[str, Any]
    endpoint: dict[str, Any]
    event_id: str
    cursor: str  # the feed's, after its first event
    calls_cursor: str  # `GET /calls`'s, after the newest call


async def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code < 300, response.text
    return dict(response.json())


@pytest.fixture
async def world(client: httpx.AsyncClient, exotel: ExotelDouble) -> World:
    exotel.accept_connects()
    endpoint = await ok(await client.post("/webhook-endpoints", json={"url": UNREACHABLE}))
    completed = await ok(await client.post("/calls", json=place_body()))
    keyed = await ok(await client.post("/calls", json=place_body("+919052161120")))
    numbers = ["+919052161121", "+919052161122"]
    batch = await ok(
        await client.post("/calls/batch", json={"calls": [place_body(n) for n in numbers]})
    )
    ended = callback(completed["sid"], "completed", exotel_clock(40), recording=RECORDING)
    await ok(await client.post(callback_path(completed["id"]), **multipart(ended)))
    await passthru(client, keyed["sid"], digits='"1"')

    # The feed shows what committed below every transaction still open on the server.
    async def feed() -> dict[str, Any]:
        return await ok(await client.get("/events", params={"limit": 1}))

    page = await eventually(feed, until=lambda p: p["items"], what="the feed's first event")
    (first,) = page["items"]
    calls = await ok(await client.get("/calls", params={"limit": 1}))
    return World(
        completed, keyed, batch, endpoint, first["id"], page["next_cursor"], calls["next_cursor"]
    )


async def passthru(client: httpx.AsyncClient, sid: str, **fields: str) -> None:
    query = {"CallSid": sid, "From": "09052161110", "CurrentTime": exotel_clock(1)} | fields
    response = await client.get(f"{PASSTHRU}&{urlencode(query)}")
    assert response.status_code == 200, response.text


def engine_of(app: FastAPI) -> AsyncEngine:
    engine: AsyncEngine = app.state.runtime.engine
    return engine


async def request_on_indexes(
    app: FastAPI, client: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> list[Plan]:
    engine = engine_of(app)
    with captured(engine) as sent:
        response = await client.request(method, url, **kwargs)
    assert response.status_code < 400, response.text
    return await assert_on_indexes(engine, sent)


# --- placing calls and receiving Exotel's requests -----------------------------------------


async def test_placing_a_call(
    app: FastAPI, client: httpx.AsyncClient, exotel: ExotelDouble, world: World
) -> None:
    # Its idempotency key looked up, the call written, dispatched, and its answer recorded.
    body = place_body("+919052161130")
    await request_on_indexes(
        app, client, "POST", "/calls", json=body, headers={"Idempotency-Key": "k1"}
    )


async def test_placing_a_batch(
    app: FastAPI, client: httpx.AsyncClient, exotel: ExotelDouble, world: World
) -> None:
    calls = [place_body(f"+91905216114{n}") for n in range(3)]
    await request_on_indexes(app, client, "POST", "/calls/batch", json={"calls": calls})


async def test_a_status_callback(app: FastAPI, client: httpx.AsyncClient, world: World) -> None:
    sid = world.keyed["sid"]
    fields = callback(sid, "completed", exotel_clock(60), recording=RECORDING)
    await request_on_indexes(
        app, client, "POST", callback_path(world.keyed["id"]), **multipart(fields)
    )


async def test_a_status_callback_for_an_unknown_sid(
    app: FastAPI, client: httpx.AsyncClient, world: World
) -> None:
    fields = callback("unknown-sid", "completed", exotel_clock(60))
    await request_on_indexes(app, client, "POST", callback_path(None), **multipart(fields))


async def test_a_passthru_request(app: FastAPI, client: httpx.AsyncClient, world: World) -> None:
    query = {"CallSid": world.keyed["sid"], "CurrentTime": exotel_clock(2), "digits": '"2"'}
    await request_on_indexes(app, client, "GET", f"{PASSTHRU}&{urlencode(query)}")


async def test_a_passthru_about_a_calls_latest_attempt_searches_no_dial(
    app: FastAPI, client: httpx.AsyncClient, world: World
) -> None:
    # A request found by its SID: each search of an index of Exotel's random SIDs reads a leaf
    # page of its own on a big history, and the dials need none for a call's latest SID.
    engine = engine_of(app)
    sid = world.keyed["sid"]
    query = {"CallSid": sid, "CurrentTime": exotel_clock(3)}
    with captured(engine) as sent:
        response = await client.get(f"{PASSTHRU}&{urlencode(query)}")
    assert response.status_code == 200, response.text
    # Its own lock, by its SID alone. The app's work meanwhile locks by other SIDs too, which
    # the dials are searched for: the batch's calls by those they learn, a reconciliation
    # round by those Exotel lists.
    locks = [
        one
        for one in sent
        if "FROM dial" in one.statement
        and "FOR UPDATE" in one.statement
        and [sid] in one.parameters
    ]
    assert locks, [one.statement for one in sent]
    # Sequential scans off, as for every plan here: on a test's few rows the planner may read the
    # dials' one page whole, which it never does on a history.
    for plan in await analyzed(engine, locks):
        dials = [node for node in plan.nodes() if node.get("Relation Name") == "dial"]
        assert dials, plan.sent.statement
        for node in dials:
            assert node["Shared Hit Blocks"] + node["Shared Read Blocks"] == 0, node


# --- reading calls ---------------------------------------------------------------------------


CALL_READS: list[tuple[str, Callable[[World], str]]] = [
    ("list", lambda w: "/calls"),
    ("list-by-status", lambda w: "/calls?status=in-progress"),
    ("list-by-two-statuses", lambda w: "/calls?status=queued&status=completed"),
    ("list-from", lambda w: "/calls?from=09052161110"),
    ("list-created-after", lambda w: f"/calls?created_after={_ago(3600)}"),
    ("list-created-before", lambda w: f"/calls?created_before={_ago(-3600)}"),
    ("list-by-batch", lambda w: f"/calls?batch_id={w.batch['id']}"),
    ("list-by-digits", lambda w: "/calls?digits=1"),
    ("list-next-page", lambda w: f"/calls?limit=1&cursor={w.calls_cursor}"),
    ("list-by-status-next-page", lambda w: f"/calls?status=queued&cursor={w.calls_cursor}"),
    ("list-from-next-page", lambda w: f"/calls?from=09052161110&cursor={w.calls_cursor}"),
    ("by-id", lambda w: f"/calls/{w.completed['id']}"),
    ("by-sid", lambda w: f"/calls/{w.completed['sid']}"),
    ("events", lambda w: f"/calls/{w.completed['id']}/events"),
    ("batch", lambda w: f"/batches/{w.batch['id']}"),
]


def _ago(seconds: float) -> str:
    return urlencode({"t": (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()})[2:]


@pytest.mark.parametrize(("url_of"), [url for _, url in CALL_READS], ids=[n for n, _ in CALL_READS])
async def test_reading_calls(
    app: FastAPI, client: httpx.AsyncClient, world: World, url_of: Callable[[World], str]
) -> None:
    await request_on_indexes(app, client, "GET", url_of(world))


STATUS_PAGES = [
    # Counts of every call, and of the last day's, come from `call_tally` (app/calls/counts.py).
    pytest.param(lambda w: "/ui", id="ui"),
    pytest.param(lambda w: "/metrics", id="metrics"),
]


@pytest.mark.parametrize("url_of", STATUS_PAGES)
async def test_the_status_page_and_metrics(
    app: FastAPI, client: httpx.AsyncClient, world: World, url_of: Callable[[World], str]
) -> None:
    await request_on_indexes(app, client, "GET", url_of(world))


# --- the event feed and webhooks --------------------------------------------------------------


FEED_READS: list[tuple[str, Callable[[World], str]]] = [
    ("from-the-start", lambda w: "/events"),
    ("from-a-cursor", lambda w: f"/events?after={w.cursor}"),
    ("from-now", lambda w: "/events?after=now"),
    ("by-type", lambda w: "/events?type=call.completed"),
    ("by-call", lambda w: f"/events?call_id={w.completed['id']}"),
    ("one", lambda w: f"/events/{w.event_id}"),
    ("endpoints-with-backlogs", lambda w: "/webhook-endpoints"),
    ("endpoint-with-backlog", lambda w: f"/webhook-endpoints/{w.endpoint['id']}"),
    ("endpoint-attempts", lambda w: f"/webhook-endpoints/{w.endpoint['id']}/attempts"),
]


@pytest.mark.parametrize(("url_of"), [url for _, url in FEED_READS], ids=[n for n, _ in FEED_READS])
async def test_reading_events(
    app: FastAPI, client: httpx.AsyncClient, world: World, url_of: Callable[[World], str]
) -> None:
    await request_on_indexes(app, client, "GET", url_of(world))


async def test_delivery_claim_release_and_record(
    app: FastAPI, world: World, settings: Settings
) -> None:
    engine = engine_of(app)
    async with engine.begin() as db:  # every delivery due now, none in flight
        await db.execute(
            update(Delivery).values(
                state="pending", next_attempt_at=datetime.now(UTC), claimed_by=None
            )
        )
    with captured(engine) as sent:
        async with engine.begin() as db:
            claimed = await claim(db, worker="w", limit=8, per_endpoint=8)
        assert claimed
        async with engine.begin() as db:
            await release(db, [claimed[0].delivery_id], retries=RETRIES)
        async with engine.begin() as db:
            # One fails, and is owed again later, with its call's later deliveries.
            failed, *delivered = claimed[1:]
            answered = [(failed, Answer(503, "answered 503", 5, ""))]
            answered += [(one, Answer(200, None, 5, "ok")) for one in delivered]
            await record(db, answered, settings=settings.webhooks, retries=RETRIES)
    await assert_on_indexes(engine, sent, reading=["delivery", "delivery_attempt"])


async def test_delivery_claim_looks_each_candidates_call_up_for_a_new_endpoint(
    app: FastAPI, client: httpx.AsyncClient, world: World
) -> None:
    # The statistics predate the endpoint: the planner takes it for one with no deliveries. As
    # a join, the look-up of a candidate's earlier deliveries then read every delivery of the
    # endpoint for each candidate (a claim's time grew with the endpoint's backlog).
    engine = engine_of(app)
    async with engine.begin() as db:
        await db.exec_driver_sql("ANALYZE delivery")
    endpoint = await ok(await client.post("/webhook-endpoints", json={"url": UNREACHABLE}))
    # Owed the first one's events, which are put off. The batch's calls may still be
    # dispatched meanwhile: events of theirs made since the endpoint was are owed to it already.
    async with engine.begin() as db:
        await db.exec_driver_sql(
            "INSERT INTO delivery (event_id, endpoint_id, call_id, sequence, state, attempts,"
            " next_attempt_at, trigger, created_at)"
            " SELECT event_id, $1, call_id, sequence, 'pending', 0, now(), 'scheduled', now()"
            " FROM delivery WHERE endpoint_id = $2"
            " ON CONFLICT (event_id, endpoint_id) DO NOTHING",
            (uuid.UUID(endpoint["id"]), uuid.UUID(world.endpoint["id"])),
        )
        await db.execute(
            update(Delivery)
            .where(Delivery.endpoint_id == uuid.UUID(world.endpoint["id"]))
            .values(next_attempt_at=datetime.now(UTC) + timedelta(hours=1))
        )
    with captured(engine) as sent:
        async with engine.begin() as db:
            claimed = await claim(db, worker="w", limit=8, per_endpoint=8)
    assert uuid.UUID(endpoint["id"]) in {one.endpoint_id for one in claimed}
    lookups = [
        node
        for plan in await explained(engine, sent)
        for node in plan.nodes()
        if node.get("Alias") == "earlier"
    ]
    assert lookups, [one.statement for one in sent]
    for node in lookups:
        assert "call_id" in node.get("Index Cond", ""), node


async def owed_unseen(engine: AsyncEngine) -> None:
    """Every delivery owed, after statistics that saw none owed: a sample of a history of
    millions may hold no pending delivery, and then many are owed (an endpoint down)."""
    async with engine.begin() as db:
        await db.execute(update(Delivery).values(state="delivered", finished_at=func.now()))
        await db.exec_driver_sql("ANALYZE delivery")
        await db.execute(
            update(Delivery).values(
                state="pending", next_attempt_at=func.now(), finished_at=None, claimed_by=None
            )
        )


async def delivery_reads(
    engine: AsyncEngine,
    sent: list[Sent],
    statement: str,
    *,
    plans: Callable[[AsyncEngine, Sequence[Sent]], Awaitable[list[Plan]]] = explained,
) -> list[Any]:
    """The scans of `delivery` in the plans (`explained` or `analyzed`) of the statements sent
    that begin `statement` (the app's own work may send others meanwhile)."""
    reads = [
        node
        for plan in await plans(
            engine, [one for one in sent if one.statement.startswith(statement)]
        )
        for node in plan.nodes()
        if node.get("Relation Name") == "delivery" and "Scan" in node["Node Type"]
    ]
    assert reads, [one.statement for one in sent]
    return reads


async def test_aligning_a_deliverys_followers_reads_only_its_call(
    app: FastAPI, world: World
) -> None:
    # As one join, the planner took the pending deliveries for one row and read them all for
    # each delivery given.
    engine = engine_of(app)
    await owed_unseen(engine)
    async with engine.begin() as db:
        heads = list(await db.scalars(select(Delivery.id).where(Delivery.sequence == 1)))
    assert heads
    with captured(engine) as sent:
        async with engine.begin() as db:
            await align_followers(db, heads)
    reads = await delivery_reads(engine, sent, "UPDATE delivery")
    for node in reads:
        assert node.get("Index Name") in {"pk_delivery", FOLLOWERS_INDEX}, node
    (followers,) = [node for node in reads if node.get("Index Name") == FOLLOWERS_INDEX]
    assert "call_id" in followers.get("Index Cond", ""), followers


async def test_a_claim_takes_the_deliveries_it_chose_by_key(app: FastAPI, world: World) -> None:
    # With the owed deliveries' index, the planner read every owed delivery to take the few it
    # chose.
    engine = engine_of(app)
    await owed_unseen(engine)
    with captured(engine) as sent:
        async with engine.begin() as db:
            assert await claim(db, worker="w", limit=8, per_endpoint=8)
    taking = [
        node
        for node in await delivery_reads(engine, sent, "UPDATE delivery SET state")
        if node.get("Alias") == "pending"
    ]
    assert taking, [one.statement for one in sent]
    for node in taking:
        assert node.get("Index Name") == "pk_delivery", node


async def test_owing_an_event_looks_up_only_its_calls_earlier_deliveries(
    app: FastAPI, client: httpx.AsyncClient, world: World
) -> None:
    # A new delivery is due behind its call's earlier pending ones. With the pending index, the
    # planner read every pending delivery of the endpoint for each event owed.
    engine = engine_of(app)
    await owed_unseen(engine)
    ended = callback(world.keyed["sid"], "completed", exotel_clock(60))
    with captured(engine) as sent:
        response = await client.post(callback_path(world.keyed["id"]), **multipart(ended))
    assert response.status_code == 200, response.text
    for node in await delivery_reads(engine, sent, "INSERT INTO delivery ("):
        assert node.get("Index Name") == FOLLOWERS_INDEX, node
        assert "call_id" in node.get("Index Cond", ""), node


async def test_the_due_deliveries_count_reads_nothing_an_endpoint_down_holds_back(
    app: FastAPI, client: httpx.AsyncClient, world: World
) -> None:
    # A scrape's count of the due deliveries read every owed one through the owed deliveries'
    # index, and kept those due: an endpoint that is down is owed every event.
    engine = engine_of(app)
    await owed_unseen(engine)
    down = uuid.UUID(world.endpoint["id"])
    up = uuid.UUID(
        (await ok(await client.post("/webhook-endpoints", json={"url": UNREACHABLE})))["id"]
    )
    async with engine.begin() as db:
        await db.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == down)
            .values(failing_since=func.now() - timedelta(minutes=2))
        )
        # The one up is owed each call's first event.
        await db.exec_driver_sql(
            "INSERT INTO delivery (event_id, endpoint_id, call_id, sequence, state, attempts,"
            " next_attempt_at, trigger, created_at)"
            " SELECT event_id, $1, call_id, sequence, 'pending', 0, now(), 'scheduled', now()"
            " FROM delivery WHERE endpoint_id = $2 AND sequence = 1"
            " ON CONFLICT (event_id, endpoint_id) DO NOTHING",
            (up, down),
        )
    with captured(engine) as sent:
        async with AsyncSession(engine) as session:
            await backlogs(session, {"delivery": Delivering.queue})
    counts = [one for one in sent if "statement_timestamp()" in one.statement]
    reads = await delivery_reads(engine, counts, "SELECT", plans=analyzed)

    def owed_to(endpoint: uuid.UUID, *states: str) -> ColumnElement[bool]:
        return and_(Delivery.endpoint_id == endpoint, Delivery.state.in_(states))

    async with engine.connect() as db:  # after the count: what is owed only grows meanwhile
        owed_up = await db.scalar(select(func.count()).where(owed_to(up, "pending", "sending")))
        assert await db.scalar(select(func.count()).where(owed_to(down, "pending")))
    # Read by endpoint (an index condition), the count reads some of the deliveries owed to the
    # endpoint up (through one index or the other, as the planner weighs them on a few rows),
    # and none of those owed to the one down.
    read = sum(
        node["Actual Rows"] * node["Actual Loops"] + node.get("Rows Removed by Filter", 0)
        for node in reads
    )
    assert 0 < read <= owed_up, reads


# --- the status page and metrics -------------------------------------------------------------


STATUS_READS: list[tuple[str, Callable[[World], str]]] = [
    ("ui-call", lambda w: f"/ui/calls/{w.completed['id']}"),
]


@pytest.mark.parametrize(
    ("url_of"), [url for _, url in STATUS_READS], ids=[n for n, _ in STATUS_READS]
)
async def test_status_page_and_metrics(
    app: FastAPI, client: httpx.AsyncClient, world: World, url_of: Callable[[World], str]
) -> None:
    await request_on_indexes(app, client, "GET", url_of(world))


# --- work done later, run on its own --------------------------------------------------------


async def test_the_dispatch_claim(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    now = datetime.now(UTC)
    async with sessionmaker() as session, session.begin():
        session.add_all(
            [
                queued("+919052161110", now - timedelta(minutes=3)),
                queued("+919052161110", now - timedelta(minutes=2)),
                queued(
                    "+919052161120",
                    now - timedelta(minutes=5),
                    status=CallStatus.SCHEDULED,
                    next_attempt_at=now - timedelta(seconds=1),
                ),
            ]
        )
    with captured(engine) as sent:
        async with sessionmaker() as session, session.begin():
            claimed = await claim_due(
                session,
                budget=ratelimit.Budget(limit=100, window=60, margin=0),
                worker="w",
                number_limit=NumberLimit.parse("1/1h"),
                limit=4,
            )
    assert isinstance(claimed, list)
    assert claimed
    await assert_on_indexes(engine, sent, reading=["call", "dial"])


async def test_a_reconciliation_round(
    app: FastAPI, world: World, exotel: ExotelDouble, settings: Settings
) -> None:
    engine = engine_of(app)
    sessionmaker: async_sessionmaker[AsyncSession] = app.state.runtime.sessionmaker
    async with engine.begin() as db:  # every call due for a look-up, and owed a price
        await db.execute(update(Call).values(next_lookup_at=None))
        await db.execute(
            update(Call)
            .where(Call.id == uuid.UUID(world.completed["id"]))
            .values(price_wait_from=datetime.now(UTC) - timedelta(days=1))
        )
    exotel.listed = [call_json(world.keyed["sid"], "completed")]
    async with exotel_client_of(exotel.handle) as exotel_client:
        with captured(engine) as sent:
            await reconcile_once(
                sessionmaker=sessionmaker,
                exotel=exotel_client,
                settings=settings.reconcile,
                budget=ratelimit.Budget(limit=100, window=60, margin=0),
            )
    await assert_on_indexes(engine, sent, reading=["call"])


async def test_the_recording_archive_claim(
    app: FastAPI, world: World, exotel: ExotelDouble, settings: Settings
) -> None:
    engine = engine_of(app)
    runtime = app.state.runtime
    async with engine.begin() as db:
        await db.execute(update(RecordingJob).values(due_at=datetime.now(UTC) - timedelta(1)))
    async with exotel_client_of(exotel.handle) as exotel_client:
        archive = Archive(
            sessionmaker=runtime.sessionmaker,
            exotel=exotel_client,
            store=runtime.recordings,
            settings=settings.recordings,
            budget=budget_of(settings.exotel),
            held_dir=settings.callbacks.spool_dir / "recordings",
            metrics=Metrics(),
        )
        with captured(engine) as sent:
            async with runtime.sessionmaker() as session, session.begin():
                claimed = await archive.claim(session, worker="w", limit=4)
    assert claimed
    await assert_on_indexes(engine, sent, reading=["call", "recording_job"])


async def test_the_retentions(app: FastAPI, world: World, settings: Settings) -> None:
    engine = engine_of(app)
    sessionmaker: async_sessionmaker[AsyncSession] = app.state.runtime.sessionmaker
    store: RecordingStore = app.state.runtime.recordings
    with captured(engine) as sent:
        await forget_old_events(sessionmaker, days=1)
        await forget_unmatched_receipts(sessionmaker, days=1)
        await forget_old_recordings(sessionmaker, store, days=1)
    await assert_on_indexes(engine, sent, reading=["event", "call_event", "call"])


async def test_a_read_no_index_serves_is_caught(engine: AsyncEngine) -> None:
    # The harness itself: a filter on a column no index has reads the whole table, with its
    # parameter sent as the app's statements send theirs.
    with captured(engine) as sent:
        async with engine.connect() as db:
            await db.execute(select(Call.id).where(Call.caller_id == "08030752400"))
    (plan,) = await explained(engine, sent)
    assert plan.seq_scans() == ["call"]
    assert "Seq Scan on call" in whole_table_reads([plan])
