"""A real `imagegen-gateway serve` on the simulator for the client's end-to-end tests, and the
client run as a real process against it."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import ROOT, Process, free_port
from tests.support.waiting import wait_until_up

KEY = "demo-key-0123456789"
TASK_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass
class Service:
    url: str
    images: Path

    def get(self, path: str) -> httpx.Response:
        """GET a /v1 path as the caller."""
        return httpx.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {KEY}"})

    def task(self, task_id: str) -> dict[str, Any]:
        response = self.get(f"/v1/tasks/{task_id}")
        response.raise_for_status()
        task: dict[str, Any] = response.json()
        return task

    def task_ids(self) -> list[str]:
        """The caller's newest tasks (one page)."""
        response = self.get("/v1/tasks?limit=100")
        response.raise_for_status()
        return [task["id"] for task in response.json()["data"]]


def start_service(directory: Path) -> Iterator[Service]:
    """`migrate`, then `serve` with the built-in simulator, SQLite and a file store."""
    port = free_port()
    env = {
        "IMAGEGEN_PROVIDER": "simulator",
        "IMAGEGEN_DATABASE_URL": f"sqlite+aiosqlite:///{directory}/gateway.db",
        "IMAGEGEN_STORAGE_URL": f"file://{directory}/images",
        "IMAGEGEN_API_KEYS": f"demo:{KEY}",
    }
    subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        env={**os.environ, **env},
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    process = Process(["serve", "--port", str(port)], env, directory / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_until_up(f"{url}/healthz", process, timeout=60))
        yield Service(url, directory / "images")
    finally:
        process.stop(timeout=10)


def client_env(service: Service, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_GATEWAY_")}
    return env | {"IMAGEGEN_GATEWAY_URL": service.url, "IMAGEGEN_GATEWAY_API_KEY": KEY} | extra


def generate(service: Service, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the client to its end; stdout and stderr are pipes, not a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "generate", *argv],
        env=client_env(service, **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def task_id_in(text: str) -> str:
    found = TASK_ID.search(text)
    assert found is not None, text
    return found.group(0)
