"""Shared fixtures: real SQLite and PostgreSQL databases, settings, servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import databases
from tests.support.s3 import S3Server, running_s3

ALPHA_KEY = "alpha-key-0123456789abcdef"
BETA_KEY = "beta-key-0123456789abcdef"
CALLBACK_SECRET = "test-callback-secret-0123456789abcdefghij"
CONSOLE_SECRET = "test-console-secret-0123456789abcdefghijk"
SIMULATOR_KEY = "sk-evo-simulator"
NOTIFY_SECRET = "whsec_aW1hZ2VnZW4tdGVzdHMtbm90aWZ5LXNlY3JldC0zMmI="


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """Admin URL of the PostgreSQL server the tests use."""
    url, server = databases.postgres_server_url()
    yield url
    if server is not None:
        server.cleanup()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
async def postgres_template(postgres_server: str) -> AsyncIterator[str]:
    """A database migrated once per run, copied for each test."""
    name = await databases.create_postgres_template(postgres_server)
    yield name
    await databases.admin_execute(postgres_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per run."""
    return databases.create_sqlite_template(tmp_path_factory.mktemp("sqlite-template"))


@pytest.fixture
async def pg_database_url(postgres_server: str, postgres_template: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL database at head, dropped afterwards."""
    url = await databases.create_postgres_database(postgres_server, postgres_template)
    yield url
    await databases.drop_postgres_database(postgres_server, url)


@pytest.fixture
def sqlite_database_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A fresh SQLite database at head."""
    return databases.copy_sqlite(sqlite_template, tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The same test on SQLite and on PostgreSQL."""
    name = "sqlite_database_url" if request.param == "sqlite" else "pg_database_url"
    url: str = request.getfixturevalue(name)
    return url


def settings_values(
    database_url: str,
    *,
    provider_url: str = "http://127.0.0.1:9",
    public_base_url: str = "http://127.0.0.1:9",
    **overrides: Any,
) -> dict[str, Any]:
    """Settings of a gateway wired to a simulator, for tests."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "storage_url": "memory://",
        "provider": "evolink",
        "provider_base_url": provider_url,
        "provider_api_key": SIMULATOR_KEY,
        "public_base_url": public_base_url,
        "callback_secret": CALLBACK_SECRET,
        "console_secret": CONSOLE_SECRET,
        "api_keys": f"alpha:{ALPHA_KEY},beta:{BETA_KEY}",
        "notify_secret": NOTIFY_SECRET,
        "allow_private_networks": True,
        "run_workers": False,
        "poll_after_seconds": 1,
        "log_level": "INFO",
    }
    values.update(overrides)
    return values


def auth(key: str = ALPHA_KEY) -> dict[str, str]:
    """Authorization header of a caller."""
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server for the whole run."""
    with running_s3() as server:
        yield server
