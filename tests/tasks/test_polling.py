"""The poll job's decisions (app/tasks/polling.py): whether to ask the provider, what its answer
does to the task, and when the next poll is due; the provider is a scripted stand-in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.clock import utcnow
from app.core.config import Settings
from app.core.db import create_engine, create_sessionmaker
from app.provider.evolink import EvolinkClient
from app.provider.files import ProviderFilesClient
from app.provider.types import ProviderStatus, ProviderTask, ProviderUnavailable
from app.storage.store import ObjectStore
from app.tasks import repository
from app.tasks.context import TaskContext
from app.tasks.events import EventKind, TaskEvent
from app.tasks.models import Task
from app.tasks.polling import Poller
from app.workers.models import Job, JobKind
from app.workers.outcomes import Done, Outcome, RetryAt
from tests.conftest import settings_values
from tests.support.rows import make_task

UPSTREAM_ID = "task-unified-1-polling"
POLL_AFTER = timedelta(seconds=60)
MAX_WAIT = timedelta(hours=2)


class Upstream:
    """The provider's query endpoint, answering from a script."""

    def __init__(self) -> None:
        self.answers: list[ProviderTask | Exception] = []
        self.asked: list[str] = []

    async def get_task(self, task_id: str) -> ProviderTask:
        self.asked.append(task_id)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def news(status: ProviderStatus, progress: int = 40, task_id: str = UPSTREAM_ID) -> ProviderTask:
    results = ("https://cdn.example.com/a.png",) if status is ProviderStatus.COMPLETED else ()
    return ProviderTask(task_id, status, status.value, progress, results)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
def poller(
    database_url: str, sessions: async_sessionmaker[AsyncSession], upstream: Upstream
) -> Poller:
    settings = Settings(
        **settings_values(
            database_url, poll_after_seconds=POLL_AFTER, poll_max_wait_seconds=MAX_WAIT
        )
    )
    provider = cast(EvolinkClient, upstream)  # only get_task is called
    files = cast(ProviderFilesClient, None)  # never called by the poller
    store = ObjectStore.from_url("memory://")
    return Poller(TaskContext(sessions, settings, provider, "http://gateway.test", store, files))


async def task_upstream(
    sessions: async_sessionmaker[AsyncSession], **fields: Any
) -> tuple[Task, datetime]:
    """A task the provider took a minute ago (pending, no news since), with `fields` applied."""
    task = await make_task(sessions)
    now = utcnow()
    values = {
        "status": "pending",
        "provider_task_id": UPSTREAM_ID,
        "submitted_at": now - timedelta(minutes=1),
        "last_news_at": now - timedelta(minutes=1),
    } | fields
    async with sessions() as session:
        await repository.update_fields(session, task.id, values)
        await session.commit()
    return task, now


async def poll(poller: Poller, task: Task, attempts: int = 2) -> Outcome:
    return await poller(Job(kind=JobKind.POLL, task_id=task.id, attempts=attempts))


async def row(sessions: async_sessionmaker[AsyncSession], task: Task) -> Task:
    async with sessions() as session:
        found = await repository.get(session, task.id)
    assert found is not None
    return found


async def poll_lines(sessions: async_sessionmaker[AsyncSession], task: Task) -> list[TaskEvent]:
    async with sessions() as session:
        query = select(TaskEvent).where(
            TaskEvent.task_id == task.id, TaskEvent.kind == EventKind.POLL
        )
        return list((await session.scalars(query.order_by(TaskEvent.at))).all())


@pytest.mark.parametrize(
    "fields",
    [{"status": "succeeded"}, {"status": "failed"}, {"provider_task_id": None}],
    ids=["succeeded", "failed", "never-taken"],
)
async def test_a_finished_or_never_taken_task_is_done_without_asking(
    poller: Poller,
    sessions: async_sessionmaker[AsyncSession],
    upstream: Upstream,
    fields: dict[str, Any],
) -> None:
    task, _ = await task_upstream(sessions, **fields)

    assert isinstance(await poll(poller, task), Done)
    assert upstream.asked == []


async def test_fresh_news_postpones_the_poll_to_the_end_of_the_quiet_period(
    poller: Poller, sessions: async_sessionmaker[AsyncSession], upstream: Upstream
) -> None:
    heard = utcnow() - timedelta(seconds=10)
    task, _ = await task_upstream(sessions, last_news_at=heard)

    outcome = await poll(poller, task)

    assert outcome == RetryAt(heard + POLL_AFTER, "")
    assert upstream.asked == []


@pytest.mark.parametrize(
    ("attempts", "fields"),
    [(1, {}), (2, {"final_claimed_at": utcnow()})],
    ids=["first-poll", "final-claimed"],
)
async def test_the_first_poll_and_an_unconfirmed_final_ask_despite_fresh_news(
    poller: Poller,
    sessions: async_sessionmaker[AsyncSession],
    upstream: Upstream,
    attempts: int,
    fields: dict[str, Any],
) -> None:
    task, _ = await task_upstream(sessions, last_news_at=utcnow(), **fields)
    upstream.answers.append(news(ProviderStatus.PROCESSING))

    await poll(poller, task, attempts)

    assert upstream.asked == [UPSTREAM_ID]


