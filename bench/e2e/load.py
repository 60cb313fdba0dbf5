"""Open-loop creates: request i is sent at start + i/rate, each in its own coroutine, over a
pool of keep-alive connections that grows when every connection is busy. Raw asyncio streams:
the load generator shares the machine, so it is kept cheap."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

PATH = "/v1/images/generations"


@dataclass
class LoadOutcome:
    sent: int = 0
    accepted: int = 0  # 2xx answers
    errors: Counter[str] = field(default_factory=Counter)  # other answers, connection errors
    last_sent_at: float = 0.0  # epoch seconds of the last create written


class Connection:
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def post(self, head: bytes, body: bytes) -> int:
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        length, chunked = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value.strip())
            elif name.lower() == "transfer-encoding":
                chunked = "chunked" in value.lower()
        if chunked:
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                await self.reader.readexactly(size + 2)
            await self.reader.readline()  # the blank line after the last chunk
        elif length:
            await self.reader.readexactly(length)
        return int(status_line.split()[1])

    def close(self) -> None:
        self.writer.close()


async def open_loop(base_url: str, key: str, rate: float, seconds: float, tag: str) -> LoadOutcome:
    """`rate * seconds` creates at a fixed schedule; returns once every answer is in."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    free: list[Connection] = []
    outcome = LoadOutcome()

    async def connect() -> Connection:
        return Connection(*await asyncio.open_connection(host, port))

    async def one(index: int) -> None:
        body = json.dumps(
            {"prompt": f"e2e {tag} {index}", "size": "1:1", "quality": "low"}
        ).encode()
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {key}\r\n"
            f"Idempotency-Key: {uuid.uuid4()}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        outcome.sent += 1
        outcome.last_sent_at = time.time()
        # A pooled connection the server closed while it was idle (uvicorn's keep-alive
        # timeout) fails at once: the create is sent again on a new connection, as HTTP clients
        # do (the Idempotency-Key makes a second copy harmless).
        while True:
            reused = bool(free)
            try:
                connection = free.pop() if reused else await connect()
            except OSError as error:
                outcome.errors[type(error).__name__] += 1
                return
            try:
                status = await connection.post(head, body)
                break
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as error:
                connection.close()
                if not reused:
                    outcome.errors[type(error).__name__] += 1
                    return
        free.append(connection)
        if 200 <= status < 300:
            outcome.accepted += 1
        else:
            outcome.errors[f"HTTP {status}"] += 1

    total = round(rate * seconds)
    start = time.perf_counter()
    running = []
    for index in range(total):
        delay = start + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        running.append(asyncio.create_task(one(index)))
    await asyncio.gather(*running)
    for connection in free:
        with contextlib.suppress(OSError):
            connection.close()
    return outcome
