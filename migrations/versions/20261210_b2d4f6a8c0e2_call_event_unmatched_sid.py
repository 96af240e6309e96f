"""The callbacks' SID index keeps only those that matched no call: every statement that looks a
callback up by SID asks for one no call has taken (a call learning its SID adopts them). Every
callback stored wrote its SID, as random as Exotel makes them, into an index of every callback
kept (261 MB at three million calls), each on a page of its own. On the three million calls'
database, storing 10 s of Passthru requests wrote 118 MB of WAL (14,837 pages whole) before,
104 MB (13,103) after; 42 MB on a database of 60,000 calls: most of the rest is not this
index's. Built concurrently, so that callbacks are stored while it is built on a large table.

Revision ID: b2d4f6a8c0e2
Revises: a0c2e4f6b8d0
Create Date: 2026-12-10 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b2d4f6a8c0e2"
down_revision: str | None = "a0c2e4f6b8d0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        # A build cut short leaves an invalid index of the name: built afresh.
        op.drop_index(
            "ix_call_event_unmatched_sid",
            table_name="call_event",
            postgresql_concurrently=True,
            if_exists=True,
        )
        op.create_index(
            "ix_call_event_unmatched_sid",
            "call_event",
            ["sid"],
            postgresql_where=sa.text("call_id IS NULL"),
            postgresql_concurrently=True,
        )
        op.drop_index(
            "ix_call_event_sid",
            table_name="call_event",
            postgresql_concurrently=True,
            if_exists=True,
        )


def downgrade() -> None:
    op.create_index("ix_call_event_sid", "call_event", ["sid"])
    op.drop_index("ix_call_event_unmatched_sid", table_name="call_event")
