"""The provider's endpoints: create, query, and the unauthenticated result links."""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.provider.types import TASK_ID_PREFIX

from . import errors
from .images import CONTENT_TYPES
from .tasks import create_body, query_body
from .validation import parse_create

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from .engine import Engine


def base_url(request: Request) -> str:
    """Scheme, host and mount path (root_path) under which this request reached the app."""
    url = request.url
    return f"{url.scheme}://{url.netloc}{request.scope.get('root_path', '')}".rstrip("/")


def has_known_key(request: Request, api_keys: tuple[str, ...]) -> bool:
    """Whether the request carries `Authorization: Bearer <one of api_keys>`."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    presented = key.strip().encode()
    known = [secrets.compare_digest(presented, k.encode()) for k in api_keys]
    return scheme.lower() == "bearer" and any(known)


def api_router(engine: Engine) -> APIRouter:
    """Routes of the EvoLink API as the simulator serves them."""
    router = APIRouter()

    def admit(request: Request, *, creating: bool = False, crediting: bool = False) -> None:
        """Answer 503 during an outage and 401 without a known Bearer key."""
        if engine.faults.down:
            if creating:
                engine.stats.creates_rejected_503 += 1
            elif crediting:
                engine.stats.credits_rejected_503 += 1
            else:
                engine.stats.queries_rejected_503 += 1
            raise errors.service_unavailable()
        if not has_known_key(request, engine.config.api_keys):
            engine.stats.unauthorized += 1
            raise errors.unauthorized()

    @router.post("/v1/images/generations")
    async def create_task(request: Request) -> JSONResponse:
        admit(request, creating=True)
        faults = engine.faults
        if engine.roll(faults.create_429_rate):
            engine.stats.creates_rejected_429 += 1
            raise errors.rate_limited()
        if engine.roll(faults.create_500_rate):
            engine.stats.creates_rejected_500 += 1
            raise errors.internal_error()
        try:
            body, params = parse_create(
                await request.body(),
                allow_private_callbacks=engine.config.allow_private_callbacks,
                callback_base_url=engine.config.callback_base_url,
            )
        except errors.ApiError:
            engine.stats.creates_invalid += 1
            raise
        cost = engine.cost(params)
        if not engine.credits.can_pay(cost):
            engine.stats.creates_rejected_402 += 1
            raise errors.insufficient_quota(cost, engine.credits.remaining)
        task = engine.create_task(body, params, base_url(request))
        if engine.roll(faults.create_hang_rate):
            engine.stats.creates_hung += 1
            await _hang(engine, request, faults.create_hang_seconds)
        return JSONResponse(create_body(task))

    @router.get("/v1/credits")
    async def get_credits(request: Request) -> JSONResponse:
        admit(request, crediting=True)
        engine.stats.credits_queries += 1
        return JSONResponse(engine.credits.body())

    @router.get("/v1/tasks/{task_id}")
    async def get_task(task_id: str, request: Request) -> JSONResponse:
        admit(request, creating=False)
        engine.stats.queries += 1
        if engine.roll(engine.faults.query_500_rate):
            engine.stats.queries_rejected_500 += 1
            raise errors.internal_error()
        if not task_id.startswith(TASK_ID_PREFIX):
            raise errors.invalid_task_id()
        task = engine.tasks.get(task_id)
        if task is None:
            raise errors.not_found(f"Task {task_id} not found")
        return JSONResponse(query_body(task, engine.now(), base_url(request)))

    @router.get("/files/{task_id}/{file_name}")
    async def get_file(task_id: str, file_name: str) -> Response:
        task = engine.tasks.get(task_id)
        if task is None or file_name != task.file_name:
            raise errors.not_found("File not found", "file_not_found")
        if task.phase(engine.now())[0] != "completed":
            raise errors.not_found("File not found", "file_not_found")
        if engine.link_expired(task):
            engine.stats.files_expired += 1
            engine.images.discard(task.id)
            raise errors.not_found("The link has expired", "file_expired")
        data = await engine.image(task)
        engine.stats.files_served += 1
        task.downloads += 1
        rate = engine.faults.file_bytes_per_second
        if rate > 0:
            return StreamingResponse(
                _throttled(data, rate),
                media_type=CONTENT_TYPES[task.image_format],
                headers={"Content-Length": str(len(data))},
            )
        return Response(data, media_type=CONTENT_TYPES[task.image_format])

    return router


async def _throttled(data: bytes, bytes_per_second: float) -> AsyncIterator[bytes]:
    """`data` in 64 KiB chunks at about `bytes_per_second`."""
    chunk = 64 * 1024
    for start in range(0, len(data), chunk):
        yield data[start : start + chunk]
        await asyncio.sleep(chunk / bytes_per_second)


async def _hang(engine: Engine, request: Request, seconds: float) -> None:
    """Hold the answer for `seconds`, ending early if the client leaves or the simulator stops."""
    waits = [
        asyncio.create_task(engine.wait_stopping(seconds)),
        asyncio.create_task(_client_gone(request)),
    ]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


async def _client_gone(request: Request) -> None:
    """Return once the ASGI server reports that the client disconnected."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
