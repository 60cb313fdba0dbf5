"""The general callback recorder: SQLAlchemy ORM in one transaction, on any database.

It handles every case, including the rare ones (malformed bodies, bodies about another upstream
task, adopting the upstream id of a submission whose answer was lost)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.callbacks import repository as inbox
from app.callbacks.models import DeliveryOutcome
from app.callbacks.service import (
    ACCEPTED,
    DUPLICATE,
    MALFORMED,
    MISMATCH,
    NOT_FOUND,
    UNAUTHORIZED,
    UNSTORED,
    Answer,
    Delivery,
    TaskSnapshot,
)
from app.core.db import after_commit
from app.provider.types import ProviderTask, is_provider_task_id
from app.tasks import repository as tasks
from app.tasks import service
from app.tasks.models import SubmitState, Task
from app.tasks.states import ProviderNews, TaskState, TaskStatus
from app.workers import repository as jobs
from app.workers.models import JobKind

log = logging.getLogger(__name__)


_REFUSALS: dict[str, Answer] = {
    DeliveryOutcome.MALFORMED: MALFORMED,
    DeliveryOutcome.MISMATCH: MISMATCH,
}


class OrmRecorder:
    """Inbox row, transition and follow-up job in one ORM transaction."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def snapshot(self, task_id: str) -> TaskSnapshot | None:
        async with self._sessions() as session:
            row = (await session.execute(inbox.snapshot_statement(task_id))).one_or_none()
        return None if row is None else snapshot_of(row._mapping)

    async def receive(self, delivery: Delivery) -> Answer:
        now = delivery.received_at
        async with self._sessions() as session:
            task = await tasks.get(session, delivery.task_id)
            if task is None:  # gone since the URL was admitted
                return NOT_FOUND
            if task.callback_nonce != delivery.nonce:  # a URL of another nonce: state untouched
                return UNAUTHORIZED
            key = (task.id, delivery.digest)
            stored = await inbox.record_if_new(
                session, task_id=task.id, digest=delivery.digest, body=delivery.body, now=now
            )
            if not stored:
                first = await inbox.count_repeat(
                    session, task_id=task.id, digest=delivery.digest, now=now
                )
                if first is not None:
                    await session.commit()
                    # The same body gets the same answer: a refused one is refused again.
                    return _REFUSALS.get(first, DUPLICATE)
                # Not stored and not seen: the task's inbox is full. Handled all the same.
            news = delivery.news
            if news is None:
                if stored:
                    await inbox.set_outcome(session, *key, DeliveryOutcome.MALFORMED, None)
                    await session.commit()
                return MALFORMED
            if not await _belongs(session, task, news, now):
                if stored:
                    outcome = DeliveryOutcome.MISMATCH
                    await inbox.set_outcome(session, *key, outcome, news.raw_status)
                await session.commit()
                return MISMATCH
            await service.apply_event(
                session,
                task,
                ProviderNews(news, confirmed=False),
                now=now,
                source="callback",
                extra={"last_news_at": now},
            )
            if stored:
                outcome = DeliveryOutcome.APPLIED
                await inbox.set_outcome(session, *key, outcome, news.raw_status)
            await session.commit()
        return ACCEPTED if stored else UNSTORED


def snapshot_of(row: Mapping[Any, Any]) -> TaskSnapshot:
    """The snapshot of a row of `snapshot_statement` (by column name)."""
    state = TaskState(TaskStatus(row["status"]), row["progress"], final_claimed=row["claimed"])
    return TaskSnapshot(
        row["callback_nonce"], state, row["provider_task_id"], row["notify_url"], row["caller"]
    )


async def _belongs(session: AsyncSession, task: Task, news: ProviderTask, now: datetime) -> bool:
    """Whether the body is about this task; adopts the upstream id of an uncertain submission.

    The adopted id is only a hint: the poll job queued here confirms it upstream before
    anything is archived."""
    if task.provider_task_id is not None:
        return task.provider_task_id == news.id
    if task.submit_state not in (SubmitState.UNCERTAIN, SubmitState.IN_FLIGHT):
        return False
    if not is_provider_task_id(news.id):
        return False
    adopted = await tasks.update_fields(
        session,
        task.id,
        {
            "provider_task_id": news.id,
            "submit_state": SubmitState.ACCEPTED,
            "submitted_at": now,
            "updated_at": now,
        },
        provider_task_id=None,
    )
    if adopted:
        after_commit(
            session,
            functools.partial(
                log.warning,
                "adopted the upstream task of a submission whose answer was lost",
                extra={"task_id": task.id, "provider_task_id": news.id},
            ),
        )
        await jobs.enqueue(session, JobKind.POLL, task.id, now)
        await tasks.get(session, task.id)
    return adopted
