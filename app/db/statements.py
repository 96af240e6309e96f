"""Helpers for statements built from the table metadata, once per backend."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Table, any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY


def table_of(model: type[Any]) -> Table:
    """A model's table, for Core statements."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


def one_of(column: ColumnElement[Any], name: str, *, dialect: str) -> ColumnElement[bool]:
    """`column` is one of the list bound as `name`. PostgreSQL takes the list as one array:
    one prepared statement for any length."""
    if dialect == "postgresql":
        return column == any_(bindparam(name, type_=ARRAY(column.type)))
    return column.in_(bindparam(name, expanding=True))
