"""Unauthenticated `/_sim/` endpoints that let tests see and steer the simulator."""

from __future__ import annotations

import dataclasses
import json
import math
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

    @router.get("/credits")
    async def get_credits() -> dict[str, Any]:
        return credits_state(engine)

    @router.put("/credits")
    async def put_credits(request: Request) -> dict[str, Any]:
        """Set the balance (`remaining_credits`, `used_credits`) or `unlimited_credits`."""
        try:
            changes = json.loads(await request.body())
        except (ValueError, RecursionError):
            raise errors.invalid_request("Body must be a JSON object of credit fields") from None
        if not isinstance(changes, dict):
            raise errors.invalid_request("Body must be a JSON object of credit fields")
        checked = _credit_changes(changes)
        account = engine.credits
        account.remaining = checked.get("remaining_credits", account.remaining)
        account.used = checked.get("used_credits", account.used)
        account.unlimited = bool(checked.get("unlimited_credits", account.unlimited))
        return credits_state(engine)

    return router


def credits_state(engine: Engine) -> dict[str, Any]:
    """The account as `GET /v1/credits` would show it, flat."""
    account = engine.credits
    return {
        "remaining_credits": account.remaining,
        "used_credits": account.used,
        "unlimited_credits": account.unlimited,
    }


def _credit_changes(changes: dict[str, Any]) -> dict[str, float | bool]:
    """The fields of a `PUT /_sim/credits` body, checked; ApiError 400 names a bad one."""
    checked: dict[str, float | bool] = {}
    for name, value in changes.items():
        if name == "unlimited_credits":
            if not isinstance(value, bool):
                raise errors.invalid_request(f"{name} must be a boolean", name)
            checked[name] = value
        elif name in ("remaining_credits", "used_credits"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise errors.invalid_request(f"{name} must be a number", name)
            if not 0.0 <= value < math.inf:
                raise errors.invalid_request(f"{name} must be finite and not negative", name)
            checked[name] = float(value)
        else:
            raise errors.invalid_request(f"unknown credit field: {name}", "credits")
    return checked
