"""One caller's notifications hanging on a slow receiver do not hold every worker slot: another
caller's task is submitted, archived and succeeds meanwhile."""

from __future__ import annotations

from typing import Any

from tests.conftest import BETA_KEY, auth
from tests.notify.receiver import HANG, receiving
from tests.support.stack import Stack, running_stack
from tests.support.waiting import eventually

# Two slots, one of which notify jobs may hold; a long timeout, so that alpha's notifications
# hang for the whole test, and a breaker that does not open within it.
SLOW: dict[str, Any] = {
    "worker_concurrency": 2,
    "notify_slot_share": 0.5,
    "notify_timeout_seconds": 60,
    "notify_breaker_failures": 1000,
    "shutdown_grace_seconds": 0.5,
}


async def hanging(stack: Stack, receiver: Any) -> int:
    return len(receiver.deliveries)


async def beta_task(stack: Stack, task_id: str) -> dict[str, Any]:
    response = await stack.gateway.client.get(f"/v1/tasks/{task_id}", headers=auth(BETA_KEY))
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    return task


async def test_a_task_of_another_caller_succeeds_while_notifications_hang(
    database_url: str,
) -> None:
    async with receiving(default=HANG) as receiver, running_stack(database_url, **SLOW) as stack:
        alpha = [
            await stack.create({"prompt": f"alpha {index}", "notify_url": receiver.url})
            for index in range(4)
        ]
        # alpha's tasks finish and their notifications start hanging.
        await eventually(lambda: hanging(stack, receiver), lambda count: count >= 1)

        response = await stack.gateway.client.post(
            "/v1/images/generations",
            json={"prompt": "beta's lighthouse"},
            headers=auth(BETA_KEY),
        )
        assert response.status_code == 202, response.text
        beta = response.json()

        task = await eventually(
            lambda: beta_task(stack, beta["id"]), lambda task: task["status"] == "succeeded"
        )

        assert task["images"]
        # Meanwhile alpha's notifications are still hanging, one at a time, none delivered.
        pending = [(await stack.task(created["id"])).get("notification") for created in alpha]
        assert all(note is None or note["status"] == "pending" for note in pending)
