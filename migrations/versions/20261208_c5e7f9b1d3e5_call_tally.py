"""call_tally: the calls counted by the hour they were made in, their status and their
recording's, kept by triggers on `call`, so that the status page and the metrics read a few
hundred rows instead of counting every call.

Revision ID: c5e7f9b1d3e5
Revises: b4d6f8a0c2e4
Create Date: 2026-12-08 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c5e7f9b1d3e5"
down_revision: str | None = "b4d6f8a0c2e4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each change adds a row (+n or -n): nothing is locked but the new row, so writers never wait on
# one another for a count. `app.calls.counts.fold` sums the rows now and then.
_FUNCTIONS = [
    """
CREATE FUNCTION call_tally_hour(made timestamptz) RETURNS timestamptz
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT date_trunc('hour', made, 'UTC') $$
    """,
    """
CREATE FUNCTION call_tally_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO call_tally (hour, status, recording_status, calls)
    SELECT call_tally_hour(created_at), status, recording_status, count(*)
    FROM inserted GROUP BY 1, 2, 3;
    RETURN NULL;
END $$
    """,
    """
CREATE FUNCTION call_tally_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO call_tally (hour, status, recording_status, calls)
    SELECT call_tally_hour(created_at), status, recording_status, -count(*)
    FROM deleted GROUP BY 1, 2, 3;
    RETURN NULL;
END $$
    """,
    """
CREATE FUNCTION call_tally_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO call_tally (hour, status, recording_status, calls) VALUES
        (call_tally_hour(OLD.created_at), OLD.status, OLD.recording_status, -1),
        (call_tally_hour(NEW.created_at), NEW.status, NEW.recording_status, 1);
    RETURN NULL;
END $$
    """,
]

# An insert or a delete is counted once a statement (a batch of 1,000 calls adds a few rows);
# an update only when it moves a call from one count to another, which most updates do not.
_TRIGGERS = [
    """
CREATE TRIGGER call_tally_inserted AFTER INSERT ON call
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION call_tally_inserted()
    """,
    """
CREATE TRIGGER call_tally_deleted AFTER DELETE ON call
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION call_tally_deleted()
    """,
    """
CREATE TRIGGER call_tally_moved AFTER UPDATE OF status, recording_status, created_at ON call
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.recording_status IS DISTINCT FROM NEW.recording_status
          OR OLD.created_at IS DISTINCT FROM NEW.created_at)
    EXECUTE FUNCTION call_tally_moved()
    """,
]
_TRIGGER_NAMES = ("call_tally_inserted", "call_tally_deleted", "call_tally_moved")


def upgrade() -> None:
    op.create_table(
        "call_tally",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("recording_status", sa.String(16), nullable=True),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_call_tally")),
        # Rows come and go every few seconds: vacuumed after a few thousand dead ones, not
        # after a fifth of a table that is small by design.
        postgresql_with={
            "autovacuum_vacuum_scale_factor": "0",
            "autovacuum_vacuum_threshold": "5000",
            "autovacuum_vacuum_insert_scale_factor": "0",
            "autovacuum_vacuum_insert_threshold": "5000",
        },
    )
    op.create_index("ix_call_tally_hour", "call_tally", ["hour"])
    for statement in _FUNCTIONS:
        op.execute(statement)
    # The triggers first: their lock holds every writer of `call` back until this commits, so the
    # count below and the triggers' rows after it are of the same calls.
    for statement in _TRIGGERS:
        op.execute(statement)
    for trigger in _TRIGGER_NAMES:
        # Also when rows are written as a replica (`session_replication_role`): a logical
        # replica's calls, or a bulk load that skips the foreign keys' checks, are counted too.
        op.execute(f"ALTER TABLE call ENABLE ALWAYS TRIGGER {trigger}")
    op.execute(
        """
        INSERT INTO call_tally (hour, status, recording_status, calls)
        SELECT call_tally_hour(created_at), status, recording_status, count(*)
        FROM call GROUP BY 1, 2, 3
        """
    )


def downgrade() -> None:
    for trigger in _TRIGGER_NAMES:
        op.execute(f"DROP TRIGGER {trigger} ON call")
    for function in (
        "call_tally_moved()",
        "call_tally_deleted()",
        "call_tally_inserted()",
        "call_tally_hour(timestamptz)",
    ):
        op.execute(f"DROP FUNCTION {function}")
    op.drop_table("call_tally")
