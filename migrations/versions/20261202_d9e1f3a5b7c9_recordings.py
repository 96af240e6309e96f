"""Recordings archived: the recording's state on the call, the archive's queue
(`recording_job`), and the account's pause after Exotel refused the credentials

Revision ID: d9e1f3a5b7c9
Revises: c8d0e2f4a6b8
Create Date: 2026-12-02 07:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

_AT = sa.DateTime(timezone=True)

revision: str = "d9e1f3a5b7c9"
down_revision: str | None = "c8d0e2f4a6b8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("call") as call:
        call.add_column(sa.Column("recording_status", sa.String(16), nullable=True))
        call.add_column(sa.Column("recording_size", sa.BigInteger(), nullable=True))
        call.add_column(sa.Column("recording_content_type", sa.String(100), nullable=True))
        call.add_column(sa.Column("recording_sha256", sa.String(64), nullable=True))
        call.add_column(
            sa.Column("recording_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        call.add_column(sa.Column("recording_error", sa.Text(), nullable=True))
        call.add_column(sa.Column("recording_archived_at", _AT, nullable=True))
        call.add_column(sa.Column("recording_deleted_at", _AT, nullable=True))
    op.create_index("ix_call_recording_status", "call", ["recording_status"])
    op.create_index(
        "ix_call_recording_archived_at",
        "call",
        ["recording_archived_at"],
        postgresql_where=sa.text("recording_status = 'archived'"),
    )
    op.create_table(
        "recording_job",
        sa.Column("call_id", sa.Uuid(), nullable=False),
        sa.Column("due_at", _AT, nullable=False),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        sa.Column("claimed_at", _AT, nullable=True),
        sa.Column("retries", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("fetches", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("held_path", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["call_id"], ["call.id"], name=op.f("fk_recording_job_call_id_call"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("call_id", name=op.f("pk_recording_job")),
    )
    op.create_index("ix_recording_job_due_at", "recording_job", ["due_at"])
    with op.batch_alter_table("exotel_throttle") as throttle:
        throttle.add_column(sa.Column("recordings_paused_until", _AT, nullable=True))
        throttle.add_column(sa.Column("recordings_paused_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("exotel_throttle") as throttle:
        throttle.drop_column("recordings_paused_reason")
        throttle.drop_column("recordings_paused_until")
    op.drop_index("ix_recording_job_due_at", table_name="recording_job")
    op.drop_table("recording_job")
    op.drop_index("ix_call_recording_archived_at", table_name="call")
    op.drop_index("ix_call_recording_status", table_name="call")
    with op.batch_alter_table("call") as call:
        for name in (
            "recording_deleted_at",
            "recording_archived_at",
            "recording_error",
            "recording_attempts",
            "recording_sha256",
            "recording_content_type",
            "recording_size",
            "recording_status",
        ):
            call.drop_column(name)
