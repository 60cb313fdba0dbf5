"""The bare pipeline: only the unavoidable work per task, as one small asyncio process.

`python -m bench.e2e.bare --port P --simulator URL --database-url URL --store DIR`. Per task:
the caller's create is answered after one INSERT of its row; one create POST upstream with a
callback URL on this process; on the callback (acknowledged at once), one confirming GET of the
task, the download of its image, the file written, one UPDATE of the row (status, provider id,
sha256, completion time). No framework, no ORM, no retries (a step that breaks ends the task
failed): the floor the gateway is measured against (bench/e2e/run.py drives it with the same
open-loop load)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import sys
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Protocol

import httpx
import uvicorn

from app.provider.types import MODEL

SIMULATOR_KEY = "sk-evo-simulator"
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS bare_tasks (id TEXT PRIMARY KEY, prompt TEXT NOT NULL,"
    " status TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, provider_task_id TEXT,"
    " sha256 TEXT, path TEXT, completed_at DOUBLE PRECISION)"
)
INSERT = "INSERT INTO bare_tasks (id, prompt, status, created_at) VALUES ($1, $2, 'submitted', $3)"
UPDATE = (
    "UPDATE bare_tasks SET status = $1, provider_task_id = $2, sha256 = $3, path = $4,"
    " completed_at = $5 WHERE id = $6"
)


class Rows(Protocol):
    async def execute(self, sql: str, *args: Any) -> None: ...
    async def close(self) -> None: ...


class PostgresRows:
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, url: str) -> PostgresRows:
        import asyncpg

        from bench.soak.run import asyncpg_args

        pool = await asyncpg.create_pool(**asyncpg_args(url), min_size=2, max_size=10)
        async with pool.acquire() as connection:
            await connection.execute(SCHEMA)
        return cls(pool)

    async def execute(self, sql: str, *args: Any) -> None:
        await self.pool.execute(sql, *args)

    async def close(self) -> None:
        await self.pool.close()


class SqliteRows:
    """One aiosqlite connection in WAL mode, a commit per statement."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    @classmethod
    async def open(cls, path: str) -> SqliteRows:
        import aiosqlite

        connection = await aiosqlite.connect(path)
        await connection.execute("PRAGMA journal_mode=WAL")
        await connection.execute(SCHEMA.replace("DOUBLE PRECISION", "REAL"))
        await connection.commit()
        return cls(connection)

    async def execute(self, sql: str, *args: Any) -> None:
        await self.connection.execute(_qmarks(sql), args)
        await self.connection.commit()

    async def close(self) -> None:
        await self.connection.close()


def _qmarks(sql: str) -> str:
    for index in range(9, 0, -1):
        sql = sql.replace(f"${index}", "?")
    return sql


class Pipeline:
    """The ASGI app: intake of creates and of callbacks; the rest in background tasks."""

    def __init__(self, rows: Rows, simulator: str, store: Path, own_url: str) -> None:
        self.rows, self.simulator, self.store, self.own_url = rows, simulator, store, own_url
        self.client = httpx.AsyncClient(
            timeout=30.0, limits=httpx.Limits(max_connections=256, max_keepalive_connections=64)
        )
        self.background: set[asyncio.Task[None]] = set()
        self.headers = {"Authorization": f"Bearer {SIMULATOR_KEY}"}

    def spawn(self, row_id: str, provider_id: str | None, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(self.failed_if_broken(row_id, provider_id, work))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def failed_if_broken(
        self, row_id: str, provider_id: str | None, work: Coroutine[Any, Any, None]
    ) -> None:
        """No retries here: a step that breaks (an upstream timeout under overload) ends the
        task failed, so that the run drains and counts it."""
        try:
            await work
        except (httpx.HTTPError, OSError, ValueError, KeyError, IndexError) as error:
            print(f"task {row_id}: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            await self.rows.execute(UPDATE, "failed", provider_id, None, None, time.time(), row_id)

    async def create(self, body: bytes) -> tuple[int, bytes]:
        request = json.loads(body)
        row_id = uuid.uuid4().hex
        await self.rows.execute(INSERT, row_id, request["prompt"], time.time())
        self.spawn(row_id, None, self.submit(row_id, request))
        return 202, json.dumps({"id": row_id, "status": "submitted"}).encode()

    async def submit(self, row_id: str, request: dict[str, Any]) -> None:
        upstream = {
            "model": MODEL,
            "prompt": request["prompt"],
            "size": request["size"],
            "quality": request["quality"],
            "n": 1,
            "callback_url": f"{self.own_url}/cb/{row_id}",
        }
        answer = await self.client.post(
            f"{self.simulator}/v1/images/generations", json=upstream, headers=self.headers
        )
        answer.raise_for_status()

    async def callback(self, row_id: str, body: bytes) -> tuple[int, bytes]:
        try:
            provider_id = json.loads(body)["id"]
        except (ValueError, KeyError, TypeError):
            return 400, b"{}"
        self.spawn(row_id, provider_id, self.finish(row_id, provider_id))
        return 200, b"{}"

    async def finish(self, row_id: str, provider_id: str) -> None:
        answer = await self.client.get(
            f"{self.simulator}/v1/tasks/{provider_id}", headers=self.headers
        )
        task = answer.json()
        if task.get("status") != "completed":
            await self.rows.execute(UPDATE, "failed", provider_id, None, None, time.time(), row_id)
            return
        image = (await self.client.get(task["results"][0])).content
        path = self.store / f"{row_id}.png"
        path.write_bytes(image)
        digest = hashlib.sha256(image).hexdigest()
        await self.rows.execute(
            UPDATE, "succeeded", provider_id, digest, str(path), time.time(), row_id
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await self.client.aclose()
            await self.rows.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        path: str = scope["path"]
        if scope["method"] == "POST" and path == "/v1/images/generations":
            status, answer = await self.create(body)
        elif scope["method"] == "POST" and path.startswith("/cb/"):
            status, answer = await self.callback(path.removeprefix("/cb/"), body)
        elif path == "/ready":
            status, answer = 200, b"{}"
        else:
            status, answer = 404, b"{}"
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(answer)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


async def open_rows(url: str) -> Rows:
    if url.startswith("sqlite"):
        return await SqliteRows.open(url.split(":///", 1)[1])
    return await PostgresRows.open(url)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e.bare", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--simulator", required=True, help="the simulator's base URL")
    parser.add_argument("--database-url", required=True, help="postgresql://... or sqlite:///")
    parser.add_argument("--store", type=Path, required=True, help="directory of the images")
    args = parser.parse_args()
    args.store.mkdir(parents=True, exist_ok=True)

    async def serve() -> None:
        rows = await open_rows(args.database_url)
        app = Pipeline(rows, args.simulator, args.store, f"http://127.0.0.1:{args.port}")
        config = uvicorn.Config(
            app, host="127.0.0.1", port=args.port, log_config=None, access_log=False
        )
        await uvicorn.Server(config).serve()

    # uvloop, as `uvicorn.run` picks for the gateway's `serve` when it is installed.
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve())


if __name__ == "__main__":
    main()
