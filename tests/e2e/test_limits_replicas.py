"""Per-caller limits held across replicas: concurrent creates at the limit, fired at two server
processes on one PostgreSQL, never overshoot it (docs/limits.md, "Concurrency")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.db import create_engine, create_sessionmaker
from app.tasks.models import Task
from app.workers.models import Job
from tests.conftest import auth
from tests.e2e.conftest import Processes, gateway_env
from tests.support.servers import free_port
from tests.support.waiting import until, wait_until_up

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

URL = "/v1/images/generations"
HIGH = 8.1059  # the estimate of a high 1024x1024 task without references


@pytest.fixture
async def sessions(pg_database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(pg_database_url)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def two_servers(
    processes: Processes, database_url: str, tmp_path: Path, limits: str
) -> list[str]:
    path = tmp_path / "limits.toml"
    path.write_text(limits)
    urls = []
    for _ in range(2):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = gateway_env(
            database_url, "http://127.0.0.1:9", url, run_workers=False, limits_file=path
        )
        server = processes.start("api", ["serve", "--port", str(port)], env)
        await wait_until_up(f"{url}/healthz", server)
        urls.append(url)
    return urls


async def fire(urls: list[str], requests: list[dict[str, str]]) -> list[httpx.Response]:
    """One create per entry of `requests` (extra headers), spread over both servers, each on
    its own connection, all released at once."""
    clients = [httpx.AsyncClient(base_url=urls[i % 2], timeout=30) for i in range(len(requests))]
    try:
        await asyncio.gather(*(client.get("/healthz") for client in clients))
        go = asyncio.Event()
        ready: list[httpx.AsyncClient] = []

        async def post(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
            ready.append(client)
            await go.wait()
            return await client.post(URL, json={"prompt": "p"}, headers=auth() | headers)

        posts = [
            asyncio.create_task(post(client, headers))
            for client, headers in zip(clients, requests, strict=True)
        ]
        await until(lambda: len(ready) == len(clients), what="every create waiting to leave")
        go.set()
        return list(await asyncio.gather(*posts))
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))


async def stored(sessions: async_sessionmaker[AsyncSession]) -> tuple[int, int, float]:
    """(tasks, jobs, credits of every task) in the database."""
    async with sessions() as session:
        tasks = await session.scalar(select(func.count()).select_from(Task))
        jobs = await session.scalar(select(func.count()).select_from(Job))
        credits = await session.scalar(select(func.coalesce(func.sum(Task.credits), 0.0)))
    return int(tasks or 0), int(jobs or 0), float(credits or 0)


def codes(responses: list[httpx.Response]) -> list[Any]:
    return sorted(
        (r.status_code, r.json()["error"]["code"] if r.status_code >= 400 else "")
        for r in responses
    )


async def test_creates_per_minute_holds_across_two_servers(
    processes: Processes,
    pg_database_url: str,
    tmp_path: Path,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    urls = await two_servers(
        processes, pg_database_url, tmp_path, "[callers.alpha]\ncreates_per_minute = 5\n"
    )

    responses = await fire(urls, [{} for _ in range(24)])

    assert codes(responses) == [(202, "")] * 5 + [(429, "rate_limited")] * 19
    assert all(1 <= int(r.headers["Retry-After"]) <= 60 for r in responses if r.status_code == 429)
    tasks, jobs, credits = await stored(sessions)
    assert (tasks, jobs) == (5, 5)
    assert credits == pytest.approx(5 * HIGH)


async def test_max_active_tasks_holds_across_two_servers(
    processes: Processes,
    pg_database_url: str,
    tmp_path: Path,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    urls = await two_servers(
        processes, pg_database_url, tmp_path, "[default]\nmax_active_tasks = 4\n"
    )

    responses = await fire(urls, [{} for _ in range(20)])

    assert codes(responses) == [(202, "")] * 4 + [(429, "too_many_active_tasks")] * 16
    assert (await stored(sessions))[:2] == (4, 4)


async def test_a_daily_budget_is_not_overshot_by_concurrent_creates(
    processes: Processes,
    pg_database_url: str,
    tmp_path: Path,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    budget = 50.0  # six high tasks fit (48.6354), a seventh would not
    urls = await two_servers(
        processes, pg_database_url, tmp_path, f"[callers.alpha]\ndaily_credits = {budget}\n"
    )

    responses = await fire(urls, [{} for _ in range(24)])

    assert codes(responses) == [(202, "")] * 6 + [(402, "budget_exhausted")] * 18
    tasks, _jobs, credits = await stored(sessions)
    # The contract's bound is one task's estimate over the budget; serialized creates keep it.
    assert credits <= budget + HIGH
    assert tasks == 6
    assert credits == pytest.approx(6 * HIGH)


async def test_repeats_of_an_accepted_create_are_never_refused_at_the_limit(
    processes: Processes,
    pg_database_url: str,
    tmp_path: Path,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    urls = await two_servers(
        processes, pg_database_url, tmp_path, "[default]\ncreates_per_minute = 2\n"
    )
    async with httpx.AsyncClient(base_url=urls[0]) as client:
        first = await client.post(
            URL, json={"prompt": "p"}, headers=auth() | {"Idempotency-Key": "once"}
        )
    assert first.status_code == 202

    responses = await fire(urls, [{"Idempotency-Key": "once"}] * 8 + [{}] * 8)

    repeats, others = responses[:8], responses[8:]
    assert {(r.status_code, r.json()["id"]) for r in repeats} == {(200, first.json()["id"])}
    assert codes(others) == [(202, "")] + [(429, "rate_limited")] * 7
    assert (await stored(sessions))[:2] == (2, 2)
