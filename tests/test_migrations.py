"""Migrations apply on SQLite and PostgreSQL and agree with the models."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.util.exc import CommandError
from sqlalchemy import JSON, bindparam, inspect, text

from app.core.db import create_engine
from app.core.migrate import alembic_config, check, is_at_head
from app.models import Base
from app.provider.pricing import estimate_credits


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


async def test_tasks_made_before_0008_get_their_estimate(database_url: str) -> None:
    """0008: earlier tasks are priced from quality, size and references; refused ones cost 0."""
    config = alembic_config(database_url)
    await asyncio.to_thread(command.downgrade, config, "0007")
    engine = create_engine(database_url)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    rows = {
        # id: (quality, size, image_urls, reference rows, status, error_code)
        "t-plain": ("high", "1024x1024", [], 0, "succeeded", None),
        "t-urls": (
            "low",
            "2:3",
            ["https://a.test/1.png", "https://a.test/2.png"],
            0,
            "queued",
            None,
        ),
        "t-rows": ("medium", "3:2", ["https://a.test/1.png"], 3, "pending", None),
        "t-refused": ("high", "1:1", [], 0, "failed", "submission_rejected"),
    }
    try:
        async with engine.begin() as connection:
            for task_id, (quality, size, urls, references, status, code) in rows.items():
                await connection.execute(
                    text(
                        "INSERT INTO tasks (id, caller, request_hash, model, prompt, size, quality,"
                        " image_urls, n, metadata, status, progress, error_code, callback_nonce,"
                        " submit_state, submit_attempts, created_at, updated_at) VALUES (:id,"
                        " 'alpha', 'h', 'gpt-image-1.5', 'p', :size, :quality, :urls, 1, :meta,"
                        " :status, 0, :code, 'n', 'none', 0, :now, :now)"
                    ).bindparams(bindparam("urls", type_=JSON), bindparam("meta", type_=JSON)),
                    {
                        "id": task_id,
                        "size": size,
                        "quality": quality,
                        "urls": urls,
                        "meta": {},
                        "status": status,
                        "code": code,
                        "now": now,
                    },
                )
                for position in range(references):
                    await connection.execute(
                        text(
                            "INSERT INTO task_references (task_id, position, source, url)"
                            " VALUES (:id, :position, 'url', 'https://a.test/x.png')"
                        ),
                        {"id": task_id, "position": position},
                    )
        await asyncio.to_thread(command.upgrade, config, "head")
        async with engine.connect() as connection:
            found = {
                row[0]: (round(row[1], 4), row[2])
                for row in await connection.execute(
                    text("SELECT id, credits, credits_source FROM tasks")
                )
            }
    finally:
        await engine.dispose()

    assert found == {
        "t-plain": (estimate_credits("high", "1:1", 0), "estimate"),
        "t-urls": (estimate_credits("low", "2:3", 2), "estimate"),
        "t-rows": (estimate_credits("medium", "3:2", 3), "estimate"),
        "t-refused": (0.0, "provider"),
    }
