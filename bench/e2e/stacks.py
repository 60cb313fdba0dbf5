"""The processes of one rate's run: a database, the simulator, then the gateway (one process,
or an API and a worker) or the bare pipeline. Every run gets fresh ones."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench.fairness.run import ROOT, Children, wait_http
from bench.soak.run import asyncpg_args, fresh_database
from tests.support.servers import free_port

API_KEY = "e2e-bench-caller-0123456789"
CALLBACK_SECRET = "e2e-bench-callback-secret-0123456789abcdef"


@dataclass(frozen=True)
class Stack:
    """A running target: where to send creates, its watched processes, how to read its rows."""

    url: str
    simulator_url: str
    pids: dict[str, int]  # service processes whose CPU is measured, by name
    simulator_pid: int
    rows: RowsReader


@contextlib.asynccontextmanager
async def database(kind: str, server: str, logs: Path) -> AsyncIterator[str]:
    """A fresh PostgreSQL database (dropped afterwards) or a new SQLite file."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{logs / 'tasks.db'}"
        return
    async with fresh_database(server, keep=False) as url:
        yield url


@contextlib.asynccontextmanager
async def simulator(logs: Path, task_seconds: float) -> AsyncIterator[tuple[str, int]]:
    """The simulator, from this checkout: every result a 64x64 PNG, callbacks on."""
    children = Children(ROOT, logs)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["simulate-provider", "--port", str(port), "--allow-private-callbacks"]
    args += ["--duration", str(task_seconds), "--image-pixels", "64x64", "--unlimited-credits"]
    args += ["--log-level", "warning"]
    try:
        child = children.start("simulator", args, {})
        await wait_http(f"{url}/_sim/stats", child)
        yield url, child.pid
    finally:
        await asyncio.to_thread(children.stop_all)


def gateway_env(database_url: str, store: Path, simulator_url: str, api_url: str) -> dict[str, str]:
    return {
        "IMAGEGEN_DATABASE_URL": database_url,
        "IMAGEGEN_STORAGE_URL": f"file://{store}",
        "IMAGEGEN_PROVIDER": "evolink",
        "IMAGEGEN_PROVIDER_BASE_URL": simulator_url,
        "IMAGEGEN_PROVIDER_API_KEY": "sk-evo-simulator",
        "IMAGEGEN_CALLBACK_SECRET": CALLBACK_SECRET,
        "IMAGEGEN_API_KEYS": f"bench:{API_KEY}",
        "IMAGEGEN_ALLOW_PRIVATE_NETWORKS": "true",
        "IMAGEGEN_PUBLIC_BASE_URL": api_url,
        "IMAGEGEN_LOG_LEVEL": "WARNING",
    }


@contextlib.asynccontextmanager
async def gateway(
    code: Path, logs: Path, database_url: str, split: bool, simulator_url: str, simulator_pid: int
) -> AsyncIterator[Stack]:
    """`migrate`, then `serve` (with its workers), or `serve` without workers and a `worker`."""
    children = Children(code, logs)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    env = gateway_env(database_url, logs / "store", simulator_url, api_url)
    try:
        migrate = children.start("migrate", ["migrate"], env)
        if await asyncio.to_thread(migrate.wait) != 0:
            raise RuntimeError(f"migrate failed: see {logs}/migrate.log")
        api_env = env | {"IMAGEGEN_RUN_WORKERS": "false"} if split else env
        api = children.start("gateway", ["serve", "--port", str(port)], api_env)
        pids = {"api" if split else "serve": api.pid}
        if split:
            pids["worker"] = children.start("worker", ["worker"], env).pid
        await wait_http(f"{api_url}/readyz", api)
        rows = await RowsReader.open(database_url, GATEWAY_ROWS)
        try:
            yield Stack(api_url, simulator_url, pids, simulator_pid, rows)
        finally:
            await rows.close()
    finally:
        await asyncio.to_thread(children.stop_all)


@contextlib.asynccontextmanager
async def bare(
    logs: Path, database_url: str, simulator_url: str, simulator_pid: int
) -> AsyncIterator[Stack]:
    """The bare pipeline (bare.py), from this checkout."""
    children = Children(ROOT, logs)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["--port", str(port), "--simulator", simulator_url]
    args += ["--database-url", database_url, "--store", str(logs / "store")]
    try:
        child = children.start("bare", args, {}, module="bench.e2e.bare")
        await wait_http(f"{url}/ready", child)
        rows = await RowsReader.open(database_url, BARE_ROWS)
        try:
            yield Stack(url, simulator_url, {"bare": child.pid}, simulator_pid, rows)
        finally:
            await rows.close()
    finally:
        await asyncio.to_thread(children.stop_all)


@dataclass(frozen=True)
class RowsQueries:
    open_count: str  # -> (rows, rows not yet terminal)
    finished: str  # -> (status, provider task id, completed_at) of every row


GATEWAY_ROWS = RowsQueries(
    "SELECT count(*), count(*) FILTER (WHERE status NOT IN ('succeeded', 'failed', 'cancelled'))"
    " FROM tasks",
    "SELECT status, provider_task_id, completed_at FROM tasks",
)
BARE_ROWS = RowsQueries(
    "SELECT count(*), count(*) FILTER (WHERE status = 'submitted') FROM bare_tasks",
    "SELECT status, provider_task_id, completed_at FROM bare_tasks",
)


class RowsReader:
    """Reads the target's rows straight from its database (asyncpg, or sqlite3)."""

    def __init__(self, queries: RowsQueries, pg: Any = None, lite: Any = None) -> None:
        self.queries, self.pg, self.lite = queries, pg, lite

    @classmethod
    async def open(cls, url: str, queries: RowsQueries) -> RowsReader:
        if url.startswith("sqlite"):
            path = url.split(":///", 1)[1]
            return cls(queries, lite=sqlite3.connect(path, check_same_thread=False))
        return cls(queries, pg=await asyncpg.connect(**asyncpg_args(url)))

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        if self.pg is not None:
            return [tuple(record) for record in await self.pg.fetch(sql)]
        return await asyncio.to_thread(lambda: self.lite.execute(sql).fetchall())

    async def counts(self) -> tuple[int, int]:
        try:
            [(total, unfinished)] = await self.fetch(self.queries.open_count)
        except sqlite3.OperationalError:  # the table is not there yet, or a writer holds it
            return 0, 0
        return int(total), int(unfinished)

    async def finished(self) -> list[tuple[str, str | None, float | None]]:
        return [
            (status, provider_id, epoch(completed))
            for status, provider_id, completed in await self.fetch(self.queries.finished)
        ]

    async def close(self) -> None:
        if self.pg is not None:
            await self.pg.close()
        if self.lite is not None:
            self.lite.close()


def epoch(value: datetime | str | float | None) -> float | None:
    """Epoch seconds of a completion time as a database returned it (SQLite keeps the gateway's
    UTC times as naive text)."""
    if value is None or isinstance(value, float | int):
        return value
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
