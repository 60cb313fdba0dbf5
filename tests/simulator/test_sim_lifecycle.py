"""start/stop are idempotent; the standalone lifespan starts and stops the machinery."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import httpx
from fastapi import FastAPI

from app.provider.simulator import Simulator, SimulatorConfig

from .helpers import AUTH, CREATE, create_body, serve

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


async def test_start_and_stop_are_idempotent() -> None:
    simulator = Simulator(SimulatorConfig())
    await simulator.stop()
    await simulator.start()
    scheduler = simulator.engine._scheduler
    await simulator.start()
    assert simulator.engine._scheduler is scheduler
    assert simulator.started
    await simulator.stop()
    await simulator.stop()
    assert not simulator.started


async def test_restart_after_stop() -> None:
    simulator = Simulator(SimulatorConfig(duration_seconds=0))
    await simulator.start()
    await simulator.stop()
    await simulator.start()
    try:
        transport = httpx.ASGITransport(app=simulator.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://sim.test", headers=AUTH
        ) as client:
            task_id = (await client.post(CREATE, json=create_body())).json()["id"]
            response = await client.get(f"/v1/tasks/{task_id}")
            assert response.json()["status"] == "completed"
    finally:
        await simulator.stop()


async def test_standalone_lifespan_runs_the_machinery() -> None:
    simulator = Simulator(SimulatorConfig())
    async with serve(simulator.app) as base:
        assert simulator.started
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/_sim/stats")).status_code == 200
    assert not simulator.started


async def test_mounted_simulator_is_started_by_its_host_app_only_once() -> None:
    simulator = Simulator(SimulatorConfig())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await simulator.start()
        yield
        await simulator.stop()

    parent = FastAPI(lifespan=lifespan)
    parent.mount("/_simulator", simulator.app)
    async with serve(parent) as base:
        assert simulator.started
        async with httpx.AsyncClient(base_url=base, headers=AUTH) as client:
            response = await client.post(f"/_simulator{CREATE}", json=create_body())
            assert response.status_code == 200
    assert not simulator.started


async def test_lifespan_leaves_an_externally_started_simulator_running() -> None:
    simulator = Simulator(SimulatorConfig())
    await simulator.start()
    try:
        async with serve(simulator.app):
            assert simulator.started
        assert simulator.started
    finally:
        await simulator.stop()
