"""`query_deadline`: a query still running at the deadline ends there on both databases, and
leaves the connection pool, the database and its locks as they were."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.db import create_engine, create_sessionmaker, query_deadline
from app.tasks import repository
from tests.support.queries import ENDLESS
from tests.support.rows import make_task
from tests.support.waiting import eventually

FIVE_MILLION = text(
    "WITH RECURSIVE series(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM series WHERE n < 5000000) "
    "SELECT count(*) FROM series"
)


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def running_endless(sessions: async_sessionmaker[AsyncSession]) -> int:
    """How many statements counting the endless series the server still runs (PostgreSQL)."""
    async with sessions() as session:
        found = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND query LIKE 'WITH RECURSIVE series%'"
            )
        )
    return int(found or 0)


async def test_a_query_running_at_the_deadline_ends_there_and_leaves_nothing_behind(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # Without the deadline reaching the query itself, this would run until the test's timeout.
    for _ in range(3):  # the same pooled connections, used again after each interruption
        async with sessions() as session:
            with pytest.raises(TimeoutError):
                async with query_deadline(session, 0.3):
                    await session.execute(ENDLESS)

        # The pool's connections work and no lock is left: a write, committed, then read back.
        task = await make_task(sessions)
        async with sessions() as session:
            assert (await repository.get(session, task.id)) is not None

    if sessions.kw["bind"].dialect.name == "postgresql":
        assert await eventually(lambda: running_endless(sessions), lambda count: count == 0) == 0


async def test_a_database_error_before_the_deadline_stays_that_error(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as session:
        with pytest.raises(DBAPIError, match="no_such_table"):
            async with query_deadline(session, 30):
                await session.execute(text("SELECT * FROM no_such_table"))


async def test_statements_after_the_block_are_not_interrupted_when_the_deadline_passes(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as session:
        async with query_deadline(session, 0.05):
            assert (await session.scalar(text("SELECT 1"))) == 1
        # Runs for about a second, across the block's deadline, on the same connection.
        counted = await session.scalar(FIVE_MILLION)
        await session.commit()

    assert counted == 5_000_000
