"""Whether a job's handler enqueued work that is due at once, so that the worker claims after
that job finishes, and only then.

A worker cycle that records finished jobs used to claim every time, which mostly found nothing:
a submit job enqueues its poll for seconds later, an archive job nothing (or a notification),
while a poll job enqueues the archive, due at once. Every statement that enqueues a job tells
`note_enqueued` its time; the runner (app/workers/runner.py) gives each handler's asyncio task a
`Watch` of its own (a context variable: tasks the handler starts share it), and claims after the
job finishes when the watch saw due work. Work enqueued elsewhere in the process (the API's
creates and callbacks) wakes the workers explicitly, as before; work enqueued by other processes
is found by the idle poll, as before."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime

from app.core.clock import utcnow


@dataclass
class Watch:
    """What one handler run enqueued: True once some job it enqueued was due at once."""

    due: bool = False


_WATCH: ContextVar[Watch | None] = ContextVar("imagegen_enqueue_watch", default=None)


def watch() -> Watch:
    """A fresh watch for the current context (the handler's asyncio task)."""
    current = Watch()
    _WATCH.set(current)
    return current


def note_enqueued(run_at: datetime) -> None:
    """A job is being enqueued to run at `run_at` (its statement may still roll back: a claim
    that then finds nothing costs a round trip, never a job)."""
    current = _WATCH.get()
    if current is not None and not current.due and run_at <= utcnow():
        current.due = True
