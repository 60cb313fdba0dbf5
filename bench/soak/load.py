"""The load and the disruptions: creates at a steady rate, a worker killed, connections
killed, S3 cut off."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from tests.support.proxy import CuttableProxy

from .config import API_KEY, SoakConfig


@dataclass
class Submission:
    """One create, as the load generator saw it."""

    index: int
    key: str
    task_id: str | None = None
    status_code: int | None = None
    attempts: int = 0
    error: str | None = None


async def submit_all(
    config: SoakConfig,
    apis: list[str],
    receiver_url: str | None,
    run_id: str,
    say: Callable[[str], None],
) -> list[Submission]:
    """Submit `config.tasks` creates at `config.rate` per second, alternating API processes."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(timeout=30.0, limits=limits, headers=headers) as client:

        async def submit(submission: Submission) -> Submission:
            body: dict[str, Any] = {
                "prompt": f"soak {run_id} task {submission.index}",
                "size": "1:1",
                "quality": "low",
                "metadata": {"soak": run_id, "index": submission.index},
            }
            if receiver_url is not None:
                body["notify_url"] = f"{receiver_url}/hooks/{submission.index}"
            for attempt in range(12):  # bounded: 12 tries over about 30 s
                submission.attempts = attempt + 1
                api = apis[(submission.index + attempt) % len(apis)]
                try:
                    answer = await client.post(
                        f"{api}/v1/images/generations",
                        json=body,
                        headers={"Idempotency-Key": submission.key},
                    )
                except httpx.TransportError as exc:
                    submission.error = f"{type(exc).__name__}: {exc}"
                else:
                    submission.status_code = answer.status_code
                    if answer.status_code in (200, 202):
                        submission.task_id = answer.json()["id"]
                        submission.error = None
                        return submission
                    submission.error = f"HTTP {answer.status_code}: {answer.text[:200]}"
                    if answer.status_code < 500:
                        return submission
                await asyncio.sleep(min(0.25 * 2**attempt, 4.0))
            return submission

        started = time.monotonic()
        pending: list[asyncio.Task[Submission]] = []
        for index in range(config.tasks):
            await asyncio.sleep(max(0.0, started + index / config.rate - time.monotonic()))
            submission = Submission(index, f"soak-{run_id}-{index}")
            pending.append(asyncio.create_task(submit(submission)))
            if index and index % max(1, round(30 * config.rate)) == 0:  # about every 30 s
                say(f"submitted {index}/{config.tasks}")
        return list(await asyncio.gather(*pending))


async def disrupt(
    config: SoakConfig,
    restart_worker: Callable[[], Awaitable[int]],
    kill_connections: Callable[[], Awaitable[int]],
    proxy: CuttableProxy,
    events: list[str],
) -> None:
    """During the submissions: a worker SIGKILLed and restarted, every database connection
    killed, the S3 server cut off for `s3_outage_seconds`."""
    span = config.tasks / config.rate
    started = time.monotonic()

    async def at(fraction: float) -> float:
        await asyncio.sleep(max(0.0, started + fraction * span - time.monotonic()))
        return time.monotonic() - started

    when = await at(0.25)
    pid = await restart_worker()
    events.append(f"{when:.0f} s: worker pid {pid} killed (SIGKILL) and restarted")
    when = await at(0.45)
    killed = await kill_connections()
    events.append(f"{when:.0f} s: {killed} database connections killed (pg_terminate_backend)")
    when = await at(0.6)
    proxy.cut()
    try:
        await asyncio.sleep(config.s3_outage_seconds)
    finally:
        proxy.restore()
    events.append(f"{when:.0f} s: S3 server cut off for {config.s3_outage_seconds:.0f} s")


async def wait_for(
    what: str,
    read: Callable[[], Awaitable[tuple[bool, str]]],
    limit: float,
    progress: Callable[[str], None],
) -> bool:
    """Read until it says done or `limit` seconds pass; report progress every 5 s."""
    deadline = time.monotonic() + limit
    shown = 0.0
    while True:
        done, state = await read()
        if done:
            return True
        if time.monotonic() > deadline:
            progress(f"{what}: gave up after {limit:.0f} s ({state})")
            return False
        if time.monotonic() - shown > 5:
            progress(f"{what}: {state}")
            shown = time.monotonic()
        await asyncio.sleep(0.5)
