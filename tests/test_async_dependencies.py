"""Every endpoint and dependency of the app is a coroutine: FastAPI runs a plain `def` one in
the thread pool, a thread hop on each request for what is only an attribute read."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.core.config import Settings
from app.main import create_app
from tests.conftest import settings_values
from tests.console.helpers import OPERATORS


def _routes(routes: Any) -> Iterator[APIRoute]:
    for route in routes:
        inner = getattr(route, "original_router", None)  # an included router (FastAPI >= 0.16x)
        if inner is not None and hasattr(inner, "routes"):
            yield from _routes(inner.routes)
        elif isinstance(route, APIRoute):
            yield route


def _sync_calls(dependant: Dependant) -> Iterator[str]:
    for sub in dependant.dependencies:
        call = sub.call
        if call is not None and not (
            inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)
        ):
            yield f"{call.__module__}.{call.__qualname__}"
        yield from _sync_calls(sub)


def test_no_route_runs_in_the_thread_pool(sqlite_database_url: str) -> None:
    # The console's routes are installed only with operators.
    settings = Settings(**settings_values(sqlite_database_url, operator_keys=OPERATORS))
    routes = list(_routes(create_app(settings).routes))
    paths = {route.path for route in routes}
    assert {"/v1/images/generations", "/v1/uploads", "/console/tasks"} <= paths

    sync = {
        f"{route.path}: {name}"
        for route in routes
        for name in [
            *([] if inspect.iscoroutinefunction(route.endpoint) else [route.endpoint.__qualname__]),
            *_sync_calls(route.dependant),
        ]
    }

    assert sync == set()
