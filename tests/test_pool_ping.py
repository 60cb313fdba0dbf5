"""The pool's check before each checkout on PostgreSQL (`app.core.db._asyncpg_ping`): one `;`
outside a transaction, and a connection the server killed is replaced, never handed out."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from app.core.db import create_engine, create_sessionmaker


async def test_a_connection_the_server_killed_is_replaced_before_use(pg_database_url: str) -> None:
    engine = create_engine(pg_database_url, pool_size=1, max_overflow=0)
    admin_engine = create_engine(pg_database_url)
    sessions = create_sessionmaker(engine)
    try:
        async with sessions() as session:
            first = await session.scalar(text("SELECT pg_backend_pid()"))
        async with create_sessionmaker(admin_engine)() as admin:
            await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
            await admin.commit()
        # Without a ping this would fail on the dead connection.
        async with sessions() as session:
            second = await session.scalar(text("SELECT pg_backend_pid()"))
        assert second is not None
        assert second != first
    finally:
        await engine.dispose()
        await admin_engine.dispose()


async def test_the_ping_is_one_statement_outside_a_transaction(pg_database_url: str) -> None:
    engine = create_engine(pg_database_url, pool_size=1, max_overflow=0)
    sessions = create_sessionmaker(engine)
    statements: list[str] = []

    def logged(record: Any) -> None:
        statements.append(record.query)

    try:
        pooled = await engine.raw_connection()
        driver = pooled.driver_connection
        assert driver is not None
        driver.add_query_logger(logged)
        pooled.close()  # back to the pool: the next session checks this one out again
        async with sessions() as session:
            await session.execute(text("SELECT 2"))
        # The ping, then the session's own transaction (its prepared SELECT is not logged).
        assert statements == [";", "BEGIN;", "ROLLBACK;"]
    finally:
        await engine.dispose()
