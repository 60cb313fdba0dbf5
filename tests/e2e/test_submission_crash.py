"""A worker process killed with SIGKILL around a submission: exactly one upstream task."""

from __future__ import annotations

import contextlib
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from app.core.db import asyncpg_dsn
from bench.soak import LOST_AFTER_ACCEPTANCE, Kill, kill_casualty
from tests.conftest import auth
from tests.e2e.conftest import Processes, gateway_env, simulator_args
from tests.support.servers import Process, free_port
from tests.support.waiting import eventually, wait_until_up

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


# --- a worker killed after the provider accepted its create, before the answer is committed ----
# The worker is held at a chosen statement by a lock the test takes in PostgreSQL (no pause
# point in the service), then SIGKILLed there. Every callback is dropped: the answer the worker
# held is the only way the service could learn the upstream id.


def log_lines(process: Process, task_id: str) -> list[dict[str, Any]]:
    """The JSON log lines of `process` about the task."""
    lines = []
    for line in process.output().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("task_id") == task_id:
                lines.append(entry)
    return lines


async def blocked_by(admin: asyncpg.Connection, database: str) -> int:
    """How many sessions of the database wait for a lock `admin` holds."""
    found = await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = $1 AND pg_backend_pid() = ANY(pg_blocking_pids(pid))",
        database,
    )
    return int(found)


async def kill_worker_blocked(
    admin: asyncpg.Connection, database_url: str, worker: Process, sim_url: str
) -> tuple[float, float]:
    """Wait until the provider accepted the create and the worker waits for a lock `admin`
    holds; SIGKILL it there; returns the wall clock before the kill and after its death."""
    async with httpx.AsyncClient() as client:
        await eventually(
            lambda: get_json(client, f"{sim_url}/_sim/tasks"), lambda tasks: len(tasks) == 1
        )
    database = make_url(database_url).database or ""
    await eventually(lambda: blocked_by(admin, database), lambda waiting: waiting > 0)
    killed_at = time.time()
    worker.kill()
    return killed_at, time.time()


async def test_worker_killed_after_the_id_is_recorded_completes_the_task_without_callback(
    processes: Processes, pg_database_url: str
) -> None:
    sim_url, api_url, env = await start_stack(
        processes,
        pg_database_url,
        "--duration",
        "0.3",
        "--callback-drop-rate",
        "1",
        IMAGEGEN_JOB_LEASE_SECONDS=1,
        IMAGEGEN_SUBMIT_UNCERTAIN_WAIT_SECONDS=3,
    )
    admin = await asyncpg.connect(asyncpg_dsn(pg_database_url))
    try:
        async with httpx.AsyncClient() as client:
            created = (
                await client.post(
                    f"{api_url}/v1/images/generations", json={"prompt": "p"}, headers=auth()
                )
            ).json()
            # Nothing writes the timeline until the create's answer is recorded: the worker
            # stops at its first timeline line, after the provider's acceptance.
            hold = admin.transaction()
            await hold.start()
            await admin.execute("LOCK TABLE task_events IN SHARE MODE")
            first = processes.start("worker", ["worker"], env)
            await kill_worker_blocked(admin, pg_database_url, first, sim_url)
            await hold.rollback()
            processes.start("worker", ["worker"], env)

            task = await eventually(
                lambda: get_json(client, f"{api_url}/v1/tasks/{created['id']}"),
                lambda t: t["status"] in ("succeeded", "failed"),
                timeout=30,
            )
            upstream = await get_json(client, f"{sim_url}/_sim/tasks")
    finally:
        await admin.close()

    assert [item["id"] for item in upstream] == [task["provider_task_id"]]
    assert upstream[0]["callback_dropped"]
    assert (task["status"], task["error"]) == ("succeeded", None)


async def test_worker_killed_before_the_id_is_recorded_logs_nothing_and_fails_honestly(
    processes: Processes, pg_database_url: str
) -> None:
    sim_url, api_url, env = await start_stack(
        processes,
        pg_database_url,
        "--duration",
        "0.3",
        "--callback-drop-rate",
        "1",
        IMAGEGEN_JOB_LEASE_SECONDS=1,
        IMAGEGEN_SUBMIT_UNCERTAIN_WAIT_SECONDS=3,
    )
    admin = await asyncpg.connect(asyncpg_dsn(pg_database_url))
    try:
        async with httpx.AsyncClient() as client:
            created = (
                await client.post(
                    f"{api_url}/v1/images/generations", json={"prompt": "p"}, headers=auth()
                )
            ).json()
            # A poll job due in an hour, locked: the worker's write of the poll job that follows
            # the upstream id up meets it (same task, same kind) and waits, inside the
            # transaction that records the id.
            await admin.execute(
                "INSERT INTO jobs (kind, task_id, state, run_at, attempts, created_at, updated_at)"
                " VALUES ('poll', $1, 'queued', $2, 0, $2, $2)",
                created["id"],
                datetime.now(UTC) + timedelta(hours=1),
            )
            hold = admin.transaction()
            await hold.start()
            await admin.execute(
                "SELECT 1 FROM jobs WHERE task_id = $1 AND kind = 'poll' FOR UPDATE", created["id"]
            )
            first = processes.start("worker", ["worker"], env)
            killed_at, dead_at = await kill_worker_blocked(admin, pg_database_url, first, sim_url)
            await hold.rollback()
            processes.start("worker", ["worker"], env)

            task = await eventually(
                lambda: get_json(client, f"{api_url}/v1/tasks/{created['id']}"),
                lambda t: t["status"] in ("succeeded", "failed"),
                timeout=30,
            )
            upstream = await get_json(client, f"{sim_url}/_sim/tasks")
        row = await admin.fetchrow("SELECT * FROM tasks WHERE id = $1", created["id"])
    finally:
        await admin.close()

    # The killed worker said nothing it had not committed (it used to log 'queued -> pending').
    assert log_lines(first, created["id"]) == []
    # Never sent twice, never made up: the task fails, saying the provider may have it.
    assert len(upstream) == 1
    assert (task["status"], task["error"]["code"], task["provider_task_id"]) == (
        "failed",
        "provider_timeout",
        None,
    )
    assert "not submitted again" in task["error"]["message"]
    # The soak counts exactly this case apart, from this evidence, and nothing else.
    assert row is not None
    kill = Kill(killed_at, dead_at, api_url)
    assert kill_casualty(row, upstream, kill) == LOST_AFTER_ACCEPTANCE
    accepted_at = upstream[0]["accepted_at"]
    assert kill_casualty(row, upstream, Kill(killed_at, accepted_at - 0.001, api_url)) is None
    assert kill_casualty(row, upstream, Kill(killed_at, dead_at, "http://127.0.0.1:1")) is None
    started_at = row["submit_started_at"].timestamp()
    assert kill_casualty(row, upstream, Kill(started_at - 0.001, dead_at, api_url)) is None
    assert kill_casualty(row, [upstream[0] | {"callback_dropped": False}], kill) is None
