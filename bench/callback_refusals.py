"""Benchmark: how many callbacks with a wrong token the gateway refuses per second on PostgreSQL.

    .venv/bin/python -m bench.callback_refusals [--seconds 8] [--connections 32]

Two rows: a callback-sized body on keep-alive connections, and a body of almost 1 MiB on a new
connection per request (the server may close a connection whose body it did not read). Uses
IMAGEGEN_TEST_DATABASE_URL's server when set, else a throwaway one (pgserver)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from app.core.migrate import upgrade
from bench.callback_ack import ROOT, SECRET, cpu_seconds, process, seed_tasks, wait_up
from bench.loadgen import Request, saturate
from tests.support import databases
from tests.support.servers import free_port

BIG = 1024 * 1024 - 4096


def wrong_token(request: Request) -> Request:
    """The same callback with the last characters of its token changed."""
    return Request(request.path[:-4] + "AAAA", request.body)


def padded(body: bytes, size: int) -> bytes:
    """`body` with a string field that brings it to `size` bytes (valid JSON)."""
    head = body[:-1] + b', "padding": "'
    return head + b"x" * (size - len(head) - 2) + b'"}'


async def one_shot(base_url: str, request: Request) -> int:
    """POST on a new connection; the status, or 0 when the connection broke before one."""
    parts = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        head = (
            f"POST {request.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(request.body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        writer.write(head)
        writer.write(request.body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        status_line = await reader.readline()
        return int(status_line.split()[1]) if status_line else 0
    except ConnectionError:
        return 0
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def big_bodies(
    base_url: str, requests: list[Request], connections: int, seconds: float
) -> tuple[float, int]:
    """Refusals per second of nearly 1 MiB bodies, `connections` clients in closed loops; and
    how many requests were sent."""
    cursor = iter(requests)
    refused = sent = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal refused, sent
        while time.perf_counter() < deadline and (request := next(cursor, None)) is not None:
            sent += 1
            if await one_shot(base_url, request) in (401, 404):
                refused += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(connections)))
    return refused / (time.perf_counter() - started), sent


async def main(seconds: float, connections: int, tasks: int) -> None:
    server_url, server = databases.postgres_server_url()
    name = f"imagegen_bench_{uuid.uuid4().hex[:8]}"
    await databases.admin_execute(server_url, f'CREATE DATABASE "{name}"')
    database_url = databases.with_database(server_url, name)
    logs: Path = ROOT / "bench" / "results"
    await asyncio.to_thread(logs.mkdir, parents=True, exist_ok=True)
    try:
        await asyncio.to_thread(upgrade, database_url)
        requests = [wrong_token(r) for r in await seed_tasks(database_url, tasks)]
        port = free_port()
        env = {
            "IMAGEGEN_DATABASE_URL": database_url,
            "IMAGEGEN_PROVIDER": "evolink",
            "IMAGEGEN_PROVIDER_BASE_URL": "http://127.0.0.1:9",
            "IMAGEGEN_PROVIDER_API_KEY": "sk-evo-bench",
            "IMAGEGEN_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "IMAGEGEN_CALLBACK_SECRET": SECRET,
            "IMAGEGEN_API_KEYS": "bench:bench-key-0123456789",
            "IMAGEGEN_ALLOW_PRIVATE_NETWORKS": "true",
            "IMAGEGEN_RUN_WORKERS": "false",
            "IMAGEGEN_STORAGE_URL": "memory://",
            "IMAGEGEN_LOG_LEVEL": "WARNING",
        }
        command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
        with process(command, env, logs / "gateway-refusals.log") as gateway:
            base_url = f"http://127.0.0.1:{port}"
            await wait_up(f"{base_url}/healthz")
            await saturate(base_url, requests[:300], connections=connections, seconds=1)
            # Refusals change nothing: the same requests can be sent again and again.
            cpu = cpu_seconds([gateway.pid])
            small = await saturate(
                base_url, requests * 50, connections=connections, seconds=seconds
            )
            small_cpu = (cpu_seconds([gateway.pid]) - cpu) * 1e6 / max(small.sent, 1)
            big = [Request(r.path, padded(r.body, BIG)) for r in requests[:200]] * 50
            cpu = cpu_seconds([gateway.pid])
            big_rate, big_sent = await big_bodies(base_url, big, min(connections, 8), seconds)
            big_cpu = (cpu_seconds([gateway.pid]) - cpu) * 1e6 / max(big_sent, 1)
        print(f"\nwrong-token callbacks on PostgreSQL ({connections} connections, {seconds:.0f}s)")
        print("| body | refusals/s | p50 ms | p99 ms | server CPU us/req |")
        print("|------|-----------:|-------:|-------:|------------------:|")
        print(
            f"| {len(requests[0].body)} B, keep-alive | {small.sent / small.seconds:.0f} "
            f"| {small.p50 * 1000:.1f} | {small.percentile(0.99) * 1000:.1f} | {small_cpu:.0f} |"
        )
        print(f"| {BIG} B, new connection each | {big_rate:.0f} | | | {big_cpu:.0f} |")
    finally:
        await databases.admin_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if server is not None:
            server.cleanup()  # type: ignore[attr-defined]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--tasks", type=int, default=2000)
    options = parser.parse_args()
    asyncio.run(main(options.seconds, options.connections, options.tasks))
