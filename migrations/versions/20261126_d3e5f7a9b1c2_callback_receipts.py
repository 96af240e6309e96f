"""call_event.receipt_id: callbacks replayed from the spool are stored once

Revision ID: d3e5f7a9b1c2
Revises: c2d4e6f8a0b1
Create Date: 2026-11-26 20:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d3e5f7a9b1c2"
down_revision: str | None = "c2d4e6f8a0b1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("call_event") as batch_op:
        batch_op.add_column(sa.Column("receipt_id", sa.Uuid(), nullable=True))
        batch_op.create_unique_constraint(op.f("uq_call_event_receipt_id"), ["receipt_id"])


def downgrade() -> None:
    with op.batch_alter_table("call_event") as batch_op:
        batch_op.drop_constraint(op.f("uq_call_event_receipt_id"), type_="unique")
        batch_op.drop_column("receipt_id")
