"""`Simulator`: a faithful fake of EvoLink's asynchronous gpt-image-1.5 API as an ASGI app."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.exceptions import HTTPException

from .api import api_router
from .engine import Engine
from .errors import (
    ApiError,
    FilesApiError,
    api_error_handler,
    files_api_error_handler,
    http_error_handler,
)
from .files_api import files_router
from .inspection import inspection_router

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from .config import SimulatorConfig


class Simulator:
    """The fake upstream: `app` serves the task API and the Files API; `start`/`stop` run its
    scheduler and its HTTP clients (callbacks, reference downloads)."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.engine = Engine(config)
        self.app = FastAPI(
            title="EvoLink gpt-image-1.5 simulator",
            lifespan=self._lifespan,
        )
        self.app.add_exception_handler(ApiError, api_error_handler)
        self.app.add_exception_handler(FilesApiError, files_api_error_handler)
        self.app.add_exception_handler(HTTPException, http_error_handler)
        self.app.include_router(api_router(self.engine))
        self.app.include_router(files_router(self.engine))
        self.app.include_router(inspection_router(self.engine))

    @property
    def started(self) -> bool:
        """Whether the background machinery runs."""
        return self.engine.started

    async def start(self) -> None:
        """Start the completion scheduler and the callback client (idempotent)."""
        await self.engine.start()

    async def stop(self) -> None:
        """Cancel background work and close the client (idempotent, never waits on callbacks)."""
        await self.engine.stop()

    @asynccontextmanager
    async def _lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        """Run standalone: start on startup, stop on shutdown unless someone else started it."""
        owner = not self.started
        await self.start()
        try:
            yield
        finally:
            if owner:
                await self.stop()
