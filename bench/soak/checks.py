"""The checks of a soak run: nothing lost, nothing duplicated; and the figures of the run."""

from __future__ import annotations

import asyncio
import math
from collections import Counter, defaultdict
from typing import Any

import asyncpg
import httpx

from .config import CALLBACK_TASK, EVENT_TYPES, OBJECT_KEY, PREFIX, TERMINAL, SoakConfig
from .evidence import (
    CUT_BEFORE_ACCEPTANCE,
    LOST_AFTER_ACCEPTANCE,
    Kill,
    kill_casualty,
    resent_after_kill,
)
from .load import Submission
from .processes import stored_objects
from .receiver import Delivery, Receiver
from .report import Report


async def fetch(db: asyncpg.Connection, query: str, *args: Any) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(query, *args)
    return rows


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


async def check_run(
    config: SoakConfig,
    report: Report,
    db: asyncpg.Connection,
    sim_url: str,
    s3: Any,
    receiver: Receiver | None,
    submissions: list[Submission],
    started: float,
    submitted_at: float,
    drained_at: float,
    drained: bool,
) -> None:
    """Check the run's rows, upstream tasks, objects and notifications; record its figures."""
    rows = await fetch(
        db,
        "SELECT id, idempotency_key, status, error_code, provider_task_id, notify_url,"
        " completed_at, submit_started_at, submitted_at FROM tasks",
    )
    images = await fetch(db, "SELECT task_id, index, sha256 FROM task_images")
    async with httpx.AsyncClient(timeout=60.0) as client:
        upstream: list[dict[str, Any]] = (await client.get(f"{sim_url}/_sim/tasks")).json()
        sim_by_id: dict[str, dict[str, Any]] = {task["id"]: task for task in upstream}
        stats: dict[str, Any] = (await client.get(f"{sim_url}/_sim/stats")).json()
    objects = await asyncio.to_thread(stored_objects, s3)
    duplicates: Counter[str] = Counter()
    losses: Counter[str] = Counter()

    # Every create answered, one row per Idempotency-Key.
    unanswered = [s for s in submissions if s.task_id is None]
    losses["creates not accepted"] = len(unanswered)
    report.check(
        "every create accepted (retried with its key)",
        not unanswered,
        f"{len(submissions) - len(unanswered)}/{len(submissions)}"
        + (f"; first: {unanswered[0].error}" if unanswered else ""),
    )
    by_id = {row["id"]: row for row in rows}
    keys = Counter(row["idempotency_key"] for row in rows)
    submitted_ids = {s.task_id for s in submissions if s.task_id}
    duplicates["task rows"] = len(rows) - len(keys) + sum(n - 1 for n in keys.values())
    losses["task rows"] = len(submitted_ids - set(by_id))
    report.check(
        "one task per submission",
        len(rows) == len(submissions) == len(keys) and submitted_ids <= set(by_id),
        f"{len(rows)} rows, {len(keys)} keys, {len(submissions)} submissions",
    )
    open_rows = [row for row in rows if row["status"] not in TERMINAL]
    losses["tasks not terminal"] = len(open_rows)
    report.check(
        "every task terminal",
        drained and not open_rows,
        f"{len(rows) - len(open_rows)}/{len(rows)} terminal"
        + (f"; e.g. {open_rows[0]['id']} {open_rows[0]['status']}" if open_rows else ""),
    )

    # Upstream: exactly one provider task per gateway task (matched by the callback URL, which
    # carries the gateway's task id, and by the adopted provider_task_id).
    upstream_by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sim_task in upstream:
        match = CALLBACK_TASK.search(sim_task.get("callback_url") or "")
        upstream_by_task[match.group(1) if match else "?"].append(sim_task)
    extra_upstream = sum(len(found) - 1 for found in upstream_by_task.values() if len(found) > 1)
    extra_upstream += sum(len(found) for t, found in upstream_by_task.items() if t not in by_id)
    # A worker's SIGKILL in the middle of a create leaves an outcome the service cannot learn
    # (kill_casualty): the task is never resubmitted (at most one upstream task) and fails
    # `provider_timeout`. Such a task is counted apart, and only when the evidence proves it.
    kill = None
    if (
        report.worker_killed_at is not None
        and report.worker_replaced_at is not None
        and report.killed_worker_url is not None
    ):
        kill = Kill(report.worker_killed_at, report.worker_replaced_at, report.killed_worker_url)
    casualties = {
        row["id"]: kind
        for row in rows
        if (kind := kill_casualty(row, upstream_by_task.get(row["id"], []), kill)) is not None
    }
    cut_ids = {task_id for task_id, kind in casualties.items() if kind == CUT_BEFORE_ACCEPTANCE}
    lost_ids = {task_id for task_id, kind in casualties.items() if kind == LOST_AFTER_ACCEPTANCE}
    without_upstream = [
        row
        for row in rows
        if len(upstream_by_task.get(row["id"], [])) == 0 and row["id"] not in cut_ids
    ]
    mismatched = [
        row
        for row in rows
        if row["provider_task_id"] is not None
        and [t["id"] for t in upstream_by_task.get(row["id"], [])] != [row["provider_task_id"]]
    ]
    duplicates["upstream tasks"] = extra_upstream
    losses["tasks never sent upstream"] = len(without_upstream)
    report.check(
        "exactly one upstream task per task",
        len(upstream) == len(rows) - len(cut_ids) and not extra_upstream
        and not without_upstream and not mismatched,
        f"{len(upstream)} upstream for {len(rows)} tasks; {extra_upstream} extra, "
        f"{len(without_upstream)} missing, {len(mismatched)} with another provider id, "
        f"{len(cut_ids)} creates cut by the SIGKILL before the provider took them and "
        f"{len(lost_ids)} whose answer died with the killed worker, no callback (each failed "
        "provider_timeout, not resent)",
    )  # fmt: skip

    # Outcomes and bytes: failed exactly when failed upstream; the rest succeeded with the
    # simulator's bytes, recorded and stored.
    image_sha = {(r["task_id"], r["index"]): r["sha256"] for r in images}
    wrong_outcome: list[str] = []
    wrong_bytes: list[str] = []
    latencies: list[float] = []
    for row in rows:
        found = sim_by_id.get(row["provider_task_id"] or "")
        if found is None:
            # Sent upstream, but the id was never adopted (unless the answer died with the
            # SIGKILLed worker and no callback came).
            if upstream_by_task.get(row["id"]) and row["id"] not in lost_ids:
                wrong_outcome.append(f"{row['id']}: {row['status']} {row['error_code']}")
            continue
        sim_task = found
        if sim_task["final_status"] == "failed":
            if row["status"] != "failed" or row["error_code"] != sim_task["error_code"]:
                wrong_outcome.append(f"{row['id']}: {row['status']} {row['error_code']}")
            continue
        if row["status"] != "succeeded":
            wrong_outcome.append(f"{row['id']}: {row['status']} {row['error_code']}")
            continue
        key = f"{PREFIX}/tasks/{row['id']}/images/0"
        expected = sim_task["image_sha256"]
        if not expected or image_sha.get((row["id"], 0)) != expected:
            wrong_bytes.append(f"{row['id']}: recorded sha256 differs")
        elif objects.get(key) != expected:
            wrong_bytes.append(f"{row['id']}: stored object missing or differs")
        if row["completed_at"] is not None and sim_task.get("final_at") is not None:
            latencies.append(row["completed_at"].timestamp() - sim_task["final_at"])
    losses["wrong outcome"] = len(wrong_outcome)
    losses["bytes missing or wrong"] = len(wrong_bytes)
    succeeded = sum(row["status"] == "succeeded" for row in rows)
    failed = sum(row["status"] == "failed" for row in rows)
    failed_upstream = sum(t["final_status"] == "failed" for t in upstream)
    report.check(
        "failed exactly when failed upstream (same code)",
        not wrong_outcome,
        f"{failed} failed, {failed_upstream} failed upstream"
        + (f"; e.g. {wrong_outcome[0]}" if wrong_outcome else ""),
    )
    report.check(
        "every other task succeeded with the simulator's bytes (sha256, stored object)",
        not wrong_bytes and succeeded + failed == len(rows),
        f"{succeeded - len(wrong_bytes)}/{succeeded} match"
        + (f"; e.g. {wrong_bytes[0]}" if wrong_bytes else ""),
    )

    # One object per image (and at most one thumbnail beside it), nothing else in the bucket.
    per_image: Counter[tuple[str, int]] = Counter()
    thumbnails: set[tuple[str, int]] = set()
    stray = 0
    for key in objects:
        match = OBJECT_KEY.match(key)
        if match is None:
            stray += 1
        elif match.group(3):
            thumbnails.add((match.group(1), int(match.group(2))))
        else:
            per_image[(match.group(1), int(match.group(2)))] += 1
    succeeded_images = {(r["task_id"], r["index"]) for r in images}
    extra_objects = stray + len([k for k in per_image if k not in succeeded_images])
    extra_objects += len(thumbnails - succeeded_images)
    missing_objects = len(succeeded_images - set(per_image))
    duplicates["stored objects"] = extra_objects
    losses["images not stored"] = missing_objects
    report.check(
        "one object per image",
        sum(per_image.values()) == len(succeeded_images) == succeeded and not extra_objects
        and not missing_objects,
        f"{sum(per_image.values())} objects for {len(succeeded_images)} images "
        f"({len(thumbnails)} thumbnails beside them); {extra_objects} extra, "
        f"{missing_objects} missing",
    )  # fmt: skip

    # Notifications: one webhook-id per terminal task, delivered, never sent after a 2xx.
    notified_tasks = [r for r in rows if r["notify_url"] and r["status"] in TERMINAL]
    deliveries = receiver.deliveries if receiver is not None else []
    if receiver is not None:
        ids_by_task: dict[str, set[str]] = defaultdict(set)
        for delivery in deliveries:
            ids_by_task[delivery.task_id].add(delivery.webhook_id)
        not_notified = [r for r in notified_tasks if not ids_by_task.get(r["id"])]
        several = [t for t, found in ids_by_task.items() if len(found) > 1]
        undelivered = {d.webhook_id for d in deliveries} - receiver.delivered
        notes = await fetch(db, "SELECT id, attempts FROM notifications")
        recorded = {str(note["id"]): int(note["attempts"]) for note in notes}
        posts_by_id: dict[str, list[Delivery]] = defaultdict(list)
        for delivery in deliveries:
            posts_by_id[delivery.webhook_id].append(delivery)
        resent_ids = {
            webhook_id
            for webhook_id, posts in posts_by_id.items()
            if any(post.after_success for post in posts)
            and resent_after_kill(posts, recorded.get(webhook_id), kill)
        }
        after_success = [
            d for d in deliveries if d.after_success and d.webhook_id not in resent_ids
        ]
        wrong_type = [
            d
            for d in deliveries
            if d.task_id not in by_id or d.type != EVENT_TYPES.get(by_id[d.task_id]["status"])
        ]
        unverified = [d for d in deliveries if not d.verified]
        duplicates["notifications (webhook-ids)"] = sum(len(ids_by_task[t]) - 1 for t in several)
        duplicates["notifications sent after a 2xx"] = len(after_success)
        losses["notifications"] = len(not_notified) + len(undelivered)
        report.check(
            "one notification per terminal task, none after a 2xx",
            not not_notified and not several and not undelivered and not after_success
            and not wrong_type and not unverified,
            f"{len(receiver.delivered)} delivered for {len(notified_tasks)} tasks in "
            f"{len(deliveries)} POSTs ({sum(d.answered != 204 for d in deliveries)} answered 503"
            f" and retried); {len(not_notified)} missing, {len(several)} with several ids, "
            f"{len(after_success)} after a 2xx ({len(resent_ids)} more sent again because the "
            f"SIGKILL cut the record of their 2xx), {len(wrong_type)} wrong type, "
            f"{len(unverified)} bad signatures",
        )  # fmt: skip
    else:
        resent_ids = set()
    report.duplicates = sum(duplicates.values())
    report.losses = sum(losses.values())
    report.check("duplicates", report.duplicates == 0, _counts(duplicates))
    report.check("losses", report.losses == 0, _counts(losses))

    finished = [r["completed_at"].timestamp() for r in rows if r["completed_at"] is not None]
    wall = (max(finished) if finished else drained_at) - started
    retried = [s for s in submissions if s.attempts > 1]
    service_failures = Counter(
        str(row["error_code"])
        for row in rows
        if row["status"] == "failed"
        and sim_by_id.get(row["provider_task_id"] or "", {}).get("final_status") != "failed"
    )
    answered_503 = sum(d.answered != 204 for d in deliveries)
    # The window in which a SIGKILL loses an accepted create's answer: from the provider's
    # acceptance to the start of the write of the id (that write's own commit comes on top).
    windows = [
        row["submitted_at"].timestamp() - sim_by_id[row["provider_task_id"]]["accepted_at"]
        for row in rows
        if row["submitted_at"] is not None and row["provider_task_id"] in sim_by_id
    ]
    notified = f"{len(deliveries)} / {answered_503}" if receiver else "not checked (no app.notify)"
    report.figures += [
        ("tasks", f"{len(submissions)}, {config.rate:g}/s over {submitted_at - started:.0f} s"),
        ("succeeded / failed", f"{succeeded} / {failed} ({failed_upstream} failed upstream)"),
        ("failed by the service", _counts(service_failures)),
        ("wall time, first submission to last terminal", f"{wall:.1f} s"),
        ("throughput", f"{len(rows) / wall:.1f} tasks/s" if wall > 0 else "-"),
        ("upstream completion -> succeeded, p50", _seconds(latencies, 0.50)),
        ("upstream completion -> succeeded, p99", _seconds(latencies, 0.99)),
        ("upstream completion -> succeeded, max", _seconds(latencies, 1.0)),
        ("creates retried by the client (same key)", str(len(retried))),
        ("creates cut by the worker's SIGKILL (not resent)", str(len(cut_ids))),
        ("answers lost with the SIGKILLed worker (accepted, no callback)", str(len(lost_ids))),
        ("notifications sent again: SIGKILL between the 2xx and its record", str(len(resent_ids))),
        (
            "provider acceptance -> id recorded, p50 / p99",
            f"{_ms(windows, 0.5)} / {_ms(windows, 0.99)}",
        ),
        ("callbacks dropped / sent", f"{stats['callbacks_dropped']} / {stats['callbacks_sent']}"),
        ("stale callbacks after final", str(stats["callbacks_stale"])),
        ("creates answered 429", str(stats["creates_rejected_429"])),
        ("queries answered 500", str(stats["queries_rejected_500"])),
        ("result downloads", str(sum(t["downloads"] for t in upstream))),
        ("notification POSTs / answered 503", notified),
        ("duplicates", str(report.duplicates)),
        ("losses", str(report.losses)),
    ]


def _seconds(values: list[float], fraction: float) -> str:
    return f"{percentile(values, fraction):.2f} s" if values else "-"


def _ms(values: list[float], fraction: float) -> str:
    return f"{percentile(values, fraction) * 1000:.1f} ms" if values else "-"


def _counts(counts: Counter[str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items()) or "-"
