"""How PostgreSQL plans the console's queries on a filled database: 50k tasks over 30 days (five
callers, mixed statuses) and four timeline events each, with the console indexes of migration
0004 and without them.

    .venv/bin/python -m bench.console_explain [--tasks 50000]

Runs the real functions of app/console/repository.py, records the SQL each sends and prints
`EXPLAIN (ANALYZE, BUFFERS)` of it. Uses IMAGEGEN_TEST_DATABASE_URL's server (a scratch database
is created and dropped)."""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.console import repository
from app.core.clock import utcnow
from app.core.db import create_engine
from app.core.migrate import upgrade
from tests.support.databases import admin_execute, with_database

FILL = """
INSERT INTO tasks (id, caller, request_hash, model, prompt, size, quality, image_urls, n,
    metadata, status, progress, callback_nonce, submit_state, submit_attempts, created_at,
    updated_at, completed_at, error_code)
SELECT gen_random_uuid()::text, 'caller' || (i % 5), md5(i::text), 'gpt-image-1', 'prompt ' || i,
    '1:1', 'auto', '[]', 1, '{}',
    (ARRAY['succeeded','succeeded','succeeded','failed','queued','pending','archiving'])[1 + i % 7],
    100, md5(i::text), 'accepted', 1, t, t, t + interval '1 minute',
    CASE WHEN i % 7 = 3 THEN 'provider_error' END
FROM generate_series(1, :n) AS i,
    LATERAL (SELECT now() - (i::float / :n) * interval '30 days' AS t) AS at;
INSERT INTO task_events (task_id, at, kind, source, outcome, to_status)
SELECT id, created_at + k * interval '10 seconds',
    (ARRAY['submit','poll','transition','archive'])[k],
    (ARRAY['worker','poll','poll','worker'])[k],
    (ARRAY['accepted','retry',NULL,'stored'])[k],
    CASE WHEN k = 3 THEN status END
FROM tasks, generate_series(1, 4) AS k;
ANALYZE tasks;
ANALYZE task_events;
"""
INDEXES = ("ix_tasks_created", "ix_task_events_kind_at")  # migration 0004


async def explain(
    connection: AsyncConnection,
    title: str,
    call: Callable[[AsyncSession], Awaitable[Any]],
) -> None:
    """Run `call`, then EXPLAIN ANALYZE every statement it sent."""
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        sent.append((statement, params))

    event.listen(connection.sync_connection, "before_cursor_execute", record)
    try:
        await call(AsyncSession(bind=connection))
    finally:
        event.remove(connection.sync_connection, "before_cursor_execute", record)
    for statement, params in sent:
        result = await connection.exec_driver_sql(
            f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {statement}", params
        )
        print(f"--- {title}")
        for (line,) in result:
            print(line)


async def report(connection: AsyncConnection) -> None:
    now = utcnow()
    day, hour = now - timedelta(days=1), now - timedelta(hours=1)
    deep = await connection.execute(
        text("SELECT created_at, id FROM tasks ORDER BY created_at DESC, id DESC OFFSET 25000")
    )
    cursor = tuple(deep.first() or ())
    await explain(
        connection,
        "list, first page, any time",
        lambda s: repository.list_tasks(s, repository.TaskFilter(), limit=51, before=None),
    )
    await explain(
        connection,
        "list, page 501 (cursor after 25000 rows), any time",
        lambda s: repository.list_tasks(s, repository.TaskFilter(), limit=51, before=cursor),
    )
    await explain(
        connection,
        "list, status=failed, last 7 days",
        lambda s: repository.list_tasks(
            s,
            repository.TaskFilter(status="failed", since=now - timedelta(days=7)),
            limit=51,
            before=None,
        ),
    )
    await explain(connection, "list: callers for the filter form", repository.callers)
    await explain(
        connection, "overview: status counts, 24 h", lambda s: repository.status_counts(s, day)
    )
    await explain(
        connection,
        "overview: upstream failures, 24 h",
        lambda s: repository.upstream_failures(s, day),
    )
    await explain(
        connection,
        "overview: recovered by polling, 1 h",
        lambda s: repository.recovered_by_polling(s, hour),
    )


async def main(tasks: int) -> None:
    server = os.environ["IMAGEGEN_TEST_DATABASE_URL"]
    name = f"imagegen_explain_{uuid.uuid4().hex[:10]}"
    await admin_execute(server, f'CREATE DATABASE "{name}"')
    url = with_database(server, name)
    try:
        await asyncio.to_thread(upgrade, url)
        engine = create_engine(url)
        async with engine.connect() as connection:
            for statement in FILL.split(";\n"):
                if statement.strip():
                    await connection.execute(text(statement), {"n": tasks})
            await connection.commit()
            print(f"===== with the console indexes ({tasks} tasks, {4 * tasks} events)")
            await report(connection)
            for index in INDEXES:
                await connection.exec_driver_sql(f"DROP INDEX {index}")
            await connection.commit()
            print("===== without them")
            await report(connection)
        await engine.dispose()
    finally:
        await admin_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=50_000)
    asyncio.run(main(parser.parse_args().tasks))
