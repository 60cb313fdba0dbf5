"""Which handler runs which job kind."""

from __future__ import annotations

from app.tasks.context import TaskContext
from app.tasks.polling import Poller
from app.tasks.submission import Submitter
from app.workers.models import JobKind
from app.workers.runner import Worker


def build_worker(context: TaskContext) -> Worker:
    """A worker running every job kind this process knows."""
    settings = context.settings
    return Worker(
        context.sessions,
        {JobKind.SUBMIT: Submitter(context), JobKind.POLL: Poller(context)},
        concurrency=settings.worker_concurrency,
        lease=settings.job_lease_seconds,
    )
