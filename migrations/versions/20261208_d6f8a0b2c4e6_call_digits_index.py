"""An index of the calls by the digits their customer keyed, newest first: `GET /calls?digits=`
read every newer call to find a page of those. Built concurrently, so that calls are written
while it is built on a large table.

Revision ID: d6f8a0b2c4e6
Revises: c5e7f9b1d3e5
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d6f8a0b2c4e6"
down_revision: str | None = "c5e7f9b1d3e5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        # A build cut short leaves an invalid index of the name: built afresh.
        op.drop_index(
            "ix_call_digits_created_at_id",
            table_name="call",
            postgresql_concurrently=True,
            if_exists=True,
        )
        op.create_index(
            "ix_call_digits_created_at_id",
            "call",
            ["digits", "created_at", "id"],
            postgresql_where=sa.text("digits IS NOT NULL"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_call_digits_created_at_id", table_name="call", postgresql_concurrently=True
        )
