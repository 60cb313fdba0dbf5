"""The backoff schedules of the worker loop: one RetryStrategy without jitter for each."""

from __future__ import annotations

from datetime import timedelta

from app.core.retry import RetryStrategy
from app.workers.runner import CLAIM_RETRY, RECORD_ATTEMPTS, RECORD_RETRY


def seconds(strategy: RetryStrategy, attempts: int) -> list[float]:
    return [strategy.delay(n).total_seconds() for n in range(1, attempts + 1)]


def test_failed_claims_wait_two_seconds_doubling_to_thirty() -> None:
    assert seconds(CLAIM_RETRY, 7) == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_a_failed_record_of_an_outcome_is_tried_five_times_half_a_second_doubling() -> None:
    assert seconds(RECORD_RETRY, RECORD_ATTEMPTS) == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_without_jitter_the_schedule_is_exact_and_the_first_delay_is_the_base() -> None:
    strategy = RetryStrategy(base=timedelta(seconds=3), cap=timedelta(seconds=10), jitter=0.0)
    assert seconds(strategy, 4) == [3.0, 6.0, 10.0, 10.0]
    assert strategy.delay(0) == timedelta(seconds=3)  # no failure yet counts as the first
