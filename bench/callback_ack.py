"""Benchmark: how fast the gateway acknowledges provider callbacks on PostgreSQL, side by side
with a bare ASGI app doing one INSERT ... ON CONFLICT DO NOTHING on the same server.

    .venv/bin/python -m bench.callback_ack [--seconds 8] [--connections 32]

Uses IMAGEGEN_TEST_DATABASE_URL's server when set, else a throwaway one (pgserver)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy import insert
from sqlalchemy.engine import make_url

from app.core.callback_tokens import callback_path, new_nonce
from app.core.db import create_engine
from app.core.migrate import upgrade
from app.tasks.models import Task
from app.workers.models import Job, JobKind, JobState
from bench.loadgen import Request, Result, at_rate, saturate
from tests.support import databases
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-callback-secret-0123456789abcdefghij"


def callback_body(provider_id: str) -> bytes:
    return json.dumps(
        {
            "created": 1757156493,
            "id": provider_id,
            "model": "gpt-image-1.5",
            "object": "image.generation.task",
            "progress": 100,
            "status": "completed",
            "results": ["https://cdn.example.com/generated_image.png"],
            "task_info": {"can_cancel": False},
            "type": "image",
        }
    ).encode()


async def seed_tasks(database_url: str, count: int) -> list[Request]:
    """`count` accepted tasks; the callback each would receive."""
    engine = create_engine(database_url)
    now = datetime.now(UTC)
    rows, requests = [], []
    for index in range(count):
        task_id, nonce = str(uuid.uuid4()), new_nonce()
        provider_id = f"task-unified-1757156493-b{index:07d}"
        rows.append(
            {
                "id": task_id,
                "caller": "bench",
                "request_hash": "0" * 64,
                "model": "gpt-image-1.5",
                "prompt": "p",
                "size": "1024x1024",
                "quality": "high",
                "image_urls": [],
                "n": 1,
                "metadata": {},
                "status": "pending",
                "progress": 0,
                "provider_task_id": provider_id,
                "callback_nonce": nonce,
                "submit_state": "accepted",
                "submit_attempts": 1,
                "created_at": now,
                "updated_at": now,
            }
        )
        path = callback_path(SECRET.encode(), task_id, nonce)
        requests.append(Request(path, callback_body(provider_id)))
    # As in production: every accepted task has its poll job waiting for a lost callback.
    polls = [
        {
            "kind": JobKind.POLL,
            "task_id": row["id"],
            "state": JobState.QUEUED,
            "run_at": now + timedelta(seconds=60),
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        for row in rows
    ]
    async with engine.begin() as connection:
        for start in range(0, count, 2000):
            await connection.execute(insert(Task), rows[start : start + 2000])
            await connection.execute(insert(Job), polls[start : start + 2000])
    await engine.dispose()
    return requests


def asyncpg_dsn(url: str) -> str:
    parsed = make_url(url)
    host = parsed.query.get("host") or parsed.host or "127.0.0.1"
    port = parsed.port or 5432
    return (
        f"postgresql://{parsed.username or 'postgres'}@/{parsed.database}?host={host}&port={port}"
    )


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        child = subprocess.Popen(args, cwd=ROOT, env=os.environ | env, stdout=out, stderr=out)
        try:
            yield child
        finally:
            child.terminate()
            child.wait(timeout=20)


async def wait_up(url: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            try:
                await client.get(url, timeout=1)
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
    raise TimeoutError(url)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes, from /proc (Linux)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_pids() -> list[int]:
    """Every PostgreSQL process on this machine (the server the benchmark uses)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@dataclass
class Row:
    """One target's figures."""

    name: str
    full: Result
    half: Result
    server_us: float  # server CPU per request at saturation
    postgres_us: float  # PostgreSQL CPU per request at saturation


async def measure(
    name: str,
    base_url: str,
    requests: list[Request],
    seconds: float,
    connections: int,
    server_pid: int,
) -> Row:
    warm, rest = requests[:300], requests[300:]
    await saturate(base_url, warm, connections=connections, seconds=seconds)
    before = cpu_seconds([server_pid]), cpu_seconds(postgres_pids())
    full = await saturate(base_url, rest, connections=connections, seconds=seconds)
    after = cpu_seconds([server_pid]), cpu_seconds(postgres_pids())
    remaining = rest[full.sent :]
    half = await at_rate(
        base_url, remaining, rate=full.throughput / 2, seconds=seconds, connections=connections
    )
    per_request = 1e6 / max(full.ok, 1)
    return Row(
        name,
        full,
        half,
        (after[0] - before[0]) * per_request,
        (after[1] - before[1]) * per_request,
    )


