"""The database unreachable: callbacks answer 503 so the provider retries, and nothing is lost."""

from __future__ import annotations

from typing import Any

from app.callbacks.models import CallbackDelivery
from app.core.config import Settings
from app.provider.simulator.config import SimulatorConfig
from tests.conftest import settings_values
from tests.support.callbacks import accepted_task, body, callback_path
from tests.support.gateway import running_gateway
from tests.support.proxy import cuttable
from tests.support.stack import running_stack
from tests.support.waiting import eventually

PROVIDER_ID = "task-unified-1-abcd1234"
JSON = {"Content-Type": "application/json"}


async def test_a_callback_during_an_outage_gets_503_and_the_retry_succeeds(
    pg_database_url: str,
) -> None:
    async with cuttable(pg_database_url) as proxy:
        settings = Settings(**settings_values(proxy.url))
        async with running_gateway(settings) as gateway:
            task = await accepted_task(gateway.sessions, PROVIDER_ID)
            content = body(PROVIDER_ID, "processing", 20)

            proxy.cut()
            during = await gateway.client.post(callback_path(task), content=content, headers=JSON)
            proxy.restore()
            after = await gateway.client.post(callback_path(task), content=content, headers=JSON)

            assert during.status_code == 503
            assert during.json()["error"]["code"] == "unavailable"
            assert after.status_code == 200
            assert after.json() == {"status": "accepted"}
            assert await gateway.count(CallbackDelivery) == 1
            assert (await gateway.task_row(task.id)).status == "processing"


async def test_the_simulators_retry_delivers_after_the_database_returns(
    pg_database_url: str,
) -> None:
    async with cuttable(pg_database_url) as proxy:
        config = SimulatorConfig(duration_seconds=0.5)
        async with running_stack(proxy.url, config, poll_after_seconds=3600) as stack:
            created = await stack.create()
            await stack.wait_for(created["id"], lambda t: t["provider_task_id"] is not None)
            proxy.cut()

            def refused_once(tasks: list[dict[str, Any]]) -> bool:
                return any(c["status"] == 503 for c in tasks[0]["callbacks"])

            await eventually(stack.sim_tasks, refused_once, timeout=15)
            proxy.restore()
            task = await stack.wait_for(created["id"], lambda t: t["status"] == "succeeded")

            [upstream] = await stack.sim_tasks()
            statuses = [c["status"] for c in upstream["callbacks"]]
            assert statuses[0] == 503
            assert statuses[-1] == 200
            assert task["provider_task_id"] == upstream["id"]
