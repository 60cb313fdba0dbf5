"""Waiting in tests: poll a condition until it holds or a deadline passes, never a fixed sleep."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import httpx

if TYPE_CHECKING:
    from tests.support.servers import Process

T = TypeVar("T")


async def eventually(
    read: Callable[[], Awaitable[T]],
    predicate: Callable[[T], bool],
    timeout: float = 20.0,
    *,
    what: str | None = None,
    interval: float = 0.05,
) -> T:
    """The first value of `read()` for which `predicate` holds; read every `interval` seconds.

    Fails after `timeout` seconds naming what was awaited (`what`, else the predicate's source)
    and the last value read."""
    what = what or _describe(predicate)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await read()
        if predicate(value):
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {value!r}")
        await asyncio.sleep(interval)


async def until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    what: str,
    timeout: float = 20.0,
    interval: float = 0.05,
) -> None:
    """Return once `condition()` (plain or awaitable) holds; fail after `timeout` naming `what`."""

    async def read() -> bool:
        answer = condition()
        return await answer if inspect.isawaitable(answer) else answer

    await eventually(read, bool, what=what, timeout=timeout, interval=interval)


async def wait_until_up(url: str, process: Process | None = None, timeout: float = 30.0) -> None:
    """Return once `url` answers 200; fail at once with its output if `process` exits first."""
    async with httpx.AsyncClient() as client:

        async def answers() -> bool:
            if process is not None and process.popen.poll() is not None:
                raise RuntimeError(f"process exited early:\n{process.output()}")
            with contextlib.suppress(httpx.HTTPError):
                return (await client.get(url, timeout=1.0)).status_code == 200
            return False

        await until(answers, what=f"{url} to answer 200", timeout=timeout, interval=0.1)


def _describe(predicate: Callable[..., object]) -> str:
    """A lambda's source line, else the function's name."""
    name: str = getattr(predicate, "__qualname__", repr(predicate))
    if name.endswith("<lambda>"):
        with contextlib.suppress(OSError, TypeError):
            return inspect.getsource(predicate).strip()
    return name
