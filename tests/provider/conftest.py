"""An `EvolinkClient` on a real `httpx.AsyncClient`, with the upstream mocked by respx."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx

from app.provider.evolink import EvolinkClient
from app.provider.types import CreateTaskRequest

BASE_URL = "https://api.evolink.test"
API_KEY = "sk-evo-test"
TASK_ID = "task-unified-1757156493-imcg5zqt"
CREATE_PATH = "/v1/images/generations"
QUERY_PATH = f"/v1/tasks/{TASK_ID}"


def task_body(**overrides: Any) -> dict[str, Any]:
    """The documented create response, with `overrides` applied."""
    body: dict[str, Any] = {
        "created": 1757156493,
        "id": TASK_ID,
        "model": "gpt-image-1.5",
        "object": "image.generation.task",
        "progress": 0,
        "status": "pending",
        "task_info": {"can_cancel": True, "estimated_time": 100},
        "type": "image",
        "usage": {"billing_rule": "per_call", "credits_reserved": 252, "user_group": "default"},
    }
    body.update(overrides)
    return body


def error_body(code: str | int, message: str, type_: str = "invalid_request_error") -> Any:
    """An error answer in the documented shape."""
    return {"error": {"code": code, "message": message, "type": type_}}


def text_to_image(**overrides: Any) -> CreateTaskRequest:
    """A plain text-to-image request."""
    values: dict[str, Any] = {"prompt": "a lighthouse at dusk", "size": "1:1", "quality": "low"}
    values.update(overrides)
    return CreateTaskRequest(**values)


@pytest.fixture
def upstream() -> Iterator[respx.MockRouter]:
    """The mocked provider; routes that a test leaves uncalled are fine."""
    with respx.mock(base_url=BASE_URL, assert_all_called=False) as router:
        yield router


@pytest.fixture
async def client() -> AsyncIterator[EvolinkClient]:
    """The client under test, on a real `httpx.AsyncClient` (respx patches its transport)."""
    async with httpx.AsyncClient() as http:
        yield EvolinkClient(http, BASE_URL, API_KEY)
