"""A limit on failed console sign-ins: per client address and for the whole process, over a
sliding window. In memory, so each replica counts its own (see docs/console.md, "Access")."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

PER_CLIENT = 10  # failures of one address within the window
OVERALL = 100  # failures of every address together within the window
WINDOW_SECONDS = 300.0


class LoginThrottle:
    """Counts failed sign-ins and says when to refuse the next attempt without checking it."""

    def __init__(
        self,
        *,
        per_client: int = PER_CLIENT,
        overall: int = OVERALL,
        window_seconds: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_client = per_client
        self.overall = overall
        self.window = window_seconds
        self._clock = clock
        self._all: deque[float] = deque()
        # Only addresses with a failure in the window are kept: at most `overall` of them.
        self._clients: dict[str, deque[float]] = {}

    def _forget_expired(self, now: float) -> None:
        start = now - self.window
        while self._all and self._all[0] <= start:
            self._all.popleft()
        for client, times in list(self._clients.items()):
            while times and times[0] <= start:
                times.popleft()
            if not times:
                del self._clients[client]

    def retry_after(self, client: str) -> int | None:
        """Seconds until `client` may try again, or None when it may try now."""
        now = self._clock()
        self._forget_expired(now)
        waits = [
            times[0] + self.window - now
            for times, limit in (
                (self._clients.get(client), self.per_client),
                (self._all, self.overall),
            )
            if times is not None and len(times) >= limit
        ]
        return max(1, math.ceil(max(waits))) if waits else None

    def failed(self, client: str) -> None:
        """Count a failed sign-in of `client`."""
        now = self._clock()
        self._forget_expired(now)
        self._all.append(now)
        self._clients.setdefault(client, deque()).append(now)
