"""Reading the event feed right after writing: first, waiting until it shows what committed.

The feed shows an event only once every transaction older than the one that wrote it has ended
(app/events/feed.py), and which transactions are in flight is the server's, not the database's:
a transaction open anywhere on the server (the app's own background work; on a TEST_DATABASE_URL
that xdist workers share, another worker's test) holds back, for a moment, an event a test has
just committed. Correct, but a test that reads the feed at once to check what it wrote would
see less than it wrote. So it waits first, for every transaction begun before it asks to end:
from then on the feed shows every event that had committed.

    items = await feed_items(client, db_url, call_id=call["id"])
"""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import TextClause, text

from app.db.session import create_engine
from tests.support.eventually import DEADLINE_SECONDS, eventually

# Transaction ids are xid8; as text, then bigint, for Python to compare (as the feed does).
_NEXT_TXID = text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
_OLDEST_IN_FLIGHT = text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")


async def feed_caught_up(database_url: str, *, within: float = DEADLINE_SECONDS) -> None:
    """Until the feed shows every event committed before this call: until every transaction
    begun before it (every id below the next one to be given) has ended. `database_url`: the
    `db_url` fixture's."""
    engine = create_engine(database_url)

    async def ask(query: TextClause) -> int:
        # A transaction of its own each time (rolled back on close), for a snapshot of now.
        async with engine.connect() as connection:
            return int(await connection.scalar(query) or 0)

    try:
        next_txid = await ask(_NEXT_TXID)
        await eventually(
            lambda: ask(_OLDEST_IN_FLIGHT),
            what=f"every transaction before id {next_txid} ended (the oldest in flight)",
            until=lambda oldest: oldest >= next_txid,
            within=within,
        )
    finally:
        await engine.dispose()


async def feed_items(
    client: httpx.AsyncClient, database_url: str, **params: Any
) -> list[dict[str, Any]]:
    """`GET /events` with `params`, once the feed shows every event committed before the call:
    its items."""
    await feed_caught_up(database_url)
    response = await client.get("/events", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])
