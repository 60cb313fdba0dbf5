"""Migrations apply on SQLite and PostgreSQL and agree with the models."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from alembic import command
from alembic.util.exc import CommandError
from sqlalchemy import inspect

from app.core.db import create_engine
from app.core.migrate import alembic_config, check, is_at_head
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


def test_old_notification_errors_move_out_of_the_callers_view(tmp_path: Path) -> None:
    """0006: network detail recorded by earlier notify attempts is left to operators."""
    path = tmp_path / "old.db"
    config = alembic_config(f"sqlite+aiosqlite:///{path}")
    command.upgrade(config, "0005")
    old = {
        "refused: h.test resolves only to forbidden addresses (10.0.0.7)": (
            "notify_url resolves to a non-public address"
        ),
        "cannot reach h.test: cannot resolve h.test: [Errno -2] Name or service not known": (
            "could not connect to the notify_url"
        ),
        "h.test did not answer within the timeout": (
            "the notify_url did not answer within the timeout"
        ),
        "answered 500": "answered 500",
    }
    now = "2026-12-01 00:00:00"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for n, message in enumerate(old):
            db.execute(
                "INSERT INTO task_events (task_id, at, kind, source, outcome, message)"
                " VALUES (?, ?, 'notify', 'notify', 'error', ?)",
                (f"t{n}", now, message),
            )
            db.execute(
                "INSERT INTO notifications (id, task_id, type, state, series, attempts,"
                " last_error, created_at, updated_at)"
                " VALUES (?, ?, 'task.failed', 'failed', 1, 1, ?, ?, ?)",
                (f"msg_{n}", f"t{n}", message, now, now),
            )
        db.execute(
            "INSERT INTO task_events (task_id, at, kind, source, message)"
            " VALUES ('t9', ?, 'archive', 'archive', 'cannot reach cdn.test: refused')",
            (now,),
        )
    command.upgrade(config, "head")
    with contextlib.closing(sqlite3.connect(path)) as db:
        events = db.execute(
            "SELECT message, operator_message FROM task_events ORDER BY id"
        ).fetchall()
        errors = db.execute("SELECT last_error FROM notifications ORDER BY id").fetchall()

    moved = [(new, None if new == message else message) for message, new in old.items()]
    assert events == [*moved, ("cannot reach cdn.test: refused", None)]  # not a notification's
    assert errors == [(new,) for new in old.values()]
