"""Migrations apply on SQLite and PostgreSQL and agree with the models."""

from __future__ import annotations

import asyncio

from alembic.util.exc import CommandError
from sqlalchemy import inspect

from app.core.db import create_engine
from app.core.migrate import check, is_at_head
from app.models import Base


async def test_models_and_migrations_agree(database_url: str) -> None:
    # `alembic check` raises when autogenerate would write a new migration.
    try:
        await asyncio.to_thread(check, database_url)
    except CommandError as exc:  # pragma: no cover - the failure message is the point
        raise AssertionError(f"models and migrations disagree: {exc}") from exc


async def test_every_table_exists_and_schema_is_at_head(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
            at_head = await connection.run_sync(lambda c: is_at_head(c, database_url))
    finally:
        await engine.dispose()

    assert set(Base.metadata.tables) <= tables
    assert at_head
