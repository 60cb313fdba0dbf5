"""Tasks as the provider sees them, and the callbacks it would send about them."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core import callback_tokens as tokens
from app.core.callback_tokens import CALLBACK_PREFIX, callback_token
from app.core.clock import utcnow
from app.tasks import repository
from app.tasks.models import SubmitState, Task
from tests.conftest import CALLBACK_SECRET
from tests.support.rows import make_task


async def accepted_task(
    sessions: async_sessionmaker[AsyncSession], provider_task_id: str = "task-unified-1-abcd1234"
) -> Task:
    """A task the provider accepted: pending, with an upstream id."""
    task = await make_task(sessions)
    async with sessions() as session:
        await repository.update_fields(
            session,
            task.id,
            {
                "status": "pending",
                "provider_task_id": provider_task_id,
                "submit_state": SubmitState.ACCEPTED,
                "submitted_at": utcnow(),
            },
        )
        await session.commit()
        fresh = await repository.get(session, task.id)
        assert fresh is not None
        return fresh


def callback_path(task: Task, secret: str = CALLBACK_SECRET) -> str:
    """The path the provider posts this task's callbacks to."""
    return tokens.callback_path(secret.encode(), task.id, task.callback_nonce)


def legacy_callback_path(task: Task, secret: str = CALLBACK_SECRET) -> str:
    """The path without the nonce that earlier versions gave the provider."""
    token = callback_token(secret.encode(), task.id, task.callback_nonce)
    return f"{CALLBACK_PREFIX}/{task.id}/{token}"


def body(provider_task_id: str, status: str, progress: int = 0, **extra: Any) -> bytes:
    """A callback body in the provider's shape."""
    document: dict[str, Any] = {
        "created": 1757156493,
        "id": provider_task_id,
        "model": "gpt-image-1.5",
        "object": "image.generation.task",
        "progress": progress,
        "status": status,
        "type": "image",
        **extra,
    }
    if status == "completed":
        document.setdefault("results", ["https://cdn.example.com/r.png"])
        document.setdefault("progress", 100)
    return json.dumps(document).encode()
