"""The benchmark's baseline: a bare ASGI app doing one INSERT ... ON CONFLICT DO NOTHING."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

import asyncpg

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DSN = os.environ["BENCH_BASELINE_DSN"]
INSERT = (
    "INSERT INTO bench_baseline_inbox (task_id, digest, body, received_at) "
    "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
)
pool: asyncpg.Pool | None = None


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """POST anything: record it once, answer 200."""
    global pool
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                pool = await asyncpg.create_pool(DSN, min_size=10, max_size=20)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if pool is not None:
                    await pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    assert pool is not None
    task_id = scope["path"].rsplit("/", 2)[-2]
    await pool.execute(INSERT, task_id, hashlib.sha256(body).hexdigest(), body, datetime.now(UTC))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"22")],
        }
    )
    await send({"type": "http.response.body", "body": b'{"status": "accepted"}'})
