"""Passthru: what the customer keyed in a flow, on the call (`digits`, `flow`), and each Passthru
request stored raw beside the status callbacks (`call_event.kind`)

Revision ID: c8d0e2f4a6b8
Revises: b7c9d1e3f5a7
Create Date: 2026-12-02 03:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "c8d0e2f4a6b8"
down_revision: str | None = "b7c9d1e3f5a7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("call") as call:
        call.add_column(sa.Column("digits", sa.String(64), nullable=True))
        call.add_column(sa.Column("flow", JSONB(), nullable=True))
    with op.batch_alter_table("call_event") as event:
        event.add_column(
            sa.Column("kind", sa.String(16), nullable=False, server_default="status_callback")
        )


def downgrade() -> None:
    with op.batch_alter_table("call_event") as event:
        event.drop_column("kind")
    with op.batch_alter_table("call") as call:
        call.drop_column("flow")
        call.drop_column("digits")
