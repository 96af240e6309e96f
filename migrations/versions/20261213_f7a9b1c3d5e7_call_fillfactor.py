"""`call` fills its pages to 80%, so that a call's later versions stay on its page.

A call is changed several times in its first minutes (claimed, sent, ended, then its
recording and its price), each change a new version of its row, and no HOT update when its
status changes (the status is indexed). From a full page each new version went where the free
space map pointed: on a history larger than memory, a page of its own, read from disk, for
nearly every callback. The room left on each page takes two versions of a call, and the
page's own pruning frees the older ones.

Only the pages written from now on are filled to 80%. The table needs no rewrite: its full
pages hold calls that no longer change, and new calls go to pages with room.

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
