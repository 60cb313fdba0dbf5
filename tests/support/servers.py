"""Real HTTP servers for tests: ASGI apps on uvicorn, and subprocesses of the console script."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from tests.support.waiting import until

ROOT = Path(__file__).resolve().parents[2]


def bound_socket() -> socket.socket:
    """A listening-ready socket on a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with contextlib.closing(bound_socket()) as sock:
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def serve_app(app: Any, sock: socket.socket | None = None) -> AsyncIterator[str]:
    """Serve an ASGI app on uvicorn in this event loop; yields its base URL."""
    sock = sock or bound_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", log_config=None)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started or task.done(), what="uvicorn to start", interval=0.01)
        if task.done():
            task.result()
            raise RuntimeError("server stopped before it started")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


class Process:
    """A console-script subprocess with its output in a file.

    By default the checkout's code (`python -m app.cli` in the repository root); `command` and
    `cwd` run another copy, e.g. an installed wheel's `imagegen-gateway` from elsewhere."""

    def __init__(
        self,
        args: list[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        command: Sequence[str] = (sys.executable, "-m", "app.cli"),
        cwd: Path = ROOT,
    ) -> None:
        self.args = args
        self.log_path = log_path
        self._log = log_path.open("ab")
        full_env = {**os.environ, **env}
        self.popen = subprocess.Popen(
            [*command, *args],
            cwd=cwd,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        """What the process printed so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, no cleanup."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.popen.returncode
