"""Alembic, driven from the app: the only way the schema is made, in tests too."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(database_url: str, *, pgbouncer: bool = False) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Passed as an attribute rather than an ini option: ini options interpolate `%`, which URLs
    # with escaped passwords contain.
    config.attributes["database_url"] = database_url
    config.attributes["pgbouncer"] = pgbouncer
    return config


def upgrade(database_url: str, revision: str = "head", *, pgbouncer: bool = False) -> None:
    command.upgrade(alembic_config(database_url, pgbouncer=pgbouncer), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


@functools.cache  # read from the migration files once
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert head is not None, "no migrations"
    return head
