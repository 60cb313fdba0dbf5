"""Two worker processes on one PostgreSQL: every terminal state is notified exactly once."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.core.db import create_engine, create_sessionmaker
from app.tasks.notifications import Notification
from tests.conftest import auth
from tests.e2e.conftest import Processes, gateway_env, simulator_args
from tests.notify.receiver import receiving
from tests.support.servers import free_port
from tests.support.waiting import eventually, wait_until_up

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

TASKS = 10


async def test_two_workers_notify_each_terminal_state_exactly_once(
    processes: Processes, pg_database_url: str
) -> None:
    sim_port, api_port = free_port(), free_port()
    sim_url, api_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{api_port}"
    simulator = processes.start(
        "simulator",
        # Duplicated callbacks and a few failed tasks: both terminal types, racing news.
        simulator_args(
            sim_port, "--duration", "0.5", "--callback-duplicates", "3", "--fail-rate", "0.3"
        ),
        {},
    )
    env = gateway_env(
        pg_database_url,
        sim_url,
        api_url,
        storage_url="memory://",
        notify_retry_schedule="0.2,0.2,0.2",
    )
    api = processes.start(
        "api", ["serve", "--port", str(api_port)], env | {"IMAGEGEN_RUN_WORKERS": "false"}
    )
    await wait_until_up(f"{sim_url}/_sim/stats", simulator)
    await wait_until_up(f"{api_url}/healthz", api)
    async with receiving() as receiver, httpx.AsyncClient(base_url=api_url) as client:
        receiver.plan = [500, 500]  # two early failures: retries cross the workers too
        for _ in range(2):
            processes.start("worker", ["worker"], env)
        ids = [
            (
                await client.post(
                    "/v1/images/generations",
                    json={"prompt": f"p{i}", "notify_url": receiver.url},
                    headers=auth(),
                )
            ).json()["id"]
            for i in range(TASKS)
        ]

        async def tasks() -> list[dict[str, Any]]:
            page = await client.get("/v1/tasks?limit=100", headers=auth())
            found: list[dict[str, Any]] = page.json()["data"]
            return found

        def all_delivered(found: list[dict[str, Any]]) -> bool:
            return len(found) == TASKS and all(
                (t["notification"] or {}).get("status") == "delivered" for t in found
            )

        final = await eventually(tasks, all_delivered, timeout=60)

    per_state = Counter(
        (d.message["data"]["id"], d.message["type"]) for d in receiver.deliveries if d.valid
    )
    successful = Counter(
        (d.message["data"]["id"], d.message["type"])
        for d, status in zip(receiver.deliveries, [500, 500] + [204] * 1000, strict=False)
        if status == 204
    )
    assert all(d.valid for d in receiver.deliveries)
    assert sorted(ids) == sorted(t["id"] for t in final)
    assert set(successful) == {(t["id"], f"task.{t['status']}") for t in final}
    assert set(successful.values()) == {1}  # each terminal state: exactly one 2xx delivery
    assert len(receiver.deliveries) == TASKS + 2  # and no other request than the two retried
    assert sum(per_state.values()) == TASKS + 2
    engine = create_engine(pg_database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            rows = await session.scalar(select(func.count()).select_from(Notification))
    finally:
        await engine.dispose()
    assert rows == TASKS
