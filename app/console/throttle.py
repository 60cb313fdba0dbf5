"""Limits on failed console sign-ins over a sliding window, in memory, so each replica counts its
own (see docs/console.md, "Access").

- Per client address: past the limit the address is refused without its key being checked.
- For every address together: past the limit (a guessing attack from many addresses) every
  attempt waits `delay_seconds` before its key is checked, and a wrong key is answered `429`; a
  right key still signs in. Refusing right keys there would let anyone lock every operator out;
  the delay is a wait, not a queue, so however many attempts arrive, an operator waits no longer.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable

PER_CLIENT = 10  # failures of one address within the window
OVERALL = 100  # failures of every address together within the window
WINDOW_SECONDS = 300.0
DELAY_SECONDS = 2.0  # the wait of each attempt while the overall limit is reached
# Addresses with recent failures that are remembered; past this the one whose last failure is
# oldest is forgotten, so an attack from very many addresses cannot exhaust memory.
MAX_CLIENTS = 10_000


class LoginThrottle:
    """Counts failed sign-ins: says when to refuse an address and when to slow everyone down."""

    def __init__(
        self,
        *,
        per_client: int = PER_CLIENT,
        overall: int = OVERALL,
        window_seconds: float = WINDOW_SECONDS,
        delay_seconds: float = DELAY_SECONDS,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
        pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.per_client = per_client
        self.overall = overall
        self.window = window_seconds
        self.delay = delay_seconds
        self.max_clients = max_clients
        self._clock = clock
        self._pause = pause
        # Only the latest `overall` (or `per_client`) failures matter: the limit is reached while
        # the oldest of them is within the window.
        self._all: deque[float] = deque(maxlen=overall)
        # Addresses by their last failure, oldest first; each with its latest failures.
        self._clients: OrderedDict[str, deque[float]] = OrderedDict()

    def _forget_expired(self, now: float) -> None:
        start = now - self.window
        while self._clients:
            client, times = next(iter(self._clients.items()))
            if times[-1] > start:
                break
            del self._clients[client]

    def _wait(self, times: deque[float] | None, limit: int, now: float) -> int | None:
        if times is None or len(times) < limit or times[0] <= now - self.window:
            return None
        return max(1, math.ceil(times[0] + self.window - now))

    def retry_after(self, client: str) -> int | None:
        """Seconds until `client` may try again, or None when it may try now."""
        now = self._clock()
        self._forget_expired(now)
        return self._wait(self._clients.get(client), self.per_client, now)

    def overall_retry_after(self) -> int | None:
        """Seconds until failures of every address together fall below the overall limit, or
        None when they are below it."""
        return self._wait(self._all, self.overall, self._clock())

    async def slow_down(self) -> bool:
        """Wait before a key is checked while the overall limit is reached; whether it waited."""
        if self.overall_retry_after() is None:
            return False
        await self._pause(self.delay)
        return True

    def failed(self, client: str) -> None:
        """Count a failed sign-in of `client`."""
        now = self._clock()
        self._forget_expired(now)
        self._all.append(now)
        times = self._clients.pop(client, None)
        if times is None:
            times = deque(maxlen=self.per_client)
        times.append(now)
        self._clients[client] = times  # now the most recent
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)
