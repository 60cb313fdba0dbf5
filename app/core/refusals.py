"""Refusals of unauthenticated requests: counted one by one, logged in one summary line a
period, so that a flood of forged URLs cannot flood the logs."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Protocol

# Refusals are logged at most once in this many seconds.
REFUSAL_LOG_SECONDS = 60.0


class _Count(Protocol):
    def inc(self) -> None: ...


class RefusalLog:
    """Counts refusals by reason (in Prometheus and here) and logs them at most once every
    `period` seconds: `message`, with the counts since the last line in the field `field`."""

    def __init__(
        self,
        logger: logging.Logger,
        message: str,
        counters: Mapping[str, _Count],
        *,
        field: str = "refused",
        period: float = REFUSAL_LOG_SECONDS,
    ) -> None:
        self._logger = logger
        self._message = message
        self._counters = counters
        self._field = field
        self._period = period
        self._counts: Counter[str] = Counter()
        self._next = 0.0

    def note(self, reason: str) -> None:
        self._counters[reason].inc()
        self._counts[reason] += 1
        now = time.monotonic()
        if now >= self._next:
            # The message of every refusal; this line sums up those of the last period.
            self._logger.warning(
                self._message,
                extra={self._field: dict(self._counts), "within_seconds": self._period},
            )
            self._counts.clear()
            self._next = now + self._period
