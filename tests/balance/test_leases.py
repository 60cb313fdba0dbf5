"""Named leases: one holder until expiry, on SQLite and PostgreSQL, also under concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.core.db import create_engine, create_sessionmaker
from app.workers import leases
from app.workers.leases import Lease

PERIOD = timedelta(minutes=5)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


async def take(sessions: async_sessionmaker[AsyncSession], holder: str, at: timedelta) -> bool:
    async with sessions.begin() as session:
        return await leases.take(session, "job", holder, START + at, PERIOD)


START = utcnow()


async def test_a_lease_is_held_until_it_expires(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    assert await take(sessions, "a", timedelta(0))
    assert not await take(sessions, "b", timedelta(minutes=1))
    assert not await take(sessions, "a", timedelta(minutes=4, seconds=59))  # its holder too
    assert await take(sessions, "b", PERIOD)
    async with sessions() as session:
        row = (await session.scalars(select(Lease))).one()
    assert (row.name, row.holder, row.expires_at) == ("job", "b", START + 2 * PERIOD)


async def test_leases_of_other_names_are_independent(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions.begin() as session:
        assert await leases.take(session, "one", "a", START, PERIOD)
        assert await leases.take(session, "two", "b", START, PERIOD)
        assert not await leases.take(session, "one", "b", START, PERIOD)


async def test_one_of_many_concurrent_takers_wins(database_url: str) -> None:
    engines = [create_engine(database_url) for _ in range(4)]
    try:
        makers = [create_sessionmaker(engine) for engine in engines]
        for period in range(3):
            at = PERIOD * period
            won = await asyncio.gather(
                *(take(maker, f"replica-{n}", at) for n, maker in enumerate(makers))
            )
            assert sum(won) == 1, won
    finally:
        for engine in engines:
            await engine.dispose()
