"""What the job handlers of the task domain share."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.pg_compiled import LazyPool
from app.core.retry import RetryStrategy
from app.provider.evolink import EvolinkClient
from app.provider.files import ProviderFilesClient
from app.storage.store import ObjectStore


@dataclass(frozen=True, slots=True)
class TaskContext:
    """Sessions, settings, the upstream clients and the store (reference images' objects)."""

    sessions: async_sessionmaker[AsyncSession]
    settings: Settings
    provider: EvolinkClient
    callback_base_url: str  # IMAGEGEN_PUBLIC_BASE_URL: callback and /inputs/ URLs start with it
    store: ObjectStore
    files: ProviderFilesClient
    retry: RetryStrategy = field(default_factory=RetryStrategy)
    # PostgreSQL: the reads and the mark every job makes, straight on asyncpg (app/tasks/rows.py).
    direct: LazyPool | None = None
