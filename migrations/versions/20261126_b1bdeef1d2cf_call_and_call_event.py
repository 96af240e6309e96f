"""call and call_event

Revision ID: b1bdeef1d2cf
Revises:
Create Date: 2026-11-26 19:04:48
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "b1bdeef1d2cf"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations are static: they spell out their types instead of importing the app's.
Instant = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "call",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("sid", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("from_number", sa.String(20), nullable=False),
        sa.Column("caller_id", sa.String(20), nullable=False),
        sa.Column("app_id", sa.String(32), nullable=True),
        sa.Column("flow_url", sa.String(512), nullable=True),
        sa.Column("custom_field", sa.String(128), nullable=True),
        sa.Column("time_limit", sa.Integer(), nullable=True),
        sa.Column("time_out", sa.Integer(), nullable=True),
        sa.Column("recording_url", sa.Text(), nullable=True),
        sa.Column("duration", sa.Integer(), nullable=True),
        sa.Column("conversation_duration", sa.Integer(), nullable=True),
        sa.Column("date_updated", Instant, nullable=True),
        sa.Column("date_updated_raw", sa.String(32), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_exotel_status", sa.Integer(), nullable=True),
        sa.Column("error_exotel_code", sa.Integer(), nullable=True),
        sa.Column("created_at", Instant, nullable=False),
        sa.Column("dispatched_at", Instant, nullable=True),
        sa.Column("updated_at", Instant, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_call")),
        sa.UniqueConstraint("sid", name=op.f("uq_call_sid")),
    )
    op.create_index("ix_call_created_at_id", "call", ["created_at", "id"])
    op.create_index("ix_call_from_number_created_at", "call", ["from_number", "created_at"])
    op.create_index(op.f("ix_call_status"), "call", ["status"])

    op.create_table(
        "call_event",
        sa.Column(
            "id",
            sa.BigInteger(),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("call_id", sa.Uuid(), nullable=True),
        sa.Column("sid", sa.String(64), nullable=True),
        sa.Column("received_at", Instant, nullable=False),
        sa.Column("content_type", sa.String(100), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("status", sa.String(32), nullable=True),
        sa.Column("event_type", sa.String(32), nullable=True),
        sa.Column("recording_url", sa.Text(), nullable=True),
        sa.Column("date_updated", Instant, nullable=True),
        sa.Column("date_updated_raw", sa.String(32), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.ForeignKeyConstraint(
            ["call_id"], ["call.id"], name=op.f("fk_call_event_call_id_call"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_call_event")),
    )
    op.create_index(op.f("ix_call_event_call_id"), "call_event", ["call_id"])
    op.create_index(op.f("ix_call_event_sid"), "call_event", ["sid"])


def downgrade() -> None:
    op.drop_table("call_event")
    op.drop_table("call")
