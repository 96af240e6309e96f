"""Fewer index entries for each change of a call. A change of its status is no HOT update (the
status is indexed), so it adds an entry to every index of `call`; in an index whose pages are
not in the order calls are made, each lands on a page of its own, read from disk once the
history outgrows memory. Two such indexes held every call for little:

- `uq_call_idempotency_key` held the calls without a key too (NULL, in the order of their rows
  on disk): now only the calls with one. Built concurrently under another name, then put in
  place of the constraint, so that no moment is without it.
- `ix_call_recording_status` served no query (the counts come from `call_tally`, retention
  has its own index): dropped.

Revision ID: d5f7b9c1e3a5
Revises: c4e6a8b0d2f4
Create Date: 2026-12-11 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d5f7b9c1e3a5"
down_revision: str | None = "c4e6a8b0d2f4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEYED = "uq_call_idempotency_key_given"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        # A build cut short leaves an invalid index of the name: built afresh.
        op.drop_index(_KEYED, table_name="call", postgresql_concurrently=True, if_exists=True)
        op.create_index(
            _KEYED,
            "call",
            ["idempotency_key"],
            unique=True,
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
            postgresql_concurrently=True,
        )
    op.drop_constraint("uq_call_idempotency_key", "call", type_="unique")
    op.execute(f"ALTER INDEX {_KEYED} RENAME TO uq_call_idempotency_key")
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_call_recording_status",
            table_name="call",
            postgresql_concurrently=True,
            if_exists=True,
        )


def downgrade() -> None:
    op.create_index("ix_call_recording_status", "call", ["recording_status"])
    op.drop_index("uq_call_idempotency_key", table_name="call")
    op.create_unique_constraint("uq_call_idempotency_key", "call", ["idempotency_key"])
