"""Real processes of the console script, started per test and always stopped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CALLBACK_SECRET, SIMULATOR_KEY, settings_values
from tests.support.servers import Process, free_port


class Processes:
    """Starts console-script processes and remembers them for teardown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Process] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> Process:
        process = Process(args, env, self.directory / f"{name}-{len(self.started)}.log")
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            process.stop(timeout=10)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    running = Processes(tmp_path)
    yield running
    running.stop_all()


def gateway_env(
    database_url: str, simulator_url: str, api_url: str, **overrides: Any
) -> dict[str, str]:
    """Environment of a gateway process (API or worker) wired to a simulator process."""
    overrides = {key.removeprefix("IMAGEGEN_").lower(): value for key, value in overrides.items()}
    values = settings_values(
        database_url, provider_url=simulator_url, public_base_url=api_url, **overrides
    )
    env = {
        f"IMAGEGEN_{key.upper()}": str(value).lower() if isinstance(value, bool) else str(value)
        for key, value in values.items()
    }
    env["IMAGEGEN_PROVIDER_API_KEY"] = SIMULATOR_KEY
    env["IMAGEGEN_CALLBACK_SECRET"] = CALLBACK_SECRET
    return env


def simulator_args(port: int, *extra: str) -> list[str]:
    return [
        "simulate-provider",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--allow-private-callbacks",
        *extra,
    ]


__all__ = ["Processes", "free_port", "gateway_env", "simulator_args"]
