"""What a job handler answers: the job is done, or it runs again at a given time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Done:
    """The job is finished."""


@dataclass(frozen=True, slots=True)
class RetryAt:
    """Run the job again at `when`; `error` says why it did not finish."""

    when: datetime
    error: str


Outcome = Done | RetryAt
