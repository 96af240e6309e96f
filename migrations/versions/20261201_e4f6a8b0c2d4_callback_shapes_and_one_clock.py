"""callback shapes (method, answered_at, on_call_duration), error_at, and one clock: every
time a timestamptz

Revision ID: e4f6a8b0c2d4
Revises: d3e5f7a9b1c2
Create Date: 2026-12-01 11:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e4f6a8b0c2d4"
down_revision: str | None = "d3e5f7a9b1c2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Instant = sa.DateTime(timezone=True)
# Times kept as seconds since the epoch (on the database's clock) until now.
SECONDS = [
    ("call", "claimed_at"),
    ("call", "not_before"),
    ("call", "reconciled_at"),
    ("exotel_request", "at"),
    ("exotel_throttle", "paused_until"),
    ("lease", "expires_at"),
]


def upgrade() -> None:
    with op.batch_alter_table("call") as batch_op:
        batch_op.add_column(sa.Column("on_call_duration", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("answered_at", Instant, nullable=True))
        batch_op.add_column(sa.Column("error_at", Instant, nullable=True))
    with op.batch_alter_table("call_event") as batch_op:
        # Every callback stored so far was a POST.
        batch_op.add_column(
            sa.Column("method", sa.String(8), nullable=False, server_default="POST")
        )
        batch_op.alter_column("content_type", existing_type=sa.String(100), nullable=True)
    with op.batch_alter_table("call_event") as batch_op:
        batch_op.alter_column("method", existing_type=sa.String(8), server_default=None)
    for table, column in SECONDS:
        _seconds_to_instant(table, column)


def downgrade() -> None:
    for table, column in SECONDS:
        _instant_to_seconds(table, column)
    op.execute("UPDATE call_event SET content_type = '' WHERE content_type IS NULL")
    with op.batch_alter_table("call_event") as batch_op:
        batch_op.alter_column("content_type", existing_type=sa.String(100), nullable=False)
        batch_op.drop_column("method")
    with op.batch_alter_table("call") as batch_op:
        batch_op.drop_column("error_at")
        batch_op.drop_column("answered_at")
        batch_op.drop_column("on_call_duration")


def _seconds_to_instant(table: str, column: str) -> None:
    op.alter_column(
        table,
        column,
        type_=Instant,
        existing_type=sa.Double(),
        postgresql_using=f"to_timestamp({column})",
    )


def _instant_to_seconds(table: str, column: str) -> None:
    op.alter_column(
        table,
        column,
        type_=sa.Double(),
        existing_type=Instant,
        postgresql_using=f"extract(epoch from {column})",
    )
