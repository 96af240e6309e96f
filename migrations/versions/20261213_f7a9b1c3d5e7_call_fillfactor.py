"""`call` fills its pages to 80%, so that a call's next versions find room on its page.

Under a load of callbacks a full page cannot free a call's older versions in time, and each new
one went where the free space map pointed: on a history larger than memory, a page read from
disk. Only the pages written from now on leave room: docs/database.md, "Room on a call's page".

Revision ID: f7a9b1c3d5e7
Revises: e6a8c0d2f4b6
Create Date: 2026-12-13 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "f7a9b1c3d5e7"
down_revision: str | None = "e6a8c0d2f4b6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE call SET (fillfactor = 80)")


def downgrade() -> None:
    op.execute("ALTER TABLE call RESET (fillfactor)")
