"""The outbox: `event` (every applied change of a call), `webhook_endpoint`, `delivery` (an event
owed to an endpoint), `delivery_attempt`; call.event_sequence (the sequence of its latest event)

Revision ID: a6b8c0d2e4f6
Revises: f5a7b9c1d3e5
Create Date: 2026-12-01 16:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a6b8c0d2e4f6"
down_revision: str | None = "f5a7b9c1d3e5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger()
_AT = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "webhook_endpoint",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("event_types", sa.JSON(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("previous_secrets", sa.JSON(), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("updated_at", _AT, nullable=False),
        sa.Column("last_success_at", _AT, nullable=True),
        sa.Column("failing_since", _AT, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoint")),
    )
    op.create_table(
        "event",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("public_id", sa.String(40), nullable=False),
        sa.Column("txid", sa.BigInteger(), nullable=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("call_id", sa.Uuid(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["call_id"], ["call.id"], name=op.f("fk_event_call_id_call"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event")),
        sa.UniqueConstraint("call_id", "sequence", name=op.f("uq_event_call_id")),
        sa.UniqueConstraint("public_id", name=op.f("uq_event_public_id")),
        # Ids only ever grow, even once retention has emptied the table: they are cursors.
    )
    op.create_index(op.f("ix_event_created_at"), "event", ["created_at"])
    op.create_index("ix_event_txid_id", "event", ["txid", "id"])
    op.create_table(
        "delivery",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("event_id", _ID, nullable=False),
        sa.Column("endpoint_id", sa.Uuid(), nullable=False),
        sa.Column("call_id", sa.Uuid(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _AT, nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        sa.Column("claimed_at", _AT, nullable=True),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("finished_at", _AT, nullable=True),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoint.id"],
            name=op.f("fk_delivery_endpoint_id_webhook_endpoint"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["event_id"], ["event.id"], name=op.f("fk_delivery_event_id_event"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery")),
        sa.UniqueConstraint("event_id", "endpoint_id", name=op.f("uq_delivery_event_id")),
    )
    op.create_index(
        "ix_delivery_endpoint_id_call_id_sequence",
        "delivery",
        ["endpoint_id", "call_id", "sequence"],
    )
    op.create_index("ix_delivery_state_next_attempt_at", "delivery", ["state", "next_attempt_at"])
    op.create_table(
        "delivery_attempt",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("delivery_id", _ID, nullable=False),
        sa.Column("endpoint_id", sa.Uuid(), nullable=False),
        sa.Column("attempted_at", _AT, nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["delivery.id"],
            name=op.f("fk_delivery_attempt_delivery_id_delivery"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoint.id"],
            name=op.f("fk_delivery_attempt_endpoint_id_webhook_endpoint"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_attempt")),
    )
    op.create_index(op.f("ix_delivery_attempt_delivery_id"), "delivery_attempt", ["delivery_id"])
    op.create_index("ix_delivery_attempt_endpoint_id_id", "delivery_attempt", ["endpoint_id", "id"])
    # Calls already there have produced no event yet.
    with op.batch_alter_table("call") as batch_op:
        batch_op.add_column(
            sa.Column("event_sequence", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("call") as batch_op:
        batch_op.alter_column("event_sequence", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("call") as batch_op:
        batch_op.drop_column("event_sequence")
    op.drop_table("delivery_attempt")
    op.drop_table("delivery")
    op.drop_table("event")
    op.drop_table("webhook_endpoint")
