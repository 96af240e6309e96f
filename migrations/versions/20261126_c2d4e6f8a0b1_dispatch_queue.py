"""dispatch queue, shared rate limit, idempotency keys, batches, leases

Revision ID: c2d4e6f8a0b1
Revises: b1bdeef1d2cf
Create Date: 2026-11-26 19:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c2d4e6f8a0b1"
down_revision: str | None = "b1bdeef1d2cf"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Instant = sa.DateTime(timezone=True)
BigId = sa.BigInteger()


def upgrade() -> None:
    op.create_table(
        "batch",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", Instant, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch")),
    )
    with op.batch_alter_table("call") as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(255), nullable=True))
        batch_op.add_column(sa.Column("request_fingerprint", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("batch_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("claimed_by", sa.String(128), nullable=True))
        batch_op.add_column(sa.Column("claimed_at", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("not_before", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("reconciled_at", sa.Double(), nullable=True))
        batch_op.create_unique_constraint(op.f("uq_call_idempotency_key"), ["idempotency_key"])
        batch_op.create_foreign_key(op.f("fk_call_batch_id_batch"), "batch", ["batch_id"], ["id"])
        batch_op.create_index(op.f("ix_call_batch_id"), ["batch_id"])
        batch_op.drop_index("ix_call_status")
        batch_op.create_index("ix_call_status_created_at", ["status", "created_at"])
    with op.batch_alter_table("call") as batch_op:
        batch_op.alter_column("attempts", server_default=None)

    op.create_table(
        "exotel_request",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exotel_request")),
    )
    op.create_index(op.f("ix_exotel_request_at"), "exotel_request", ["at"])
    throttle = op.create_table(
        "exotel_throttle",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("paused_until", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_exotel_throttle")),
    )
    op.bulk_insert(throttle, [{"name": "exotel", "paused_until": None}])
    op.create_table(
        "lease",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_lease")),
    )


def downgrade() -> None:
    op.drop_table("lease")
    op.drop_table("exotel_throttle")
    op.drop_table("exotel_request")
    with op.batch_alter_table("call") as batch_op:
        batch_op.drop_index("ix_call_status_created_at")
        batch_op.create_index("ix_call_status", ["status"])
        batch_op.drop_index(op.f("ix_call_batch_id"))
        batch_op.drop_constraint(op.f("fk_call_batch_id_batch"), type_="foreignkey")
        batch_op.drop_constraint(op.f("uq_call_idempotency_key"), type_="unique")
        for column in (
            "reconciled_at",
            "attempts",
            "not_before",
            "claimed_at",
            "claimed_by",
            "batch_id",
            "request_fingerprint",
            "idempotency_key",
        ):
            batch_op.drop_column(column)
    op.drop_table("batch")
