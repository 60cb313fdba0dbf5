"""Shared pieces of the simulator tests: running simulators, real servers, a callback receiver."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from app.provider.simulator import Simulator, SimulatorConfig, inspection
from app.provider.simulator.engine import Engine
from app.provider.types import MODEL
from tests.support.waiting import eventually, until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request
    from starlette.types import ASGIApp

API_KEY = "sk-evo-simulator"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CREATE = "/v1/images/generations"
FINAL = ("completed", "failed")


def create_body(**overrides: Any) -> dict[str, Any]:
    """A valid create body with `overrides` applied."""
    body: dict[str, Any] = {
        "model": MODEL,
        "prompt": "a lighthouse at dusk, oil painting",
        "size": "1024x1024",
        "quality": "low",
        "n": 1,
    }
    body.update(overrides)
    return body


def assert_error(
    response: httpx.Response, status: int, code: str, type_: str, param: str | None = None
) -> None:
    """The response is the provider's error body with exactly these values."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    expected_keys = {"code", "message", "type"} | ({"param"} if param is not None else set())
    assert set(error) == expected_keys
    assert (error["code"], error["type"], error.get("param")) == (code, type_, param)
    assert isinstance(error["message"], str)
    assert error["message"]


class ManualClock:
    """The simulator's clocks (its monotonic one and the wall clock of `final_at`), installed
    with `monkeypatch` and moved only by `advance`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monotonic = 1_000.0
        self.wall = 1_700_000_000.0
        monkeypatch.setattr(Engine, "now", staticmethod(self.now))
        monkeypatch.setattr(inspection, "time", self)

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall += seconds

    def now(self) -> float:
        return self.monotonic

    def time(self) -> float:
        return self.wall


@asynccontextmanager
async def running(config: SimulatorConfig) -> AsyncIterator[tuple[Simulator, httpx.AsyncClient]]:
    """A started simulator and an in-process client authenticated with the default key."""
    simulator = Simulator(config)
    await simulator.start()
    transport = httpx.ASGITransport(app=simulator.app)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://sim.test", headers=AUTH
        ) as client:
            yield simulator, client
    finally:
        await simulator.stop()


@asynccontextmanager
async def serve(
    app: ASGIApp, *, lifespan: Literal["auto", "on", "off"] = "on"
) -> AsyncIterator[str]:
    """Run `app` under a real uvicorn server on a free local port; yields its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan=lifespan, ws="none"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started or task.done(), what="uvicorn to start", interval=0.01)
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before starting")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def wait_until_final(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    """Poll the query endpoint until the task is completed or failed."""

    async def query() -> dict[str, Any]:
        response = await client.get(f"/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    return await eventually(
        query,
        lambda body: body["status"] in FINAL,
        10.0,
        what=f"{task_id} to finish",
        interval=0.02,
    )


async def wait_for_record(
    client: httpx.AsyncClient, task_id: str, *, callbacks: int = 0, dropped: bool = False
) -> dict[str, Any]:
    """Poll `/_sim/tasks/{id}` until `callbacks` deliveries are logged (or the drop is)."""

    async def record() -> dict[str, Any]:
        found: dict[str, Any] = (await client.get(f"/_sim/tasks/{task_id}")).json()
        return found

    def logged(record: dict[str, Any]) -> bool:
        if dropped:
            return bool(record["callback_dropped"])
        return bool(record["callbacks"]) and len(record["callbacks"]) >= callbacks

    awaited = "its callback dropped" if dropped else f"{callbacks} callbacks logged"
    return await eventually(record, logged, 15.0, what=f"{task_id}: {awaited}", interval=0.02)


@dataclass
class Delivery:
    """One callback POST as the receiver saw it."""

    name: str
    started: float
    finished: float
    status: int
    body: dict[str, Any]


class Receiver:
    """A callback endpoint at `/{name}` answering from a per-name script of status codes."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.scripts: dict[str, list[int]] = {}
        self.delays: dict[str, float] = {}
        self.app = Starlette(routes=[Route("/{name}", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        started = time.monotonic()
        name = request.path_params["name"]
        body = await request.json()
        script = self.scripts.setdefault(name, [200])
        status = script.pop(0) if len(script) > 1 else script[0]
        await asyncio.sleep(self.delays.get(name, 0.0))
        self.deliveries.append(Delivery(name, started, time.monotonic(), status, body))
        return Response(status_code=status)

    def of(self, name: str) -> list[Delivery]:
        """Deliveries to `/{name}`, in arrival order."""
        return sorted((d for d in self.deliveries if d.name == name), key=lambda d: d.started)

    async def wait_for(self, name: str, count: int, timeout: float = 15.0) -> list[Delivery]:
        """Wait until `/{name}` received at least `count` deliveries."""
        await until(
            lambda: len(self.of(name)) >= count,
            what=f"{count} deliveries to /{name}",
            timeout=timeout,
            interval=0.01,
        )
        return self.of(name)
