"""Unauthenticated `/_sim/` endpoints that let tests see and steer the simulator."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request

from . import errors
from .api import base_url
from .tasks import result_url

if TYPE_CHECKING:
    from .engine import Engine
    from .tasks import SimTask


def describe(engine: Engine, task: SimTask, base: str) -> dict[str, Any]:
    """Everything recorded about one task."""
    now = engine.now()
    status, progress = task.phase(now)
    completed = status == "completed"
    # Wall-clock time (epoch seconds) at which the task reached its final status upstream.
    final_at = time.time() - (now - task.due_at) if now >= task.due_at else None
    return {
        "id": task.id,
        "status": status,
        "progress": progress,
        "final_status": task.final_status,
        "error_code": task.failure_code,
        "created": task.created,
        "accepted_at": task.accepted_at,
        "final_at": final_at,
        "request": task.request,
        "size": task.params.size,
        "quality": task.params.quality,
        "callback_url": task.callback_url,
        "results": [result_url(task, base)] if completed else [],
        "link_expired": completed and engine.link_expired(task),
        "image_format": task.image_format,
        "image_sha256": task.image_sha256,
        "image_bytes": task.image_bytes,
        "callback_dropped": task.callback_dropped,
        "downloads": task.downloads,
        "callbacks": list(task.callback_log),
        "fetching_references": task.fetching_references,
        "references": [dataclasses.asdict(fetch) for fetch in task.references],
    }


def inspection_router(engine: Engine) -> APIRouter:
    """Routes under `/_sim/`: tasks, stats and runtime faults."""
    router = APIRouter(prefix="/_sim")

    @router.get("/tasks")
    async def list_tasks(request: Request) -> list[dict[str, Any]]:
        base = base_url(request)
        return [describe(engine, task, base) for task in engine.tasks.values()]

    @router.get("/tasks/{task_id}")
    async def get_task(task_id: str, request: Request) -> dict[str, Any]:
        task = engine.tasks.get(task_id)
        if task is None:
            raise errors.not_found(f"Task {task_id} not found")
        return describe(engine, task, base_url(request))

    @router.get("/stats")
    async def get_stats() -> dict[str, Any]:
        return engine.stats.to_json()

    @router.get("/faults")
    async def get_faults() -> dict[str, Any]:
        return engine.faults.to_json()

    @router.put("/faults")
    async def put_faults(request: Request) -> dict[str, Any]:
        try:
            changes = json.loads(await request.body())
        except (ValueError, RecursionError):
            raise errors.invalid_request("Body must be a JSON object of fault fields") from None
        if not isinstance(changes, dict):
            raise errors.invalid_request("Body must be a JSON object of fault fields")
        try:
            engine.config.faults = engine.faults.updated(changes)
        except ValueError as exc:
            raise errors.invalid_request(str(exc), "faults") from None
        return engine.faults.to_json()

    return router
