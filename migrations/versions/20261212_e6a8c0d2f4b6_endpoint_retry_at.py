"""webhook_endpoint.retry_at: when an endpoint that has failed for over a minute is tried next.

Until it answers, such an endpoint is tried by one delivery at a time, no sooner than this; its
other deliveries wait, their attempts unspent. Before, each owed delivery was retried on its
own schedule: an endpoint that was down cost an attempt for every call it was owed.

Revision ID: e6a8c0d2f4b6
Revises: d5f7b9c1e3a5
Create Date: 2026-12-12 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e6a8c0d2f4b6"
down_revision: str | None = "d5f7b9c1e3a5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("webhook_endpoint", sa.Column("retry_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("webhook_endpoint", "retry_at")
