"""call.next_lookup_at: when reconciliation next looks a call up, on an escalating schedule (in
place of reconciled_at, when it last did);
exotel_throttle.lookup_wanted_until: a look-up waiting for a slot under a dispatch backlog

Revision ID: f5a7b9c1d3e5
Revises: e4f6a8b0c2d4
Create Date: 2026-12-01 14:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f5a7b9c1d3e5"
down_revision: str | None = "e4f6a8b0c2d4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Empty for every call already there: each is looked up at the first round after this.
    with op.batch_alter_table("call") as batch_op:
        batch_op.add_column(sa.Column("next_lookup_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_call_status_next_lookup_at", ["status", "next_lookup_at"])
        batch_op.drop_column("reconciled_at")
    with op.batch_alter_table("exotel_throttle") as batch_op:
        batch_op.add_column(
            sa.Column("lookup_wanted_until", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("exotel_throttle") as batch_op:
        batch_op.drop_column("lookup_wanted_until")
    with op.batch_alter_table("call") as batch_op:
        batch_op.add_column(sa.Column("reconciled_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_index("ix_call_status_next_lookup_at")
        batch_op.drop_column("next_lookup_at")
