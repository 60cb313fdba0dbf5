"""`matched_any` (whether a conditional UPDATE took effect) and `write_durably`'s schedule."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.db import create_engine, create_sessionmaker, matched_any, write_durably
from app.tasks.models import Task
from tests.support.rows import make_task


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def test_matched_any_says_whether_an_update_matched_a_row(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    first = await make_task(sessions, prompt="one")
    await make_task(sessions, prompt="two")
    async with sessions.begin() as session:
        none = await session.execute(update(Task).where(Task.id == "no-such-task").values(n=2))
        one = await session.execute(update(Task).where(Task.id == first.id).values(n=2))
        both = await session.execute(update(Task).values(n=3))
    assert (matched_any(none), matched_any(one), matched_any(both)) == (False, True, True)


def test_matched_any_is_false_for_a_result_without_a_rowcount() -> None:
    no_rowcount: Any = object()
    assert matched_any(no_rowcount) is False


async def test_write_durably_waits_half_a_second_doubling_to_thirty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def write() -> str:
        if len(waits) < 7:
            raise OperationalError("UPDATE tasks", {}, ConnectionResetError("reset"))
        return "written"

    monkeypatch.setattr(asyncio, "sleep", sleep)  # write_durably waits through asyncio.sleep
    assert await write_durably(write, what="a test write", extra={}) == "written"
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]


async def test_write_durably_raises_after_its_last_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = 0

    async def sleep(_seconds: float) -> None:
        pass

    async def write() -> None:
        nonlocal attempts
        attempts += 1
        raise OperationalError("UPDATE tasks", {}, ConnectionResetError("reset"))

    monkeypatch.setattr(asyncio, "sleep", sleep)  # write_durably waits through asyncio.sleep
    with pytest.raises(OperationalError):
        await write_durably(write, what="a test write", extra={})
    assert attempts == 8
