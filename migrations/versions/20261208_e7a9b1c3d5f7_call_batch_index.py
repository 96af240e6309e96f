"""The calls of a batch indexed newest first: `GET /calls?batch_id=` read every call of the batch
and sorted them for each page (214 ms a page at a million calls, against 6 ms on an empty
database). Built concurrently, so that calls are written while it is built on a large table;
the index it replaces is dropped after.

Revision ID: e7a9b1c3d5f7
Revises: d6f8a0b2c4e6
Create Date: 2026-12-08 11:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "e7a9b1c3d5f7"
down_revision: str | None = "d6f8a0b2c4e6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _replace(old: str, new: str, columns: list[str]) -> None:
    with op.get_context().autocommit_block():
        # A build cut short leaves an invalid index of the name: built afresh.
        op.drop_index(new, table_name="call", postgresql_concurrently=True, if_exists=True)
        op.create_index(new, "call", columns, postgresql_concurrently=True)
        op.drop_index(old, table_name="call", postgresql_concurrently=True, if_exists=True)


def upgrade() -> None:
    _replace("ix_call_batch_id", "ix_call_batch_id_created_at_id", ["batch_id", "created_at", "id"])


def downgrade() -> None:
    _replace("ix_call_batch_id_created_at_id", "ix_call_batch_id", ["batch_id"])
