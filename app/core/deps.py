"""Typed FastAPI dependencies shared by the routers: what the running app holds, by name.

Every dependency is `async def`, even those that only read an attribute: FastAPI runs a plain
`def` dependency in the thread pool, a thread hop per dependency per request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings

WakeWorkers = Callable[[], None]


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session for one request; handlers commit explicitly before answering."""
    async with request.app.state.sessions() as session:
        yield session


async def get_sessions(request: Request) -> async_sessionmaker[AsyncSession]:
    """The app's session factory, for work that opens sessions of its own (health, metrics)."""
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    return sessions


async def get_settings(request: Request) -> Settings:
    """The running app's settings."""
    settings: Settings = request.app.state.settings
    return settings


def _no_workers() -> None:
    """Nothing to wake: this process runs no workers (they poll the job table)."""


async def get_wake_workers(request: Request) -> WakeWorkers:
    """Wake this process's workers to look for due jobs now; a no-op when it runs none."""
    wake: WakeWorkers | None = getattr(request.app.state, "wake_workers", None)
    return _no_workers if wake is None else wake


async def get_fast_pool(request: Request) -> asyncpg.Pool | None:
    """PostgreSQL: the API's asyncpg pool for the statements it runs straight on asyncpg (the
    callback fast path, a task's create); None on SQLite, or before the app has started."""
    pool: asyncpg.Pool | None = getattr(request.app.state, "fast_pool", None)
    return pool


SessionDep = Annotated[AsyncSession, Depends(get_session)]
SessionsDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_sessions)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
WakeWorkersDep = Annotated[WakeWorkers, Depends(get_wake_workers)]
FastPoolDep = Annotated[asyncpg.Pool | None, Depends(get_fast_pool)]
