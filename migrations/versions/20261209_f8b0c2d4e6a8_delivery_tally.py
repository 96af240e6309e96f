"""delivery_tally: the deliveries owed (pending, sending) counted by endpoint and state, kept by
triggers on `delivery` as `call_tally` is on `call`; and the owed deliveries indexed by endpoint
and age. An endpoint that is down is owed every event until it is disabled (five days of them,
a few million rows at an account's full rate): its backlog was counted on every scrape and
status page (about a microsecond a row owed). The periodic job that folds the tallies is now
called `counts`: its old row goes.

Revision ID: f8b0c2d4e6a8
Revises: e7a9b1c3d5f7
Create Date: 2026-12-09 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f8b0c2d4e6a8"
down_revision: str | None = "e7a9b1c3d5f7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OWED = "state IN ('pending', 'sending')"

# A row of +n or -n for each change, as for `call_tally`: no writer waits on another's count.
_FUNCTIONS = [
    """
CREATE FUNCTION delivery_tally_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO delivery_tally (endpoint_id, state, deliveries)
    SELECT endpoint_id, state, count(*) FROM inserted
    WHERE state IN ('pending', 'sending') GROUP BY 1, 2;
    RETURN NULL;
END $$
    """,
    """
CREATE FUNCTION delivery_tally_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO delivery_tally (endpoint_id, state, deliveries)
    SELECT endpoint_id, state, -count(*) FROM deleted
    WHERE state IN ('pending', 'sending') GROUP BY 1, 2;
    RETURN NULL;
END $$
    """,
    """
CREATE FUNCTION delivery_tally_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state IN ('pending', 'sending') THEN
        INSERT INTO delivery_tally (endpoint_id, state, deliveries)
        VALUES (OLD.endpoint_id, OLD.state, -1);
    END IF;
    IF NEW.state IN ('pending', 'sending') THEN
        INSERT INTO delivery_tally (endpoint_id, state, deliveries)
        VALUES (NEW.endpoint_id, NEW.state, 1);
    END IF;
    RETURN NULL;
END $$
    """,
]

_TRIGGERS = [
    """
CREATE TRIGGER delivery_tally_inserted AFTER INSERT ON delivery
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT
    EXECUTE FUNCTION delivery_tally_inserted()
    """,
    """
CREATE TRIGGER delivery_tally_deleted AFTER DELETE ON delivery
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT
    EXECUTE FUNCTION delivery_tally_deleted()
    """,
    """
CREATE TRIGGER delivery_tally_moved AFTER UPDATE OF state, endpoint_id ON delivery
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          OR OLD.endpoint_id IS DISTINCT FROM NEW.endpoint_id)
    EXECUTE FUNCTION delivery_tally_moved()
    """,
]
_TRIGGER_NAMES = ("delivery_tally_inserted", "delivery_tally_deleted", "delivery_tally_moved")


def upgrade() -> None:
    op.create_table(
        "delivery_tally",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("endpoint_id", sa.Uuid(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("deliveries", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_tally")),
        # Rows come and go every few seconds: vacuumed after a few thousand dead ones.
        postgresql_with={
            "autovacuum_vacuum_scale_factor": "0",
            "autovacuum_vacuum_threshold": "5000",
            "autovacuum_vacuum_insert_scale_factor": "0",
            "autovacuum_vacuum_insert_threshold": "5000",
        },
    )
    for statement in _FUNCTIONS:
        op.execute(statement)
    # The triggers first: their lock holds every writer of `delivery` back until this commits,
    # so the count below and the triggers' rows after it are of the same deliveries.
    for statement in _TRIGGERS:
        op.execute(statement)
    for trigger in _TRIGGER_NAMES:
        op.execute(f"ALTER TABLE delivery ENABLE ALWAYS TRIGGER {trigger}")
    op.execute(
        """
        INSERT INTO delivery_tally (endpoint_id, state, deliveries)
        SELECT endpoint_id, state, count(*) FROM delivery
        WHERE state = 'pending' OR state = 'sending' GROUP BY 1, 2
        """
    )
    op.execute("DELETE FROM periodic WHERE name = 'call counts'")
    with op.get_context().autocommit_block():
        # Concurrently, so that deliveries are written while it is built on a large table; a
        # build cut short leaves an invalid index of the name: built afresh.
        op.drop_index(
            "ix_delivery_owed", table_name="delivery", postgresql_concurrently=True, if_exists=True
        )
        op.create_index(
            "ix_delivery_owed",
            "delivery",
            ["endpoint_id", "created_at"],
            postgresql_where=sa.text(_OWED),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    op.drop_index("ix_delivery_owed", table_name="delivery")
    for trigger in _TRIGGER_NAMES:
        op.execute(f"DROP TRIGGER {trigger} ON delivery")
    for function in _TRIGGER_NAMES:
        op.execute(f"DROP FUNCTION {function}()")
    op.drop_table("delivery_tally")
    op.execute("DELETE FROM periodic WHERE name = 'counts'")
