"""The soak's child processes, and the S3 client that reads what they stored."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import httpx

from .config import AWS, BUCKET, ROOT


class Child:
    """A subprocess of the soak with its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log
        self._log = log.open("ab")
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env=os.environ | env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C on the soak reaches only the soak
        )

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        """SIGKILL, no cleanup."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)
        self._log.close()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, SIGKILL after `timeout`."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._log.close()


class Children:
    """Every child process started, stopped together at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Child] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        log = self.directory / f"{name}-{len(self.started)}.log"
        child = Child(name, args, env or {}, log)
        self.started.append(child)
        return child

    def gateway(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        return self.start(name, [sys.executable, "-m", "app.cli", *args], env)

    def stop_all(self) -> None:
        for child in reversed(self.started):
            child.stop()


async def wait_http(url: str, child: Child, limit: float = 60.0, ready: int = 200) -> None:
    """Poll `url` until it answers `ready`; fail early when the child exits."""
    deadline = time.monotonic() + limit
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if child.popen.poll() is not None:
                raise RuntimeError(f"{child.name} exited early:\n{child.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url, timeout=2.0)).status_code == ready:
                    return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} ({child.name}) did not come up in {limit}s:\n{child.tail()}")


async def wait_exit(child: Child, limit: float) -> int:
    deadline = time.monotonic() + limit
    while (code := child.popen.poll()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{child.name} did not finish in {limit}s:\n{child.tail()}")
        await asyncio.sleep(0.1)
    return code


def s3_client(endpoint: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import boto3  # type: ignore[import-untyped]

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=AWS["AWS_REGION"],
        aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"],
    )


def stored_objects(client: Any) -> dict[str, str]:
    """key -> sha256 of every object in the soak's bucket."""
    found: dict[str, str] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            found[item["Key"]] = hashlib.sha256(body).hexdigest()
    return found
