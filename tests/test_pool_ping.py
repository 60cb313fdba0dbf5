"""The pool's check before each checkout on PostgreSQL (`app.core.db._asyncpg_ping`): one `;`
outside a transaction, none for a connection given back moments ago whose socket is open, and
a connection the server killed is replaced, never handed out."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.db import PING_BYPASS_SECONDS, create_engine, create_sessionmaker
from tests.support.waiting import until


@pytest.mark.parametrize("bypass", [0.0, PING_BYPASS_SECONDS], ids=["always", "bypass"])
async def test_a_connection_the_server_killed_is_replaced_before_use(
    pg_database_url: str, bypass: float
) -> None:
    engine = create_engine(pg_database_url, pool_size=1, max_overflow=0, ping_bypass_seconds=bypass)
    admin_engine = create_engine(pg_database_url)
    sessions = create_sessionmaker(engine)
    try:
        async with sessions() as session:
            first = await session.scalar(text("SELECT pg_backend_pid()"))
            driver = (await (await session.connection()).get_raw_connection()).driver_connection
            assert driver is not None
        async with create_sessionmaker(admin_engine)() as admin:
            await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
            await admin.commit()
        # The server closed the socket: asyncpg sees it, so even a connection given back a
        # moment ago is pinged (and replaced), not handed out on trust.
        await until(driver.is_closed, timeout=5, what="the killed connection seen closed")
        async with sessions() as session:
            second = await session.scalar(text("SELECT pg_backend_pid()"))
        assert second is not None
        assert second != first
    finally:
        await engine.dispose()
        await admin_engine.dispose()


async def _statements_of_a_checkout(engine: AsyncEngine, *, wait: float = 0.0) -> list[str]:
    """What a session sends on a connection given back to the pool `wait` seconds before."""
    statements: list[str] = []

    def logged(record: Any) -> None:
        statements.append(record.query)

    pooled = await engine.raw_connection()
    driver = pooled.driver_connection
    assert driver is not None
    driver.add_query_logger(logged)
    pooled.close()  # back to the pool: the next session checks this one out again
    await asyncio.sleep(wait)
    async with create_sessionmaker(engine)() as session:
        await session.execute(text("SELECT 2"))
    return statements


async def test_the_ping_is_one_statement_outside_a_transaction(pg_database_url: str) -> None:
    engine = create_engine(pg_database_url, pool_size=1, max_overflow=0, ping_bypass_seconds=0)
    try:
        # The ping, then the session's own transaction (its prepared SELECT is not logged).
        assert await _statements_of_a_checkout(engine) == [";", "BEGIN;", "ROLLBACK;"]
    finally:
        await engine.dispose()


async def test_a_connection_given_back_just_now_is_not_pinged(pg_database_url: str) -> None:
    engine = create_engine(pg_database_url, pool_size=1, max_overflow=0)
    try:
        assert await _statements_of_a_checkout(engine) == ["BEGIN;", "ROLLBACK;"]
    finally:
        await engine.dispose()


async def test_a_connection_idle_past_the_bypass_window_is_pinged(pg_database_url: str) -> None:
    engine = create_engine(pg_database_url, pool_size=1, max_overflow=0, ping_bypass_seconds=0.05)
    try:
        statements = await _statements_of_a_checkout(engine, wait=0.3)
        assert statements == [";", "BEGIN;", "ROLLBACK;"]
    finally:
        await engine.dispose()
