"""What the job handlers of the task domain share."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.retry import RetryStrategy
from app.provider.evolink import EvolinkClient


@dataclass(frozen=True, slots=True)
class TaskContext:
    """Sessions, settings and the upstream client."""

    sessions: async_sessionmaker[AsyncSession]
    settings: Settings
    provider: EvolinkClient
    callback_base_url: str
    retry: RetryStrategy = field(default_factory=RetryStrategy)
