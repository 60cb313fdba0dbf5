"""What a worker's SIGKILL may explain, counted apart only when the evidence proves it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .receiver import Delivery


@dataclass(frozen=True)
class Kill:
    """A worker's SIGKILL (wall clock): sent `at`; the worker was dead and its replacement not
    yet started at `replaced_at`. `worker_url` is the worker's public base URL, on which it
    built the callback URLs of the creates it sent (and so will its replacement)."""

    at: float
    replaced_at: float
    worker_url: str


CUT_BEFORE_ACCEPTANCE = "cut before the provider accepted it"
LOST_AFTER_ACCEPTANCE = "accepted upstream, the answer died with the worker, no callback"


def kill_casualty(
    row: Mapping[str, Any], upstream: Sequence[Mapping[str, Any]], kill: Kill | None
) -> str | None:
    """Which of the two outcomes a worker's SIGKILL may leave `row` with, when the evidence
    proves one; None otherwise (and then a task that did not complete is a loss).

    Both: the task failed `provider_timeout` without ever learning an upstream id, and its
    create started before the kill. Either no upstream task carries its id (the kill cut the
    create before the provider took it), or exactly one does, and that one was sent by the
    killed worker (its callback URL is on that worker's base URL, and it was accepted before
    the replacement started: a create sent as the kill landed may be accepted just after it),
    and its callback was never sent (dropped by the simulator): the provider's answer
    was in the killed worker's memory, not yet committed, and no callback could tell the id.
    The provider has no idempotency key and no search, so nothing else can recover it."""
    if kill is None:
        return None
    if (row["status"], row["error_code"], row["provider_task_id"]) != (
        "failed",
        "provider_timeout",
        None,
    ):
        return None
    started = row["submit_started_at"]
    if started is None or started.timestamp() > kill.at:
        return None
    if not upstream:
        return CUT_BEFORE_ACCEPTANCE
    if len(upstream) > 1:
        return None
    [sim_task] = upstream
    if (
        sim_task["accepted_at"] <= kill.replaced_at
        and str(sim_task["callback_url"]).startswith(f"{kill.worker_url}/callbacks/")
        and sim_task["callback_dropped"]
        and not sim_task["callbacks"]
    ):
        return LOST_AFTER_ACCEPTANCE
    return None


def resent_after_kill(
    posts: Sequence[Delivery], recorded_attempts: int | None, kill: Kill | None
) -> bool:
    """Whether a notification sent again after a 2xx is the one a worker's SIGKILL explains:
    the attempt answered 2xx was never recorded (the receiver got one POST more than the
    database counts; the record rides out database errors, so only the death of its sender
    between the answer and the commit loses it), that answer came before the killed worker's
    replacement started, and every later POST came after the kill (the job taken over once
    its lease expired). A receiver sees the same webhook-id again (Standard Webhooks: it
    dedupes on it); no sender can avoid this window."""
    if kill is None or recorded_attempts is None or len(posts) != recorded_attempts + 1:
        return False
    ordered = sorted(posts, key=lambda post: post.at)
    first = next((i for i, post in enumerate(ordered) if 200 <= post.answered < 300), None)
    if first is None or ordered[first].at > kill.replaced_at:
        return False
    later = ordered[first + 1 :]
    return bool(later) and all(post.at >= kill.at for post in later)
