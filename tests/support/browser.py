"""A real `imagegen-gateway serve` on the built-in simulator, and Debian's Chromium driven by
Playwright to look at it. Playwright never downloads a browser here: it launches the system
Chromium (`scripts/install-browser` installs it)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, Playwright

from tests.conftest import ALPHA_KEY, auth
from tests.e2e.conftest import gateway_env
from tests.support.servers import ROOT, Process, free_port
from tests.support.waiting import wait_until_up

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "var" / "screenshots"
TAKEN: list[Path] = []  # screenshots of this run, listed at its end

OPERATOR_NAME = "ops"
OPERATOR_KEY = "ops-key-0123456789abcdef"


async def launch_chromium(playwright: Playwright) -> Browser:
    """The system Chromium, headless; the test fails (never skips) when it is missing."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: the browser tests drive Debian's chromium "
            "package. Run scripts/install-browser (apt-get install chromium), or set "
            "CHROMIUM_PATH to a Chromium executable.",
            pytrace=False,
        )
    return await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


async def screenshot(page: Page, name: str) -> Path:
    """A full-page PNG of what the browser shows, kept in var/screenshots/ after the run."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=path, full_page=True)
    TAKEN.append(path)
    return path


@dataclass
class Service:
    """A running `imagegen-gateway serve` and a caller's client for its REST API."""

    url: str
    process: Process
    api: httpx.AsyncClient

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """A task created by caller alpha."""
        response = await self.api.post("/v1/images/generations", json=body, headers=auth())
        assert response.status_code == 202, response.text
        task: dict[str, Any] = response.json()
        return task

    async def task(self, task_id: str) -> dict[str, Any]:
        response = await self.api.get(f"/v1/tasks/{task_id}", headers=auth())
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        return task

    async def set_faults(self, **faults: Any) -> None:
        """Steer the simulator mounted in the service (`/_simulator`)."""
        response = await self.api.put("/_simulator/_sim/faults", json=faults)
        assert response.status_code == 200, response.text


@contextlib.asynccontextmanager
async def running_service(
    directory: Path, database_url: str, **overrides: Any
) -> AsyncIterator[Service]:
    """`imagegen-gateway serve` with the simulator provider, workers, images in `directory`,
    caller keys alpha/beta and operator `ops`; stopped afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    values: dict[str, Any] = {
        "provider": "simulator",
        "storage_url": f"file://{directory / 'images'}",
        "operator_keys": f"{OPERATOR_NAME}:{OPERATOR_KEY}",
        "run_workers": True,
        "allow_private_networks": True,
    }
    env = gateway_env(database_url, url, url, **(values | overrides))
    process = Process(
        ["serve", "--host", "127.0.0.1", "--port", str(port)], env, directory / "serve.log"
    )
    try:
        await wait_until_up(f"{url}/healthz", process)
        async with httpx.AsyncClient(base_url=url, timeout=10) as api:
            yield Service(url=url, process=process, api=api)
    finally:
        process.stop(timeout=10)


__all__ = [
    "ALPHA_KEY",
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "OPERATOR_KEY",
    "OPERATOR_NAME",
    "SCREENSHOTS",
    "TAKEN",
    "Service",
    "launch_chromium",
    "running_service",
    "screenshot",
]
