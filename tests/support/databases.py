"""Real databases for tests: a migrated template, copied for every test."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from app.core.migrate import upgrade

ENV_URL = "IMAGEGEN_TEST_DATABASE_URL"


def postgres_server_url() -> tuple[str, object | None]:
    """(SQLAlchemy URL of an admin database, server handle to stop or None).

    The server at IMAGEGEN_TEST_DATABASE_URL when set; otherwise a throwaway one from pgserver."""
    given = os.environ.get(ENV_URL)
    if given:
        return given, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pgserver

    data_dir = tempfile.mkdtemp(prefix="imagegen-pg-")
    server = pgserver.get_server(data_dir, cleanup_mode="delete")  # type: ignore[attr-defined]
    uri = make_url(server.get_uri())
    url = uri.set(drivername="postgresql+asyncpg")
    return url.render_as_string(hide_password=False), server


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name`."""
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _asyncpg_args(url: str) -> dict[str, object]:
    parsed = make_url(url)
    args: dict[str, object] = {
        "user": parsed.username or "postgres",
        "database": parsed.database or "postgres",
    }
    if parsed.password:
        args["password"] = parsed.password
    host = parsed.query.get("host") or parsed.host or "127.0.0.1"
    args["host"] = host if isinstance(host, str) else host[0]
    if parsed.port:
        args["port"] = parsed.port
    return args


async def admin_execute(url: str, *statements: str) -> None:
    """Run statements outside a transaction (CREATE/DROP DATABASE)."""
    connection = await asyncpg.connect(**_asyncpg_args(url))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def create_postgres_template(server_url: str) -> str:
    """A database migrated to head, to copy from; returns its name."""
    name = f"imagegen_tmpl_{uuid.uuid4().hex[:10]}"
    await admin_execute(server_url, f'CREATE DATABASE "{name}"')
    await asyncio.to_thread(upgrade, with_database(server_url, name))
    return name


async def create_postgres_database(server_url: str, template: str) -> str:
    """A fresh copy of the template; returns its URL."""
    name = f"imagegen_t_{uuid.uuid4().hex[:12]}"
    await admin_execute(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return with_database(server_url, name)


async def drop_postgres_database(server_url: str, database_url: str) -> None:
    """Drop a test database, closing whatever still holds it."""
    name = make_url(database_url).database
    await admin_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_sqlite_template(directory: Path) -> Path:
    """A SQLite file migrated to head."""
    path = directory / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


def copy_sqlite(template: Path, directory: Path) -> str:
    """A fresh copy of the SQLite template; returns its URL."""
    path = directory / f"{uuid.uuid4().hex[:12]}.db"
    shutil.copyfile(template, path)
    return f"sqlite+aiosqlite:///{path}"
