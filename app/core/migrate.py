"""Alembic, driven from code: upgrade to head and compare models with migrations."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

_PACKAGE = Path(__file__).resolve().parents[1]
# Inside the installed package (the wheel maps the repository's migrations/ to app._migrations,
# pyproject.toml), or beside the package in a checkout (editable install); never the working dir.
_CANDIDATES = (_PACKAGE / "_migrations", _PACKAGE.parent / "migrations")


def migrations_dir() -> Path:
    """Where the Alembic scripts are."""
    for candidate in _CANDIDATES:
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError(f"no Alembic scripts in {' or '.join(map(str, _CANDIDATES))}")


def alembic_config(database_url: str) -> Config:
    """Alembic's config pointing at this repository's migrations and `database_url`."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.set_main_option("file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(rev)s_%%(slug)s")
    return config


def upgrade(database_url: str, connection: Connection | None = None) -> None:
    """Bring the schema to head (on `connection` when given, else on a new engine)."""
    config = alembic_config(database_url)
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def check(database_url: str, connection: Connection | None = None) -> None:
    """Raise when the models and the migrations disagree."""
    config = alembic_config(database_url)
    config.attributes["connection"] = connection
    command.check(config)


def is_at_head(connection: Connection, database_url: str) -> bool:
    """Whether the database's revision is the newest migration."""
    script = ScriptDirectory.from_config(alembic_config(database_url))
    current = MigrationContext.configure(connection).get_current_heads()
    return set(current) == set(script.get_heads())
