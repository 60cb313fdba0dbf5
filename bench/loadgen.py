"""A small HTTP/1.1 load generator on raw asyncio streams (keep-alive, one request in flight
per connection): closed-loop for saturation throughput, open-loop for latency at a fixed rate."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Request:
    """One POST: path and body."""

    path: str
    body: bytes


@dataclass
class Result:
    """What a run measured."""

    sent: int
    ok: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))
        return ordered[index]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")


class Connection:
    """One keep-alive connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, base_url: str) -> Connection:
        parts = urlsplit(base_url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer, parts.netloc)

    async def post(self, request: Request) -> int:
        head = (
            f"POST {request.path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(request.body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + request.body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value.strip())
        if length:
            await self.reader.readexactly(length)
        return int(status_line.split()[1])

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def saturate(
    base_url: str, requests: Sequence[Request], *, connections: int, seconds: float
) -> Result:
    """As many requests as `connections` closed loops can complete in `seconds`."""
    pool = [await Connection.open(base_url) for _ in range(connections)]
    cursor = iter(requests)
    latencies: list[float] = []
    counts = {"sent": 0, "ok": 0}
    deadline = time.perf_counter() + seconds

    async def loop(connection: Connection) -> None:
        while time.perf_counter() < deadline:
            request = next(cursor, None)
            if request is None:
                return
            started = time.perf_counter()
            counts["sent"] += 1
            status = await connection.post(request)
            latencies.append(time.perf_counter() - started)
            if 200 <= status < 300:
                counts["ok"] += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(connection) for connection in pool))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(connection.close() for connection in pool))
    return Result(counts["sent"], counts["ok"], elapsed, latencies)


async def at_rate(
    base_url: str, requests: Sequence[Request], *, rate: float, seconds: float, connections: int
) -> Result:
    """Open loop: request i is due at start + i/rate; latency counts from when it was due,
    so a slow server cannot hide its queueing (no coordinated omission)."""
    free: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        free.put_nowait(await Connection.open(base_url))
    total = min(len(requests), int(rate * seconds))
    latencies: list[float] = []
    counts = {"ok": 0}
    start = time.perf_counter()

    async def one(index: int, request: Request) -> None:
        due = start + index / rate
        connection = await free.get()
        try:
            status = await connection.post(request)
        finally:
            free.put_nowait(connection)
        latencies.append(time.perf_counter() - due)
        if 200 <= status < 300:
            counts["ok"] += 1

    tasks = []
    for index in range(total):
        delay = start + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, requests[index])))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not free.empty():
        await free.get_nowait().close()
    return Result(total, counts["ok"], elapsed, latencies)
