"""The redrive event: the one way out of a terminal state, exhaustive over statuses and codes,
then properties over sequences that mix redrives with every other event."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.tasks.states import (
    REDRIVABLE,
    UNCHANGED,
    Decision,
    Effect,
    Event,
    Redrive,
    RedriveStep,
    TaskState,
    TaskStatus,
    decide,
    redrive_step,
)
from tests.tasks.test_states import RANK, events

CODES = (
    None,
    "archive_failed",
    "links_expired",
    "provider_timeout",
    "submission_rejected",
    "content_policy_violation",
)


@pytest.mark.parametrize(
    ("status", "code", "step"),
    list(itertools.product(TaskStatus, CODES, RedriveStep)),
    ids=lambda value: str(value),
)
@pytest.mark.parametrize("final_claimed", [False, True])
def test_a_redrive_changes_exactly_a_task_failed_by_its_own_step(
    status: TaskStatus, code: str | None, step: RedriveStep, final_claimed: bool
) -> None:
    state = TaskState(status, 40, code, "why" if code else None, final_claimed=final_claimed)

    decision = decide(state, Redrive(step))

    applicable = status is TaskStatus.FAILED and code == REDRIVABLE[step]
    assert decision.changed is applicable
    if not applicable:
        assert decision == UNCHANGED


def test_a_redriven_archive_goes_back_to_archiving_with_an_archive_job() -> None:
    failed = TaskState(TaskStatus.FAILED, 100, "archive_failed", "store down")

    decision = decide(failed, Redrive(RedriveStep.ARCHIVE))

    assert decision == Decision(TaskState(TaskStatus.ARCHIVING, 100), (Effect.ARCHIVE,))


@pytest.mark.parametrize(
    ("progress", "expected"), [(0, TaskStatus.PENDING), (1, TaskStatus.PROCESSING)]
)
@pytest.mark.parametrize("final_claimed", [False, True])
def test_a_redriven_poll_goes_back_to_waiting_for_the_provider(
    progress: int, expected: TaskStatus, final_claimed: bool
) -> None:
    failed = TaskState(
        TaskStatus.FAILED, progress, "provider_timeout", "too slow", final_claimed=final_claimed
    )

    decision = decide(failed, Redrive(RedriveStep.POLL))

    back = TaskState(expected, progress, final_claimed=final_claimed)
    assert decision == Decision(back, (Effect.POLL,))


@pytest.mark.parametrize("step", RedriveStep)
def test_a_second_redrive_of_the_same_step_changes_nothing(step: RedriveStep) -> None:
    failed = TaskState(TaskStatus.FAILED, 100, REDRIVABLE[step], "why")
    first = decide(failed, Redrive(step))
    assert first.state is not None

    assert decide(first.state, Redrive(step)) == UNCHANGED


@pytest.mark.parametrize(("status", "code"), list(itertools.product(TaskStatus, CODES)))
def test_redrive_step_names_the_step_whose_redrive_applies(
    status: TaskStatus, code: str | None
) -> None:
    state = TaskState(status, 10, code, None)

    step = redrive_step(state)

    applicable = [s for s in RedriveStep if decide(state, Redrive(s)).changed]
    assert applicable == ([] if step is None else [step])


# --- properties over sequences with redrives ----------------------------------------------

with_redrives: st.SearchStrategy[Event] = st.one_of(
    events, st.builds(Redrive, step=st.sampled_from(RedriveStep))
)


def fold(sequence: list[Event]) -> list[tuple[TaskState, Event, Decision, TaskState]]:
    steps = []
    state = TaskState(TaskStatus.QUEUED)
    for event in sequence:
        decision = decide(state, event)
        after = decision.state if decision.state is not None else state
        steps.append((state, event, decision, after))
        state = after
    return steps


@given(st.lists(with_redrives, max_size=40))
def test_a_terminal_status_changes_only_through_a_redrive_of_a_failure(
    sequence: list[Event],
) -> None:
    for before, event, decision, _ in fold(sequence):
        if before.status.is_terminal and decision.changed:
            assert isinstance(event, Redrive)
            assert before.status is TaskStatus.FAILED


@given(st.lists(with_redrives, max_size=40))
def test_status_goes_back_only_through_a_redrive(sequence: list[Event]) -> None:
    for before, event, _, after in fold(sequence):
        if RANK[after.status] < RANK[before.status]:
            assert isinstance(event, Redrive)


@given(st.lists(with_redrives, max_size=40))
def test_progress_never_decreases_even_across_redrives(sequence: list[Event]) -> None:
    for before, _, _, after in fold(sequence):
        assert after.progress >= before.progress


@given(st.lists(with_redrives, max_size=40))
def test_notify_is_emitted_exactly_on_each_entry_into_a_terminal_status(
    sequence: list[Event],
) -> None:
    for before, _, decision, after in fold(sequence):
        entered = after.status.is_terminal and not before.status.is_terminal
        assert decision.effects.count(Effect.NOTIFY) == (1 if entered else 0)


@given(st.lists(with_redrives, max_size=40))
def test_a_redrive_that_applies_always_brings_the_job_of_its_step(sequence: list[Event]) -> None:
    for _, event, decision, after in fold(sequence):
        if isinstance(event, Redrive) and decision.changed:
            wanted = Effect.ARCHIVE if event.step is RedriveStep.ARCHIVE else Effect.POLL
            assert decision.effects == (wanted,)
            assert not after.status.is_terminal
            assert (after.error_code, after.error_message) == (None, None)
