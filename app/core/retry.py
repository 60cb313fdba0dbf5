"""When to try again after a failure: exponential backoff with jitter, trivially testable. The
job retries, the worker loop and write_durably all take their waits from it (jitter 0 for a
fixed schedule)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True, slots=True)
class RetryStrategy:
    """Delay before attempt `attempts + 1`: base * 2**(attempts-1), capped, with jitter."""

    base: timedelta = timedelta(seconds=1)
    cap: timedelta = timedelta(minutes=5)
    jitter: float = 0.5  # the delay is drawn from [(1 - jitter) * d, d]

    def delay(self, attempts: int, rng: random.Random | None = None) -> timedelta:
        """The wait after `attempts` failed attempts (attempts >= 1)."""
        exponent = min(max(attempts - 1, 0), 32)
        full = min(self.base.total_seconds() * 2**exponent, self.cap.total_seconds())
        draw = (rng or random).random()
        return timedelta(seconds=full * (1 - self.jitter * draw))
