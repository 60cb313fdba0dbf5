"""Rows made directly through the service layer, for tests below the HTTP API."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.tasks import service
from app.tasks.models import Task
from app.tasks.schemas import CreateTaskRequest


async def make_task(
    sessions: async_sessionmaker[AsyncSession], prompt: str = "a lighthouse", caller: str = "alpha"
) -> Task:
    """A queued task with its submit job, committed."""
    async with sessions() as session:
        task, _ = await service.create_task(
            session,
            caller=caller,
            request=CreateTaskRequest(prompt=prompt),
            idempotency_key=None,
            now=utcnow(),
        )
        await session.commit()
        return task
