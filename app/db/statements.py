"""Helpers for statements built from the table metadata, once."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Select,
    Table,
    any_,
    bindparam,
    cast,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import InstrumentedAttribute


def table_of(model: type[Any]) -> Table:
    """A model's table, for Core statements."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


def one_of(column: ColumnElement[Any], name: str) -> ColumnElement[bool]:
    """`column` is one of the list bound as `name`, taken as one array: one prepared statement
    for any length."""
    return column == any_(bindparam(name, type_=ARRAY(column.type)))


def among(
    column: ColumnElement[Any] | InstrumentedAttribute[Any],
    values: Select[Any] | CompoundSelect[Any],
) -> ColumnElement[bool]:
    """`column` is one of what `values` (one column) selects, gathered first into one array:
    the planner then reads `column`'s index for each, as for a list of constants. As `IN
    (SELECT ...)` it may instead join the two, reading `column`'s table whole (a merge join
    over its primary key, on a table it takes for a small one). Several reads: a UNION ALL,
    since duplicates do no harm here and a UNION's sort may read a whole index for order."""
    gathered = select(func.array_agg(values.subquery().c[0])).scalar_subquery()
    return column == any_(cast(gathered, ARRAY(column.type)))


def written_in(
    column: ColumnElement[Any] | InstrumentedAttribute[Any], *values: str
) -> ColumnElement[bool]:
    """`column` is one of `values` (the service's own constants), written into the statement,
    not bound: PostgreSQL uses a partial index only for a literal that matches its predicate,
    never for a parameter of a generic plan; and a generic plan, not knowing the value, takes
    `status = $1` for an average share of the table, so a status that a handful of calls have
    among millions is looked for by reading them all (a prepared statement's plan after its
    fifth run)."""
    return or_(*(column == literal_column(f"'{value}'") for value in values))


def checked_apart(
    column: ColumnElement[Any] | InstrumentedAttribute[Any], value: str
) -> ColumnElement[bool]:
    """`column` (NOT NULL) is `value`, said so that no partial index's predicate matches (IS
    NOT DISTINCT FROM): the counterpart of `written_in`, for rows found by another index (their
    key, their call) whose state is only checked. Where statistics predate a backlog (a sample
    of millions of deliveries that held no pending one), a partial index of the state looks
    empty to the planner, and it reads all of that index instead (one per row, as a join)."""
    return column.is_not_distinct_from(value)