async def test_progress_is_recorded_and_the_next_poll_is_one_quiet_period_later(
    poller: Poller, sessions: async_sessionmaker[AsyncSession], upstream: Upstream
) -> None:
    task, before = await task_upstream(sessions)
    upstream.answers.append(news(ProviderStatus.PROCESSING, progress=40))

    outcome = await poll(poller, task)

    after = utcnow()
    assert isinstance(outcome, RetryAt)
    assert outcome.error == ""
    assert before + POLL_AFTER <= outcome.when <= after + POLL_AFTER
    fresh = await row(sessions, task)
    assert (fresh.status, fresh.progress) == ("processing", 40)
    assert fresh.last_news_at is not None
    assert before <= fresh.last_news_at <= after
    assert [line.outcome for line in await poll_lines(sessions, task)] == ["processing"]


async def test_a_completed_task_is_taken_with_its_results(
    poller: Poller, sessions: async_sessionmaker[AsyncSession], upstream: Upstream
) -> None:
    task, _ = await task_upstream(sessions)
    upstream.answers.append(news(ProviderStatus.COMPLETED, progress=100))

    assert isinstance(await poll(poller, task), Done)

    fresh = await row(sessions, task)
    assert fresh.status == "archiving"
    assert fresh.result_urls == ["https://cdn.example.com/a.png"]
    assert fresh.provider_completed_at is not None


async def test_an_unavailable_provider_is_asked_again_on_a_growing_backoff(
    poller: Poller, sessions: async_sessionmaker[AsyncSession], upstream: Upstream
) -> None:
    task, before = await task_upstream(sessions)
    upstream.answers.append(ProviderUnavailable("upstream 503", status_code=503))

    outcome = await poll(poller, task, attempts=3)

    assert isinstance(outcome, RetryAt)
    assert outcome.error == "upstream 503"
    assert before < outcome.when <= utcnow() + timedelta(seconds=2 * 2**2)  # base 2 s, attempt 3
    assert (await row(sessions, task)).status == "pending"
    [line] = await poll_lines(sessions, task)
    assert (line.outcome, line.detail) == ("error", {"http_status": 503})


async def test_an_answer_about_another_task_is_not_applied(
    poller: Poller, sessions: async_sessionmaker[AsyncSession], upstream: Upstream
) -> None:
    task, _ = await task_upstream(sessions)
    upstream.answers.append(news(ProviderStatus.COMPLETED, task_id="task-unified-2-other"))

    outcome = await poll(poller, task)

    assert isinstance(outcome, RetryAt)
    assert outcome.error == "the provider answered about another task"
    assert (await row(sessions, task)).status == "pending"


async def test_a_final_claim_the_query_does_not_confirm_is_asked_again_soon(
    poller: Poller, sessions: async_sessionmaker[AsyncSession], upstream: Upstream
) -> None:
    task, _ = await task_upstream(sessions, final_claimed_at=utcnow())
    upstream.answers.append(news(ProviderStatus.PROCESSING))

    outcome = await poll(poller, task, attempts=1)

    assert isinstance(outcome, RetryAt)
    assert outcome.error == "confirmation pending"
    assert outcome.when <= utcnow() + timedelta(seconds=1)  # base 1 s, attempt 1


@pytest.mark.parametrize(
    "answer",
    [news(ProviderStatus.PROCESSING), ProviderUnavailable("down", status_code=503)],
    ids=["still-running", "unavailable"],
)
async def test_past_the_wait_a_task_still_running_fails_with_provider_timeout(
    poller: Poller,
    sessions: async_sessionmaker[AsyncSession],
    upstream: Upstream,
    answer: ProviderTask | Exception,
) -> None:
    task, _ = await task_upstream(sessions, submitted_at=utcnow() - MAX_WAIT - timedelta(minutes=1))
    upstream.answers.append(answer)

    assert isinstance(await poll(poller, task), Done)

    fresh = await row(sessions, task)
    assert (fresh.status, fresh.error_code) == ("failed", "provider_timeout")
    assert upstream.asked == [UPSTREAM_ID]  # one last question first


async def test_past_the_wait_a_task_that_finished_meanwhile_is_taken(
    poller: Poller, sessions: async_sessionmaker[AsyncSession], upstream: Upstream
) -> None:
    task, _ = await task_upstream(sessions, submitted_at=utcnow() - MAX_WAIT - timedelta(minutes=1))
    upstream.answers.append(news(ProviderStatus.COMPLETED, progress=100))

    assert isinstance(await poll(poller, task), Done)

    assert (await row(sessions, task)).status == "archiving"


async def test_a_retry_grants_the_provider_another_full_wait(
    poller: Poller, sessions: async_sessionmaker[AsyncSession], upstream: Upstream
) -> None:
    long_ago = utcnow() - MAX_WAIT - timedelta(minutes=1)
    task, _ = await task_upstream(
        sessions, submitted_at=long_ago, redriven_at=utcnow() - timedelta(minutes=1)
    )
    upstream.answers.append(news(ProviderStatus.PROCESSING))

    outcome = await poll(poller, task)

    assert isinstance(outcome, RetryAt)
    assert (await row(sessions, task)).status == "processing"
