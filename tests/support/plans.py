"""The plans of the statements a code path sends: whether each stays on an index.

A hot query that reads a whole table is as fast as any other on a test's few rows, and slow once
the table holds ten million. `captured()` records every statement an engine sends while a code
path runs (SQLAlchemy's `before_cursor_execute`, with its parameters as the driver got them);
`explained()` asks PostgreSQL for the plan of each, with the same parameters, under
`enable_seqscan = off`: the planner then takes an index wherever one can serve, however small
the table, so a `Seq Scan` left in the plan is a scan no index can avoid. (PostgreSQL 18 marks
such a node `Disabled: true`; 15 only gives it a huge cost. Either way the node is a Seq Scan.)
Denied a Seq Scan, the planner reads a whole index instead where one can stand in for the table
(`Plan.seq_scans` says when that is as bad): that is caught too.

    with captured(engine) as sent:
        await claim_due(...)
    assert_on_indexes(await explained(engine, sent))
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

# The tables that grow with every call: none of them may be read whole on a hot path.
GROWING = frozenset({"call", "call_event", "event", "delivery", "delivery_attempt", "dial"})

# What has a plan. Anything else (BEGIN, SET, SHOW) reads no table.
_PLANNED = ("select", "with", "update", "delete", "insert")


@dataclass(frozen=True)
class Sent:
    """A statement as the driver got it: asyncpg's `$1` placeholders, and their values."""

    statement: str
    parameters: tuple[Any, ...]


@dataclass
class Plan:
    sent: Sent
    tree: dict[str, Any]  # EXPLAIN (FORMAT JSON)'s "Plan"
    text: str = field(default="")  # EXPLAIN's text, for a failure's message

    def nodes(self) -> Iterator[dict[str, Any]]:
        return _nodes(self.tree)

    def seq_scans(self, tables: frozenset[str] = GROWING) -> list[str]:
        """The growing tables this plan reads by a Seq Scan, though sequential scans are
        disabled: no index can serve the statement.

        Whole-index reads are not judged here: on tables of a few rows the planner may read a
        whole index with a filter, or under a join, where an index condition would serve, and
        which it takes turns on the statistics of the moment (an autovacuum's ANALYZE). Those
        are what the hot-path benchmark measures, on millions of rows (bench/hot_paths.py)."""
        return [
            node["Relation Name"]
            for node in self.nodes()
            if node.get("Relation Name") in tables and node["Node Type"] == "Seq Scan"
        ]


@contextmanager
def captured(engine: AsyncEngine) -> Iterator[list[Sent]]:
    """Every statement `engine` sends inside the block, once each (a poll repeated with the
    same values is one), in the order first sent: the app's background work included."""
    sent: list[Sent] = []
    seen: set[tuple[str, str]] = set()

    def before(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, many: bool
    ) -> None:
        if not statement.lstrip().lower().startswith(_PLANNED):
            return
        # executemany sends rows, whose first plans as well as any; SQLAlchemy's "insertmanyvalues"
        # batches, also told as `many`, send one flat row.
        if many and parameters and isinstance(parameters[0], (list, tuple, dict)):
            parameters = parameters[0]
        values = tuple(parameters or ())
        key = (statement, repr(values))
        if key not in seen:
            seen.add(key)
            sent.append(Sent(statement, values))

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", before)


async def explained(engine: AsyncEngine, sent: Sequence[Sent]) -> list[Plan]:
    """The plan of each statement, with its own values (a custom plan, as PostgreSQL makes for
    the first executions of a prepared statement), never executed: plain EXPLAIN, in a
    transaction rolled back."""
    return await _plans(engine, sent, "FORMAT JSON")


async def analyzed(engine: AsyncEngine, sent: Sequence[Sent]) -> list[Plan]:
    """As `explained()`, but each statement run (EXPLAIN ANALYZE, rolled back), its nodes
    telling the blocks they read: "Shared Hit Blocks" and "Shared Read Blocks"."""
    return await _plans(engine, sent, "ANALYZE, BUFFERS, FORMAT JSON")


async def _plans(engine: AsyncEngine, sent: Sequence[Sent], options: str) -> list[Plan]:
    plans = []
    async with engine.connect() as connection:
        for one in sent:
            async with connection.begin() as transaction:
                await connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
                explain = f"EXPLAIN ({options}) " + one.statement
                try:
                    result = await connection.exec_driver_sql(explain, one.parameters)
                except Exception as error:
                    raise AssertionError(f"cannot EXPLAIN {one.statement}") from error
                raw = result.scalar_one()
                tree = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
                plan = Plan(one, tree)
                if plan.seq_scans():
                    lines = await connection.exec_driver_sql(
                        "EXPLAIN " + one.statement, one.parameters
                    )
                    plan.text = "\n".join(row[0] for row in lines)
                plans.append(plan)
                await transaction.rollback()
    return plans


def whole_table_reads(plans: Sequence[Plan], tables: frozenset[str] = GROWING) -> str:
    """Each statement that reads a growing table whole, with its plan; empty if none does."""
    return "\n\n".join(
        f"reads {', '.join(plan.seq_scans(tables))} whole:\n{plan.sent.statement}\n"
        f"parameters: {plan.sent.parameters!r}\n{plan.text}"
        for plan in plans
        if plan.seq_scans(tables)
    )


async def assert_on_indexes(
    engine: AsyncEngine, sent: Sequence[Sent], *, reading: Sequence[str] = ()
) -> list[Plan]:
    """Fails naming each statement of `sent` that reads a growing table whole, with its plan.
    `reading`: tables the path must have read (by any plan), so that a path that silently sent
    nothing does not pass."""
    plans = await explained(engine, sent)
    read = {node.get("Relation Name") for plan in plans for node in plan.nodes()}
    missing = set(reading) - read
    assert not missing, f"no statement read {sorted(missing)}: {[s.statement for s in sent]}"
    failures = whole_table_reads(plans)
    assert not failures, failures
    return plans


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _nodes(child)
