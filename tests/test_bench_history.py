"""bench.history: what it promises of the history it fills, and that the app reads it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.calls.queries import find_call, list_calls, list_events, overview
from app.db.models import CallStatus
from bench.history import ENDED_TYPES, TABLES, fill
from tests.support.calls import queued

pytestmark = pytest.mark.anyio

CALLS = 15_000  # an hour and a quarter: the oldest calls' prices and recordings are in


async def _one(session: AsyncSession, sql: str, **params: Any) -> Any:
    return (await session.execute(text(sql), params)).one()


async def test_a_history_in_proportion_consistent_and_readable(
    db_url: str, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    history = await fill(db_url, calls=CALLS, chunk=6_000)

    assert set(history.rows) == set(TABLES)
    assert history.rows["call"] == CALLS
    async with sessionmaker() as session:
        calls, receipts, events, deliveries, ended_events = await _one(
            session,
            "SELECT (SELECT count(*) FROM call), (SELECT count(*) FROM call_event),"
            " (SELECT count(*) FROM event), (SELECT count(*) FROM delivery),"
            " (SELECT count(*) FROM event WHERE type = ANY(:ended))",
            ended=list(ENDED_TYPES),
        )
        assert 2.6 < receipts / calls < 3.4
        # Each event to the endpoint that takes all, and the calls' ends to the other too.
        assert deliveries == events + ended_events
        # Calls old enough to have their prices and recordings: about four events each.
        (old_events,) = await _one(
            session,
            "SELECT avg(event_sequence) FROM call"
            " WHERE created_at < (SELECT max(created_at) FROM call) - interval '1 hour'",
        )
        assert 3.6 < old_events < 4.8
        completed, recorded, passthru, with_digits, unmatched = await _one(
            session,
            "SELECT count(*) FILTER (WHERE status = 'completed'),"
            " count(*) FILTER (WHERE recording_url IS NOT NULL),"
            " (SELECT count(*) FROM call_event WHERE kind = 'passthru'),"
            " count(*) FILTER (WHERE digits IS NOT NULL AND flow IS NOT NULL),"
            " (SELECT count(*) FROM call_event WHERE call_id IS NULL"
            "  AND outcome = 'unknown_sid') FROM call",
        )
        assert 0.45 < recorded / completed < 0.55
        assert 0.07 < passthru / calls < 0.13
        assert with_digits == passthru
        assert 0 < unmatched < calls / 100

        live = await _one(
            session,
            "SELECT count(*) FILTER (WHERE status = 'queued'),"
            " count(*) FILTER (WHERE status = 'scheduled' AND next_attempt_at > now()),"
            " count(*) FILTER (WHERE status = 'in-progress' AND next_lookup_at IS NOT NULL),"
            " (SELECT count(*) FROM delivery WHERE state = 'pending')"
            " FROM call",
        )
        assert all(n > 0 for n in live)

        # A call's event_sequence is its last event's, its events numbered 1..k.
        (wrong_sequences,) = await _one(
            session,
            "SELECT count(*) FROM call c LEFT JOIN LATERAL (SELECT count(*) AS n,"
            " coalesce(max(sequence), 0) AS last FROM event e WHERE e.call_id = c.id) e ON true"
            " WHERE c.event_sequence <> e.last OR e.n <> e.last",
        )
        assert wrong_sequences == 0
        # A dial for each attempt, with its SID; SIDs unique across calls and dials.
        (wrong_dials,) = await _one(
            session,
            "SELECT count(*) FROM call c WHERE jsonb_array_length(c.attempts) <>"
            " (SELECT count(*) FROM dial d WHERE d.call_id = c.id) OR EXISTS (SELECT FROM dial d"
            " WHERE d.call_id = c.id AND d.sid IS DISTINCT FROM c.attempts -> (d.n - 1) ->> 'sid')",
        )
        assert wrong_dials == 0
        sids, distinct_sids = await _one(
            session,
            "SELECT count(*), count(DISTINCT sid) FROM (SELECT sid FROM call WHERE sid IS NOT"
            " NULL UNION ALL SELECT sid FROM dial WHERE sid IS NOT NULL"
            " AND n < (SELECT jsonb_array_length(attempts) FROM call WHERE id = call_id)) s",
        )
        assert sids == distinct_sids > 0
        # Written without the foreign keys' triggers: every reference holds all the same.
        (orphans,) = await _one(
            session,
            "SELECT (SELECT count(*) FROM event WHERE call_id NOT IN (SELECT id FROM call))"
            " + (SELECT count(*) FROM dial WHERE call_id NOT IN (SELECT id FROM call))"
            " + (SELECT count(*) FROM call_event WHERE call_id NOT IN (SELECT id FROM call))"
            " + (SELECT count(*) FROM delivery WHERE event_id NOT IN (SELECT id FROM event))"
            " + (SELECT count(*) FROM delivery_attempt"
            "    WHERE delivery_id NOT IN (SELECT id FROM delivery))"
            " + (SELECT count(*) FROM call WHERE batch_id NOT IN (SELECT id FROM batch))",
        )
        assert orphans == 0
        # Ids as the service makes them (app/ids.py): version 7, of the time the row was made.
        (untimely,) = await _one(
            session,
            "SELECT (SELECT count(*) FROM call WHERE substr(id::text, 15, 1) <> '7'"
            "   OR left(replace(id::text, '-', ''), 12)"
            "   <> lpad(to_hex((extract(epoch FROM created_at) * 1000)::bigint), 12, '0'))"
            " + (SELECT count(*) FROM call_event WHERE receipt_id IS NOT NULL"
            "   AND left(replace(receipt_id::text, '-', ''), 12)"
            "   <> lpad(to_hex((extract(epoch FROM received_at) * 1000)::bigint), 12, '0'))"
            " + (SELECT count(*) FROM event WHERE substr(public_id, 5, 12)"
            "   <> lpad(to_hex((extract(epoch FROM created_at) * 1000)::bigint), 12, '0'))",
        )
        assert untimely == 0
        # The next event (and delivery) the service writes takes an id after the history's.
        (next_event_id,) = await _one(session, "SELECT nextval('event_id_seq')")
        assert next_event_id > (await _one(session, "SELECT max(id) FROM event"))[0]

        page, cursor = await list_calls(session, limit=50)
        assert len(page) == 50
        assert cursor is not None
        following, _ = await list_calls(session, limit=50, cursor=cursor)
        assert following[0].created_at <= page[-1].created_at
        assert {c.id for c in page}.isdisjoint(c.id for c in following)
        (earlier_sid,) = await _one(
            session,
            "SELECT attempts -> 0 ->> 'sid' FROM call WHERE max_attempts > 1"
            " AND jsonb_array_length(attempts) > 1 LIMIT 1",
        )
        retried = await find_call(session, earlier_sid)
        assert retried.sid != earlier_sid
        assert len(retried.attempts) > 1
        assert len(await list_events(session, call_id=retried.id)) >= 4
        figures = await overview(session)
        assert sum(figures.calls_by_status.values()) == CALLS
        assert figures.queue_depth == live[0]
        assert figures.calls_by_status[CallStatus.COMPLETED] == completed

    # New calls go to the table's end, as on a server whose new calls have taken the room its
    # ended calls left: not each to a page of its own across the history once VACUUM has
    # recorded every page's room. And `call` keeps the migrations' fillfactor.
    async with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as db:
        await db.execute(text("VACUUM call"))
    now = datetime.now(UTC)
    flow_url = "http://my.exotel.com/acme1/exoml/start_voice/926"
    async with sessionmaker() as session, session.begin():
        session.add_all(queued(f"+9190521{n:05d}", now, flow_url=flow_url) for n in range(50))
    async with sessionmaker() as session:
        pages, fillfactor = await _one(
            session,
            "SELECT count(DISTINCT (ctid::text::point)[0]), (SELECT reloptions FROM pg_class"
            " WHERE oid = CAST('call' AS regclass)) FROM call WHERE created_at = :now",
            now=now,
        )
    assert pages <= 4  # 50 queued calls, on pages filled to 80%
    assert fillfactor == ["fillfactor=80"]
