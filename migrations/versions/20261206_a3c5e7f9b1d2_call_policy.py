"""Calls on a policy: a call's schedule, retries and window (`not_before`, `expires_at`,
`retry`, `window`, `max_attempts`), its attempts, price and cancellation; `dial` (each
`Calls/connect` request, for the per-number limit and the SIDs of earlier attempts); `opt_out`;
the attempt a received record was about. The queue's own time and count become `next_attempt_at` and
`send_tries`.

Revision ID: a3c5e7f9b1d2
Revises: f2b4d6e8a0c1
Create Date: 2026-12-06 08:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "a3c5e7f9b1d2"
down_revision: str | None = "f2b4d6e8a0c1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("call", "not_before", new_column_name="next_attempt_at")
    op.alter_column("call", "attempts", new_column_name="send_tries")
    op.add_column("call", sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
    op.add_column("call", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("call", sa.Column("retry", postgresql.JSONB(), nullable=True))
    op.add_column("call", sa.Column("window", postgresql.JSONB(), nullable=True))
    op.add_column(
        "call", sa.Column("max_attempts", sa.Integer(), nullable=False, server_default="1")
    )
    op.add_column(
        "call",
        sa.Column("attempts", postgresql.JSONB(), nullable=False, server_default="[]"),
    )
    op.add_column("call", sa.Column("price", sa.Numeric(12, 4), nullable=True))
    op.add_column("call", sa.Column("canceled_at", sa.DateTime(timezone=True), nullable=True))
    # Calls made before had one attempt each: its record, from the call's own columns, its
    # times in UTC as the service writes them; one that ended, ended by its last change.
    op.execute(
        """
        UPDATE call SET attempts = jsonb_build_array(jsonb_build_object(
            'n', 1, 'sid', sid, 'status', status,
            'dispatched_at', to_char(dispatched_at AT TIME ZONE 'UTC',
                                     'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
            'ended_at', CASE WHEN status IN ('completed', 'failed', 'busy', 'no-answer',
                                             'canceled', 'rejected')
                        THEN to_char(updated_at AT TIME ZONE 'UTC',
                                     'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"') END,
            'duration', duration,
            'error', CASE WHEN error_code IS NULL THEN NULL ELSE jsonb_build_object(
                'code', error_code, 'message', error_message,
                'exotel_status', error_exotel_status, 'exotel_code', error_exotel_code) END,
            'price', NULL))
        WHERE status <> 'queued' OR claimed_by IS NOT NULL
        """
    )
    op.create_index(
        "ix_call_scheduled_next_attempt_at",
        "call",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'scheduled'"),
    )
    op.create_table(
        "dial",
        sa.Column("call_id", sa.Uuid(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("number", sa.String(20), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sid", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(
            ["call_id"], ["call.id"], name=op.f("fk_dial_call_id_call"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("call_id", "n", name=op.f("pk_dial")),
        sa.UniqueConstraint("sid", name=op.f("uq_dial_sid")),
    )
    op.create_index("ix_dial_number_sent_at", "dial", ["number", "sent_at"])
    op.execute(
        """
        INSERT INTO dial (call_id, n, number, sent_at, sid)
        SELECT id, 1, from_number, COALESCE(dispatched_at, claimed_at, created_at), sid
        FROM call WHERE status <> 'queued' OR claimed_by IS NOT NULL
        """
    )
    op.create_table(
        "opt_out",
        sa.Column("number", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_opt_out")),
    )
    op.create_index("ix_opt_out_created_at_number", "opt_out", ["created_at", "number"])
    op.add_column("call_event", sa.Column("attempt", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("call_event", "attempt")
    op.drop_table("opt_out")
    op.drop_table("dial")
    op.drop_index("ix_call_scheduled_next_attempt_at", table_name="call")
    for column in (
        "canceled_at",
        "price",
        "attempts",
        "max_attempts",
        "window",
        "retry",
        "expires_at",
    ):
        op.drop_column("call", column)
    op.drop_column("call", "not_before")
    op.alter_column("call", "send_tries", new_column_name="attempts")
    op.alter_column("call", "next_attempt_at", new_column_name="not_before")
