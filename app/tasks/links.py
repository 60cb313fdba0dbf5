"""The provider's result links: how long they stay valid, counted from when."""

from __future__ import annotations

from datetime import datetime, timedelta

from app.tasks.models import Task

LINK_LIFETIME = timedelta(hours=24)  # how long the provider's result links stay valid


def upstream_completed_at(task: Task) -> datetime:
    """When the provider finished the task, as early as the service heard of it."""
    seen = [t for t in (task.final_claimed_at, task.provider_completed_at) if t is not None]
    return min(seen) if seen else task.updated_at
