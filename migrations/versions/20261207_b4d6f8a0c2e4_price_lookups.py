"""call.price_wait_from: reconciliation's schedule for the prices of a call's ended attempts,
with a partial index of the calls owed one.

Revision ID: b4d6f8a0c2e4
Revises: a3c5e7f9b1d2
Create Date: 2026-12-07 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b4d6f8a0c2e4"
down_revision: str | None = "a3c5e7f9b1d2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("call", sa.Column("price_wait_from", sa.DateTime(timezone=True), nullable=True))
    # Attempts that ended in the last day (RECONCILE_PRICE_GIVE_UP_SECONDS' default) without a
    # price are owed one; older ones, and those recorded before attempts had an end, are not.
    op.execute(
        """
        UPDATE call SET price_wait_from = now() - interval '1 hour'
        WHERE EXISTS (
            SELECT FROM jsonb_array_elements(attempts) AS attempt
            WHERE attempt->>'sid' IS NOT NULL AND attempt->>'price' IS NULL
            AND (attempt->>'ended_at')::timestamptz > now() - interval '1 day')
        """
    )
    op.create_index(
        "ix_call_price_wait_from",
        "call",
        ["price_wait_from"],
        postgresql_where=sa.text("price_wait_from IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_call_price_wait_from", table_name="call")
    op.drop_column("call", "price_wait_from")
