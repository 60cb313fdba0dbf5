"""SIGTERM to an API process (`imagegen-gateway serve`) while a request is still arriving.

The API stops accepting new connections at once, lets the request in flight finish within
IMAGEGEN_SHUTDOWN_GRACE_SECONDS (its task is saved), then exits; a request still incomplete past
the grace is cut and the process exits anyway."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ALPHA_KEY
from tests.e2e.conftest import Processes, gateway_env
from tests.support.servers import Process, free_port
from tests.support.waiting import until, wait_until_up

pytestmark = pytest.mark.e2e

# Time a process may need past the grace period to run the lifespan shutdown and exit.
EXIT_SLACK_SECONDS = 15
# Any single network step on loopback; far longer than it ever takes.
STEP_TIMEOUT = 10.0
PROMPT = "a lighthouse at dusk, sent slowly"


class Api:
    """A migrated SQLite database and an API process serving it."""

    def __init__(self, process: Process, port: int, database: Path) -> None:
        self.process, self.port, self.database = process, port, database

    def tasks(self) -> list[tuple[str, str, str]]:
        """(id, prompt, status) of every task in the database file."""
        with contextlib.closing(sqlite3.connect(self.database)) as db:
            rows: list[tuple[str, str, str]] = db.execute(
                "SELECT id, prompt, status FROM tasks ORDER BY created_at"
            ).fetchall()
        return rows

    async def exit_status(self, within: float) -> int:
        """The exit status, which must come within `within` seconds."""
        try:
            return await asyncio.to_thread(self.process.popen.wait, timeout=within)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"no exit within {within:.1f}s:\n{self.process.output()}"
            ) from None


async def start_api(processes: Processes, tmp_path: Path, grace: float) -> Api:
    database = tmp_path / "gateway.db"
    port = free_port()
    env = gateway_env(
        f"sqlite+aiosqlite:///{database}",
        "http://127.0.0.1:9",  # nothing listens there; the API never calls upstream anyway
        f"http://127.0.0.1:{port}",
        IMAGEGEN_RUN_WORKERS=False,
        IMAGEGEN_SHUTDOWN_GRACE_SECONDS=grace,
    )
    migrate = processes.start("migrate", ["migrate"], env)
    assert await asyncio.to_thread(migrate.popen.wait, timeout=60) == 0, migrate.output()
    process = processes.start("api", ["serve", "--port", str(port)], env)
    await wait_until_up(f"http://127.0.0.1:{port}/healthz", process)
    return Api(process, port, database)


def request_head(port: int, length: int) -> bytes:
    """Headers of a create whose body follows; `Expect: 100-continue` makes the server tell
    when the application is reading the body, i.e. when the request is in flight."""
    return (
        "POST /v1/images/generations HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {ALPHA_KEY}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {length}\r\n"
        "Expect: 100-continue\r\n"
        "\r\n"
    ).encode()


async def open_slow_request(
    port: int, body: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose request is being handled, waiting for its body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_head(port, len(body)))
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP_TIMEOUT)
    assert interim.startswith(b"HTTP/1.1 100"), interim
    return reader, writer


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of a response on a connection the server closes after it."""
    raw = await asyncio.wait_for(reader.read(), STEP_TIMEOUT)  # up to EOF
    assert raw, "the connection was closed without a response"
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


async def served(port: int) -> bool:
    """Whether a new connection gets an answer to GET /healthz (False: refused, reset, closed)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), STEP_TIMEOUT
        )
    except (ConnectionError, OSError):
        return False
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), STEP_TIMEOUT)
    except (ConnectionError, OSError):
        return False
    finally:
        await close(writer)
    return answer.startswith(b"HTTP/1.1 200")


async def new_connections_refused(api: Api) -> None:
    """After SIGTERM: soon a new connection is not served, and from then on it is refused
    (the listening socket is closed), while the process still runs."""

    async def not_served() -> bool:
        return not await served(api.port)

    await until(not_served, what="new connections not served after SIGTERM", timeout=STEP_TIMEOUT)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", api.port)
    assert api.process.popen.poll() is None, "exited with a request in flight"


def assert_exit_status(api: Api, status: int) -> str:
    """uvicorn shuts down gracefully, then re-raises the SIGTERM it caught (exit by signal)."""
    log = api.process.output()
    assert status in (0, -signal.SIGTERM), log
    assert "Application shutdown complete." in log, log
    return log


async def test_sigterm_finishes_a_request_in_flight_and_refuses_new_connections(
    processes: Processes, tmp_path: Path
) -> None:
    grace = 30.0
    api = await start_api(processes, tmp_path, grace)
    body = json.dumps({"prompt": PROMPT, "size": "1:1"}).encode()
    pieces = [body[i : i + 8] for i in range(0, len(body), 8)]
    reader, writer = await open_slow_request(api.port, body)
    try:
        writer.write(pieces[0])
        await writer.drain()

        api.process.popen.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await new_connections_refused(api)

        # The rest of the body trickles in; its last byte about one second after the SIGTERM.
        rest = pieces[1:]
        for index, piece in enumerate(rest):
            due = signalled + 1.0 * (index + 1) / len(rest)
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(piece)
            await writer.drain()

        status, headers, answer = await read_response(reader)
    finally:
        await close(writer)

    assert status == 202, answer
    assert headers.get("connection") == "close"  # the server ends the connection after it
    task = json.loads(answer)
    assert task["status"] == "queued"

    # It exits as soon as nothing is in flight: within the grace period, not at its end.
    exit_status = await api.exit_status(within=grace - (time.monotonic() - signalled))
    log = assert_exit_status(api, exit_status)
    assert "timeout graceful shutdown exceeded" not in log
    assert api.tasks() == [(task["id"], PROMPT, "queued")]


async def test_sigterm_cuts_a_request_still_incomplete_after_the_grace_period(
    processes: Processes, tmp_path: Path
) -> None:
    grace = 1.0
    api = await start_api(processes, tmp_path, grace)
    body = json.dumps({"prompt": PROMPT, "size": "1:1"}).encode()
    reader, writer = await open_slow_request(api.port, body)
    try:
        writer.write(body[:10])  # and never the rest
        await writer.drain()

        api.process.popen.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await new_connections_refused(api)

        exit_status = await api.exit_status(within=grace + EXIT_SLACK_SECONDS)
        elapsed = time.monotonic() - signalled
        answer = b""
        with contextlib.suppress(ConnectionError):
            answer = await asyncio.wait_for(reader.read(), STEP_TIMEOUT)
    finally:
        await close(writer)

    # The request was given the grace period, then cut: no 202, no task.
    assert elapsed >= grace, f"exited {elapsed:.2f}s after SIGTERM, before the grace ended"
    log = assert_exit_status(api, exit_status)
    assert "timeout graceful shutdown exceeded" in log, log
    # uvicorn answers 500 to the cancelled request; a reset would do as well.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 500"), answer
    assert api.tasks() == []
