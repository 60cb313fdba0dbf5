"""The simulator and the gateway, each on real HTTP in this process, wired together."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from app.core.config import Settings
from app.main import create_app
from app.provider.simulator.app import Simulator
from app.provider.simulator.config import SimulatorConfig
from tests.conftest import auth, settings_values
from tests.support.gateway import Gateway
from tests.support.servers import bound_socket, serve_app
from tests.support.waiting import eventually


@dataclass
class Stack:
    """A running simulator and gateway, and clients for both."""

    gateway: Gateway
    gateway_url: str
    simulator: Simulator
    simulator_url: str
    sim: httpx.AsyncClient

    async def create(
        self, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """POST a task as caller alpha; returns the task object."""
        response = await self.gateway.client.post(
            "/v1/images/generations",
            json=body or {"prompt": "a lighthouse"},
            headers=auth() | (headers or {}),
        )
        assert response.status_code in (200, 202), response.text
        task: dict[str, Any] = response.json()
        return task

    async def task(self, task_id: str) -> dict[str, Any]:
        response = await self.gateway.client.get(f"/v1/tasks/{task_id}", headers=auth())
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        return task

    async def wait_for(
        self, task_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0
    ) -> dict[str, Any]:
        """The task once `predicate` holds for it."""
        task: dict[str, Any] = await eventually(
            lambda: self.task(task_id), predicate, timeout, what=f"task {task_id}"
        )
        return task

    async def sim_tasks(self) -> list[dict[str, Any]]:
        tasks: list[dict[str, Any]] = (await self.sim.get("/_sim/tasks")).json()
        return tasks

    async def set_faults(self, **faults: Any) -> None:
        response = await self.sim.put("/_sim/faults", json=faults)
        assert response.status_code == 200, response.text


@contextlib.asynccontextmanager
async def running_stack(
    database_url: str,
    simulator_config: SimulatorConfig | None = None,
    **overrides: Any,
) -> AsyncIterator[Stack]:
    """Simulator and gateway (workers on) over real HTTP on loopback."""
    config = simulator_config or SimulatorConfig(duration_seconds=0.5)
    config.allow_private_callbacks = True
    simulator = Simulator(config)
    async with serve_app(simulator.app) as simulator_url:
        sock = bound_socket()
        gateway_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        values = settings_values(
            database_url,
            provider_url=simulator_url,
            public_base_url=gateway_url,
            run_workers=True,
        )
        settings = Settings(**(values | overrides))
        app = create_app(settings)
        async with (
            serve_app(app, sock),
            httpx.AsyncClient(base_url=gateway_url) as client,
            httpx.AsyncClient(base_url=simulator_url) as sim,
        ):
            yield Stack(
                gateway=Gateway(app=app, client=client),
                gateway_url=gateway_url,
                simulator=simulator,
                simulator_url=simulator_url,
                sim=sim,
            )
