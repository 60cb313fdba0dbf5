"""Callbacks over real HTTP: the simulator's real deliveries with faults, and hostile posts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from app.callbacks.models import CallbackDelivery
from app.provider.simulator.config import SimulatorConfig, SimulatorFaults
from app.tasks.events import EventKind, TaskEvent
from app.workers.models import Job, JobKind, JobState
from tests.support.callbacks import body, callback_path
from tests.support.stack import Stack, running_stack
from tests.support.waiting import eventually

JSON = {"Content-Type": "application/json"}


async def timeline(stack: Stack, task_id: str) -> list[TaskEvent]:
    async with stack.gateway.sessions() as session:
        query = select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)
        return list((await session.scalars(query)).all())


async def inbox(stack: Stack, task_id: str) -> list[CallbackDelivery]:
    async with stack.gateway.sessions() as session:
        query = select(CallbackDelivery).where(CallbackDelivery.task_id == task_id)
        return list((await session.scalars(query.order_by(CallbackDelivery.received_at))).all())


def transitions(events: list[TaskEvent]) -> list[tuple[str | None, str | None]]:
    return [(e.from_status, e.to_status) for e in events if e.kind == EventKind.TRANSITION]


async def test_four_concurrent_duplicates_make_one_transition(database_url: str) -> None:
    faults = SimulatorFaults(callback_duplicates=4)
    config = SimulatorConfig(duration_seconds=0.3, faults=faults)
    async with running_stack(database_url, config, poll_after_seconds=3600) as stack:
        created = await stack.create()

        await stack.wait_for(created["id"], lambda t: t["status"] == "succeeded")

        [upstream] = await eventually(
            stack.sim_tasks, lambda tasks: len(tasks[0]["callbacks"]) == 4
        )
        assert [c["status"] for c in upstream["callbacks"]] == [200] * 4
        [delivery] = await inbox(stack, created["id"])
        assert delivery.deliveries == 4
        events = await timeline(stack, created["id"])
        assert transitions(events) == [
            ("queued", "pending"),
            ("pending", "archiving"),
            ("archiving", "succeeded"),
        ]
        jobs = await stack.gateway.jobs(created["id"])
        assert [j.kind for j in jobs].count(JobKind.ARCHIVE) == 1


async def test_a_stale_state_after_the_final_one_changes_nothing(database_url: str) -> None:
    faults = SimulatorFaults(stale_after_final=True)
    config = SimulatorConfig(duration_seconds=0.3, faults=faults)
    async with running_stack(database_url, config, poll_after_seconds=3600) as stack:
        created = await stack.create()
        await stack.wait_for(created["id"], lambda t: t["status"] == "succeeded")

        async def both_recorded() -> list[CallbackDelivery]:
            return await inbox(stack, created["id"])

        deliveries = await eventually(both_recorded, lambda rows: len(rows) == 2)
        task = await stack.task(created["id"])

        assert [d.reported_status for d in deliveries] == ["completed", "processing"]
        assert (task["status"], task["progress"]) == ("succeeded", 100)
        events = await timeline(stack, created["id"])
        assert transitions(events) == [
            ("queued", "pending"),
            ("pending", "archiving"),
            ("archiving", "succeeded"),
        ]


async def test_every_callback_dropped_still_completes_every_task_by_polling(
    database_url: str,
) -> None:
    faults = SimulatorFaults(callback_drop_rate=1.0)
    config = SimulatorConfig(duration_seconds=0.5, faults=faults)
    async with running_stack(database_url, config, poll_after_seconds=0.5) as stack:
        created = [await stack.create({"prompt": f"p{i}"}) for i in range(5)]

        for task in created:
            await stack.wait_for(task["id"], lambda t: t["status"] == "succeeded", timeout=30)

        upstream = await stack.sim_tasks()
        assert len(upstream) == 5
        assert all(item["callbacks"] == [] for item in upstream)
        for task in created:
            assert await inbox(stack, task["id"]) == []
            polls = [e for e in await timeline(stack, task["id"]) if e.kind == EventKind.POLL]
            assert polls[-1].outcome == "completed"


async def test_a_quiet_task_is_polled_every_poll_after_seconds_not_less_often(
    database_url: str,
) -> None:
    # CONTRACT.md: a task with no news for IMAGEGEN_POLL_AFTER_SECONDS is polled. Each answer
    # is news, so every next poll is due that long after the last one, however many came before.
    faults = SimulatorFaults(callback_drop_rate=1.0)
    config = SimulatorConfig(duration_seconds=3600, faults=faults)
    async with running_stack(database_url, config, poll_after_seconds=0.3) as stack:
        created = await stack.create()

        async def snapshot() -> tuple[Job | None, list[TaskEvent]]:
            """The poll job and the answered polls, read together."""
            async with stack.gateway.sessions() as session:
                job = await session.scalar(
                    select(Job).where(Job.task_id == created["id"], Job.kind == JobKind.POLL)
                )
                events = await session.scalars(
                    select(TaskEvent)
                    .where(TaskEvent.task_id == created["id"], TaskEvent.kind == EventKind.POLL)
                    .order_by(TaskEvent.at)
                )
                return job, [e for e in events if e.outcome == "pending"]

        # Waiting between runs (not leased), after six answers: its due time is the last one's.
        job, polls = await eventually(
            snapshot,
            lambda found: (
                found[0] is not None and found[0].state == JobState.QUEUED and len(found[1]) >= 6
            ),
            timeout=30,
        )

    # Due 0.3 s after the sixth answer; a backoff growing from 0.3 s by 1.5x would be 2.3 s.
    assert job is not None
    assert (job.run_at - polls[-1].at).total_seconds() < 1.0


async def test_a_task_the_provider_never_finishes_fails_with_provider_timeout(
    sqlite_database_url: str,
) -> None:
    faults = SimulatorFaults(callback_drop_rate=1.0)
    config = SimulatorConfig(duration_seconds=3600, faults=faults)
    async with running_stack(
        sqlite_database_url, config, poll_after_seconds=0.3, poll_max_wait_seconds=2
    ) as stack:
        created = await stack.create()

        task = await stack.wait_for(created["id"], lambda t: t["status"] == "failed")

        assert task["error"]["code"] == "provider_timeout"
        polls = [e for e in await timeline(stack, created["id"]) if e.kind == EventKind.POLL]
        assert polls
        assert {poll.outcome for poll in polls} == {"pending"}
        row = await stack.gateway.task_row(created["id"])
        assert row.completed_at is not None
        assert row.submitted_at is not None
        assert (row.completed_at - row.submitted_at).total_seconds() >= 2


async def test_a_task_that_finished_while_its_late_poll_was_due_is_taken_not_failed(
    database_url: str,
) -> None:
    # No callback arrives; the only poll runs 2.5 s after submission, past the 1 s wait, when
    # the provider has finished (after 1 s): the last question finds the result.
    faults = SimulatorFaults(callback_drop_rate=1.0)
    config = SimulatorConfig(duration_seconds=1.0, faults=faults)
    async with running_stack(
        database_url, config, poll_after_seconds=2.5, poll_max_wait_seconds=1
    ) as stack:
        created = await stack.create()

        task = await stack.wait_for(created["id"], lambda t: t["status"] in ("succeeded", "failed"))

        assert task["status"] == "succeeded", task["error"]
        polls = [e for e in await timeline(stack, created["id"]) if e.kind == EventKind.POLL]
        assert [poll.outcome for poll in polls] == ["completed"]


async def test_hostile_posts_over_http_change_nothing(database_url: str) -> None:
    config = SimulatorConfig(duration_seconds=3600)
    async with running_stack(database_url, config, poll_after_seconds=3600) as stack:
        victim = await stack.create({"prompt": "victim"})
        other = await stack.create({"prompt": "other"})
        await stack.wait_for(victim["id"], lambda t: t["provider_task_id"] is not None)
        await stack.wait_for(other["id"], lambda t: t["provider_task_id"] is not None)
        row = await stack.gateway.task_row(victim["id"])
        other_row = await stack.gateway.task_row(other["id"])
        completed = body(row.provider_task_id or "", "completed")
        good_path = callback_path(row)
        other_token = callback_path(other_row).rsplit("/", 1)[1]
        posts: list[tuple[str, bytes, int]] = [
            (good_path[:-4] + "AAAA", completed, 401),
            (good_path.rsplit("/", 1)[0] + "/" + other_token, completed, 401),
            (good_path, b"{" + b" " * (1024 * 1024 + 1) + b"}", 413),
            (good_path, b"{not json", 400),
            (callback_path(other_row), completed, 400),
        ]
        client = stack.gateway.client
        before: dict[str, Any] = await stack.task(victim["id"])

        answers = [
            (await client.post(path, content=content, headers=JSON)).status_code
            for path, content, _ in posts
        ]

        assert answers == [expected for _, _, expected in posts]
        after = await stack.task(victim["id"])
        assert after == before
        assert [d.outcome for d in await inbox(stack, victim["id"])] == ["malformed"]
        assert [d.outcome for d in await inbox(stack, other["id"])] == ["mismatch"]


async def test_a_failing_confirmation_is_retried_until_the_provider_answers(
    database_url: str,
) -> None:
    faults = SimulatorFaults(query_500_rate=1.0)
    config = SimulatorConfig(duration_seconds=0.3, faults=faults)
    async with running_stack(database_url, config, poll_after_seconds=3600) as stack:
        created = await stack.create()

        async def poll_errors() -> list[TaskEvent]:
            events = await timeline(stack, created["id"])
            return [e for e in events if e.kind == EventKind.POLL and e.outcome == "error"]

        errors = await eventually(poll_errors, lambda found: len(found) >= 2)
        assert (await stack.task(created["id"]))["status"] == "pending"
        await stack.set_faults(query_500_rate=0.0)

        task = await stack.wait_for(created["id"], lambda t: t["status"] == "succeeded")

        assert errors[0].detail == {"http_status": 500}
        row = await stack.gateway.task_row(created["id"])
        assert row.result_urls == (await stack.sim_tasks())[0]["results"]
        assert task["progress"] == 100
