"""The application factory and its lifespan: engine, HTTP client, simulator, workers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app.archive.router import router as images_router
from app.callbacks import pg_recorder
from app.callbacks.endpoint import callback_target, handle_callback
from app.callbacks.orm_recorder import OrmRecorder
from app.callbacks.service import CallbackRecorder, CallbackService
from app.console.router import install as install_console
from app.core import metrics, pg_compiled
from app.core.auth import KeyRing
from app.core.config import Settings
from app.core.db import asyncpg_dsn
from app.core.errors import install_error_handlers
from app.core.headers import with_nosniff
from app.core.input_tokens import input_key
from app.operations.health import router as health_router
from app.operations.metrics import router as metrics_router
from app.references.inputs import InputServer, is_input_path
from app.runtime import SIMULATOR_MOUNT, Runtime
from app.tasks.router import router as tasks_router
from app.uploads.router import router as uploads_router

log = logging.getLogger(__name__)


class GatewayApp(FastAPI):
    """FastAPI, with provider callbacks and `/inputs/` answered before the framework's stack,
    and the headers every answer carries (`X-Content-Type-Options: nosniff`) added to all of
    them here."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        target = callback_target(scope)
        if target is not None:
            # Its answers carry `nosniff` themselves (app.callbacks.endpoint.respond).
            started = time.perf_counter()
            status = await handle_callback(self.state.callbacks, target, scope, receive, send)
            metrics.observe_callback(
                status, time.perf_counter() - started, legacy=target.nonce is None
            )
            return
        if is_input_path(scope):
            # Reference images for the provider; answers carry `nosniff` themselves.
            started = time.perf_counter()
            status = await self.state.inputs(scope, receive, send)
            # Any method reaches here: only GET and HEAD get a label of their own.
            method = scope["method"] if scope["method"] in ("GET", "HEAD") else "other"
            metrics.observe_request(
                method, metrics.INPUT_ROUTE, status, time.perf_counter() - started
            )
            return
        recorder = metrics.StatusRecorder(with_nosniff(send))
        try:
            await super().__call__(scope, receive, recorder)
        finally:
            metrics.observe_request(
                scope["method"], route_template(scope), recorder.status_code, recorder.elapsed()
            )


def route_template(scope: Scope) -> str:
    """The matched route's path template (few label values), `unmatched` when none."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return "unmatched"
    if scope["path"].startswith(SIMULATOR_MOUNT + "/") and not path.startswith(SIMULATOR_MOUNT):
        return SIMULATOR_MOUNT + path  # a route of the mounted simulator (demo mode)
    return path


def create_app(settings: Settings) -> FastAPI:
    """The gateway: caller API, provider callbacks, health; workers unless disabled."""
    if settings.public_base_url is None:
        raise ValueError("IMAGEGEN_PUBLIC_BASE_URL: required")
    simulator = None
    if settings.provider == "simulator":
        from app.provider.simulator.app import Simulator
        from app.provider.simulator.config import SimulatorConfig

        # Its callbacks go to this service's own base URL and nowhere else.
        config = SimulatorConfig(
            allow_private_callbacks=True, callback_base_url=settings.public_base_url
        )
        simulator = Simulator(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime.open(settings)
        app.state.runtime = runtime
        app.state.sessions = runtime.sessions
        app.state.store = runtime.store
        app.state.thumbnails = runtime.thumbnails
        stop = asyncio.Event()
        runner: asyncio.Task[None] | None = None
        if simulator is not None:
            await simulator.start()
        if settings.run_workers:
            worker = runtime.build_worker()
            app.state.wake_workers = worker.wake
            runner = asyncio.create_task(runtime.run_workers(worker, stop), name="workers")
        recorders: list[CallbackRecorder] = []
        callback_pool = None
        if not settings.is_sqlite:
            callback_pool = await pg_compiled.create_pool(asyncpg_dsn(settings.database_url))
            recorders.append(pg_recorder.PostgresRecorder(callback_pool))
        app.state.fast_pool = callback_pool  # the create's statement too (app/tasks/service.py)
        recorders.append(OrmRecorder(runtime.sessions))
        app.state.callbacks = CallbackService(
            settings.callback_secret_bytes(), recorders, app.state.wake_workers
        )
        app.state.inputs = InputServer(
            input_key(settings.callback_secret_bytes()), runtime.sessions, runtime.store
        )
        # Everything loaded so far lives as long as the process: keep it out of the cyclic
        # collector's full passes, which otherwise stall requests for tens of milliseconds.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            stop.set()
            if runner is not None:
                await runner
            if simulator is not None:
                await simulator.stop()
            if callback_pool is not None:
                app.state.fast_pool = None
                await callback_pool.close()
            await runtime.close()

    app = GatewayApp(
        title="imagegen-gateway",
        version="0.1.0",
        description=(
            "Internal gateway in front of EvoLink's gpt-image-1.5: submit image tasks, follow "
            "them, fetch the archived images."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.caller_keys = KeyRing(settings.callers)
    app.state.wake_workers = None
    install_error_handlers(app)
    app.include_router(tasks_router)
    app.include_router(images_router)
    app.include_router(uploads_router)
    app.include_router(health_router)
    app.include_router(metrics_router)
    install_console(app, settings)
    if simulator is not None:
        app.mount(SIMULATOR_MOUNT, simulator.app)
    return app