async def main(seconds: float, connections: int, tasks: int) -> None:
    server_url, server = databases.postgres_server_url()
    name = f"imagegen_bench_{uuid.uuid4().hex[:8]}"
    await databases.admin_execute(server_url, f'CREATE DATABASE "{name}"')
    database_url = databases.with_database(server_url, name)
    logs = ROOT / "bench" / "results"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        await asyncio.to_thread(upgrade, database_url)
        await databases.admin_execute(
            database_url,
            "CREATE TABLE bench_baseline_inbox (id bigserial PRIMARY KEY, task_id text NOT NULL,"
            " digest text NOT NULL, body bytea NOT NULL, received_at timestamptz NOT NULL,"
            " UNIQUE (task_id, digest))",
        )
        started = time.perf_counter()
        requests = await seed_tasks(database_url, tasks)
        print(f"seeded {tasks} tasks in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        baseline_requests = [
            Request(f"/cb/{uuid.uuid4()}/token", request.body) for request in requests
        ]
        gateway_port, baseline_port = free_port(), free_port()
        gateway_env = {
            "IMAGEGEN_DATABASE_URL": database_url,
            "IMAGEGEN_PROVIDER": "evolink",
            "IMAGEGEN_PROVIDER_BASE_URL": "http://127.0.0.1:9",
            "IMAGEGEN_PROVIDER_API_KEY": "sk-evo-bench",
            "IMAGEGEN_PUBLIC_BASE_URL": f"http://127.0.0.1:{gateway_port}",
            "IMAGEGEN_CALLBACK_SECRET": SECRET,
            "IMAGEGEN_API_KEYS": "bench:bench-key-0123456789",
            "IMAGEGEN_ALLOW_PRIVATE_NETWORKS": "true",
            "IMAGEGEN_RUN_WORKERS": "false",
            "IMAGEGEN_STORAGE_URL": "memory://",
            "IMAGEGEN_LOG_LEVEL": "WARNING",
        }
        python = sys.executable
        with (
            process(
                [python, "-m", "app.cli", "serve", "--port", str(gateway_port)],
                gateway_env,
                logs / "gateway.log",
            ) as gateway_process,
            process(
                [
                    python,
                    "-m",
                    "uvicorn",
                    "bench.baseline_app:app",
                    "--port",
                    str(baseline_port),
                    "--no-access-log",
                    "--log-level",
                    "warning",
                ],
                {"BENCH_BASELINE_DSN": asyncpg_dsn(database_url)},
                logs / "baseline.log",
            ) as baseline_process,
        ):
            await wait_up(f"http://127.0.0.1:{gateway_port}/healthz")
            await wait_up(f"http://127.0.0.1:{baseline_port}/")
            rows = [
                await measure(
                    "baseline (bare ASGI, 1 INSERT)",
                    f"http://127.0.0.1:{baseline_port}",
                    baseline_requests,
                    seconds,
                    connections,
                    baseline_process.pid,
                ),
                await measure(
                    "gateway callback endpoint",
                    f"http://127.0.0.1:{gateway_port}",
                    requests,
                    seconds,
                    connections,
                    gateway_process.pid,
                ),
            ]
        print_table(rows, seconds, connections)
        await check_recorded(database_url)
    finally:
        await databases.admin_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if server is not None:
            server.cleanup()  # type: ignore[attr-defined]


async def check_recorded(database_url: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        inbox = await connection.fetchval("SELECT count(*) FROM callback_deliveries")
        claimed = await connection.fetchval(
            "SELECT count(*) FROM tasks WHERE final_claimed_at IS NOT NULL"
        )
        polls = await connection.fetchval(
            "SELECT count(*) FROM jobs WHERE kind = 'poll'"
            " AND run_at < created_at + interval '60 seconds'"
        )
    finally:
        await connection.close()
    print(
        f"\nrecorded by the gateway: {inbox} deliveries, {claimed} final claims, "
        f"{polls} polls brought forward to confirm them"
    )


def print_table(rows: list[Row], seconds: float, connections: int) -> None:
    print(
        f"\ncallback acknowledgement on PostgreSQL ({connections} connections, {seconds:.0f}s runs)"
    )
    print(
        f"| {'target':32} | saturation req/s | half-load req/s | p50 ms | p99 ms "
        "| server CPU us/req | PostgreSQL CPU us/req |"
    )
    print(f"|{'-' * 34}|{'-' * 18}|{'-' * 17}|{'-' * 8}|{'-' * 8}|{'-' * 19}|{'-' * 23}|")
    for row in rows:
        print(
            f"| {row.name:32} | {row.full.throughput:16.0f} | {row.half.throughput:15.0f} "
            f"| {row.half.p50 * 1000:6.1f} | {row.half.percentile(0.99) * 1000:6.1f} "
            f"| {row.server_us:17.0f} | {row.postgres_us:21.0f} |"
        )
    base, gateway = rows[0].full.throughput, rows[1].full.throughput
    print(f"gateway / baseline throughput: {gateway / base:.0%} (target >= 50%)")
    p99 = rows[1].half.percentile(0.99) * 1000
    print(f"gateway p99 at half load: {p99:.1f} ms (target < 100 ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--tasks", type=int, default=80000)
    options = parser.parse_args()
    asyncio.run(main(options.seconds, options.connections, options.tasks))
