"""call_event.problem: why a callback is `unreadable`, what it lacks or why it could not be
stored as read

Revision ID: e1a3c5e7f9b2
Revises: d9e1f3a5b7c9
Create Date: 2026-12-03 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e1a3c5e7f9b2"
down_revision: str | None = "d9e1f3a5b7c9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("call_event") as batch_op:
        batch_op.add_column(sa.Column("problem", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("call_event") as batch_op:
        batch_op.drop_column("problem")
