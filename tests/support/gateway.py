"""A gateway app under test, with its lifespan running, and a client for it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.main import create_app
from app.tasks.events import TaskEvent
from app.tasks.models import Task
from app.workers.models import Job


@dataclass
class Gateway:
    """A running app, an ASGI client and direct database access."""

    app: FastAPI
    client: httpx.AsyncClient

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        sessions: async_sessionmaker[AsyncSession] = self.app.state.sessions
        return sessions

    async def task_row(self, task_id: str) -> Task:
        async with self.sessions() as session:
            task = await session.get(Task, task_id)
            assert task is not None
            return task

    async def count(self, model: Any, *conditions: Any) -> int:
        async with self.sessions() as session:
            query = select(func.count()).select_from(model).where(*conditions)
            return int(await session.scalar(query) or 0)

    async def events(self, task_id: str) -> list[TaskEvent]:
        """The task's timeline lines, oldest first."""
        async with self.sessions() as session:
            result = await session.scalars(
                select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)
            )
            return list(result.all())

    async def jobs(self, task_id: str) -> list[Job]:
        async with self.sessions() as session:
            result = await session.scalars(select(Job).where(Job.task_id == task_id))
            return list(result.all())


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[Gateway]:
    """The app with its lifespan entered, and an in-process client."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield Gateway(app=app, client=client)
