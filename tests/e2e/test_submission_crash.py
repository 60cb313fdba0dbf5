"""A worker process killed with SIGKILL around a submission: exactly one upstream task."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import auth
from tests.e2e.conftest import Processes, gateway_env, simulator_args
from tests.support.servers import free_port, wait_until_up
from tests.support.stack import eventually

pytestmark = pytest.mark.e2e


async def start_stack(
    processes: Processes, database_url: str, *simulator_flags: str, **overrides: Any
) -> tuple[str, str, dict[str, str]]:
    sim_port, api_port = free_port(), free_port()
    sim_url, api_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{api_port}"
    storage = f"file://{processes.directory / 'images'}"
    env = gateway_env(database_url, sim_url, api_url, storage_url=storage, **overrides)
    simulator = processes.start("simulator", simulator_args(sim_port, *simulator_flags), {})
    api = processes.start(
        "api", ["serve", "--port", str(api_port)], env | {"IMAGEGEN_RUN_WORKERS": "false"}
    )
    await wait_until_up(f"{sim_url}/_sim/stats", simulator)
    await wait_until_up(f"{api_url}/healthz", api)
    return sim_url, api_url, env


async def get_json(client: httpx.AsyncClient, url: str) -> Any:
    response = await client.get(url, headers=auth())
    assert response.status_code == 200, response.text
    return response.json()


async def test_worker_killed_during_an_outage_submits_once_after_restart(
    processes: Processes, database_url: str
) -> None:
    sim_url, api_url, env = await start_stack(
        processes, database_url, "--down", "--duration", "0.5", IMAGEGEN_JOB_LEASE_SECONDS=2
    )
    worker = processes.start("worker", ["worker"], env)
    async with httpx.AsyncClient() as client:
        created = (
            await client.post(
                f"{api_url}/v1/images/generations", json={"prompt": "p"}, headers=auth()
            )
        ).json()
        stats_url = f"{sim_url}/_sim/stats"
        await eventually(lambda: get_json(client, stats_url), lambda s: "503" in str(s))

        worker.kill()
        await client.put(f"{sim_url}/_sim/faults", json={"down": False})
        processes.start("worker", ["worker"], env)

        task = await eventually(
            lambda: get_json(client, f"{api_url}/v1/tasks/{created['id']}"),
            lambda t: t["status"] == "succeeded",
            timeout=30,
        )
        upstream = await get_json(client, f"{sim_url}/_sim/tasks")

    assert [item["id"] for item in upstream] == [task["provider_task_id"]]


async def test_worker_killed_mid_create_never_resubmits_and_the_callback_adopts_it(
    processes: Processes, database_url: str
) -> None:
    sim_url, api_url, env = await start_stack(
        processes,
        database_url,
        "--duration",
        "2",
        "--create-hang-rate",
        "1",
        "--create-hang-seconds",
        "30",
        IMAGEGEN_JOB_LEASE_SECONDS=1,
        IMAGEGEN_PROVIDER_CREATE_TIMEOUT_SECONDS=60,
    )
    first = processes.start("worker", ["worker"], env)
    async with httpx.AsyncClient() as client:
        created = (
            await client.post(
                f"{api_url}/v1/images/generations", json={"prompt": "p"}, headers=auth()
            )
        ).json()
        tasks_url = f"{sim_url}/_sim/tasks"
        await eventually(lambda: get_json(client, tasks_url), lambda tasks: len(tasks) == 1)

        first.kill()
        second = processes.start("worker", ["worker"], env)

        task = await eventually(
            lambda: get_json(client, f"{api_url}/v1/tasks/{created['id']}"),
            lambda t: t["status"] == "succeeded",
            timeout=30,
        )
        upstream = await get_json(client, tasks_url)

    assert [item["id"] for item in upstream] == [task["provider_task_id"]]
    assert "adopted the upstream task" in processes.started[1].output()
    assert second.popen.poll() is None
