"""The pure state machine: exhaustive tables for each rule, then properties over any sequence."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.provider.parsing import parse_status
from app.provider.types import ProviderStatus, ProviderTask, ProviderTaskError
from app.tasks.states import (
    UNCHANGED,
    ArchiveDone,
    Decision,
    Effect,
    Event,
    ProviderNews,
    ServiceFailure,
    TaskState,
    TaskStatus,
    decide,
)

TASK_ID = "task-unified-1-abc"
URL = "https://cdn.example.com/a.png"
TERMINAL = (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED)
BEFORE_FINAL = (TaskStatus.QUEUED, TaskStatus.PENDING, TaskStatus.PROCESSING)
NON_TERMINAL = (*BEFORE_FINAL, TaskStatus.ARCHIVING)
FINAL_NEWS = (ProviderStatus.COMPLETED, ProviderStatus.FAILED, ProviderStatus.CANCELLED)
RANK = {
    TaskStatus.QUEUED: 0,
    TaskStatus.PENDING: 1,
    TaskStatus.PROCESSING: 2,
    TaskStatus.ARCHIVING: 3,
    TaskStatus.SUCCEEDED: 4,
    TaskStatus.FAILED: 4,
    TaskStatus.CANCELLED: 4,
}


def task(
    status: ProviderStatus,
    *,
    progress: int = 0,
    results: tuple[str, ...] = (),
    error: ProviderTaskError | None = None,
    raw_status: str | None = None,
) -> ProviderTask:
    return ProviderTask(
        id=TASK_ID,
        status=status,
        raw_status=status.value if raw_status is None else raw_status,
        progress=progress,
        results=results,
        error=error,
    )


def news(
    status: ProviderStatus,
    *,
    confirmed: bool = True,
    progress: int = 0,
    results: tuple[str, ...] = (),
    error: ProviderTaskError | None = None,
    raw_status: str | None = None,
) -> ProviderNews:
    provider_task = task(
        status, progress=progress, results=results, error=error, raw_status=raw_status
    )
    return ProviderNews(provider_task, confirmed=confirmed)


def every_event() -> list[Event]:
    """One event of each kind, with a complete provider task for final news."""
    events: list[Event] = [
        ProviderNews(
            task(
                status,
                progress=100,
                results=(URL,),
                error=ProviderTaskError("service_error", "boom"),
            ),
            confirmed,
        )
        for status, confirmed in itertools.product(ProviderStatus, (True, False))
    ]
    events += [ServiceFailure("provider_timeout", "gave up"), ArchiveDone()]
    return events


def event_id(event: Event) -> str:
    if isinstance(event, ProviderNews):
        return f"{event.task.status.value}-{'confirmed' if event.confirmed else 'hint'}"
    return type(event).__name__


# --- terminal states ----------------------------------------------------------------------


@pytest.mark.parametrize("status", TERMINAL)
@pytest.mark.parametrize("event", every_event(), ids=event_id)
def test_terminal_states_absorb_every_event(status: TaskStatus, event: Event) -> None:
    state = TaskState(status, 40, "some_code", "some message")

    decision = decide(state, event)

    assert decision.state is None
    assert decision.effects == ()
    assert not decision.changed


# --- news that changes nothing ------------------------------------------------------------


@pytest.mark.parametrize("status", NON_TERMINAL)
@pytest.mark.parametrize("confirmed", [True, False])
def test_unknown_provider_status_changes_nothing(status: TaskStatus, confirmed: bool) -> None:
    event = news(ProviderStatus.UNKNOWN, confirmed=confirmed, progress=90, raw_status="paused")

    assert decide(TaskState(status, 30), event) == Decision(None, ())


@pytest.mark.parametrize("reported", [ProviderStatus.PENDING, ProviderStatus.PROCESSING])
@pytest.mark.parametrize("confirmed", [True, False])
def test_stale_progress_news_after_archiving_changes_nothing(
    reported: ProviderStatus, confirmed: bool
) -> None:
    event = news(reported, confirmed=confirmed, progress=50)

    assert decide(TaskState(TaskStatus.ARCHIVING, 100), event) == Decision(None, ())


@pytest.mark.parametrize("reported", FINAL_NEWS)
def test_repeated_final_news_while_archiving_changes_nothing(reported: ProviderStatus) -> None:
    event = news(reported, results=(URL,))

    assert decide(TaskState(TaskStatus.ARCHIVING, 100), event) == Decision(None, ())


@pytest.mark.parametrize("status", BEFORE_FINAL)
@pytest.mark.parametrize("reported", FINAL_NEWS)
def test_unconfirmed_final_news_only_asks_for_confirmation(
    status: TaskStatus, reported: ProviderStatus
) -> None:
    event = news(
        reported,
        confirmed=False,
        progress=100,
        results=(URL,),
        error=ProviderTaskError("service_error", "boom"),
    )

    decision = decide(TaskState(status, 20), event)
    again = decide(TaskState(status, 20, final_claimed=True), event)

    # Only the claim is noted: status and progress wait for the provider's query.
    assert decision.state == TaskState(status, 20, final_claimed=True)
    assert decision.effects == (Effect.CONFIRM,)
    assert again.state is None
    assert again.effects == (Effect.CONFIRM,)


@pytest.mark.parametrize("status", BEFORE_FINAL)
@pytest.mark.parametrize("reported", [ProviderStatus.PENDING, ProviderStatus.PROCESSING])
def test_callbacks_after_a_final_claim_are_stale_but_queries_still_count(
    status: TaskStatus, reported: ProviderStatus
) -> None:
    claimed = TaskState(status, 20, final_claimed=True)

    stale = decide(claimed, news(reported, confirmed=False, progress=60))
    queried = decide(claimed, news(ProviderStatus.PROCESSING, confirmed=True, progress=60))

    assert stale == UNCHANGED
    assert queried.state == TaskState(TaskStatus.PROCESSING, 60, final_claimed=True)


# --- confirmed final news -----------------------------------------------------------------


@pytest.mark.parametrize("status", BEFORE_FINAL)
def test_confirmed_completion_with_results_starts_archiving(status: TaskStatus) -> None:
    event = news(ProviderStatus.COMPLETED, progress=100, results=(URL,))

    decision = decide(TaskState(status, 10), event)

    assert decision.state == TaskState(TaskStatus.ARCHIVING, 100)
    assert decision.effects == (Effect.ARCHIVE,)


@pytest.mark.parametrize("status", BEFORE_FINAL)
def test_confirmed_completion_without_results_fails_the_task(status: TaskStatus) -> None:
    event = news(ProviderStatus.COMPLETED, progress=100)

    decision = decide(TaskState(status, 60), event)

    assert decision.state is not None
    assert decision.state.status is TaskStatus.FAILED
    assert decision.state.error_code == "archive_failed"
    assert decision.state.error_message
    assert decision.state.progress == 60
    assert decision.effects == (Effect.NOTIFY,)


@pytest.mark.parametrize("status", BEFORE_FINAL)
def test_confirmed_failure_carries_the_providers_error(status: TaskStatus) -> None:
    error = ProviderTaskError("content_policy_violation", "Content policy violation.")

    decision = decide(TaskState(status, 35), news(ProviderStatus.FAILED, error=error))

    expected = TaskState(
        TaskStatus.FAILED, 35, "content_policy_violation", "Content policy violation."
    )
    assert decision.state == expected
    assert decision.effects == (Effect.NOTIFY,)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(None, id="no-error-object"),
        pytest.param(ProviderTaskError("", ""), id="empty-error-object"),
    ],
)
def test_confirmed_failure_without_a_code_defaults_to_unknown_error(
    error: ProviderTaskError | None,
) -> None:
    decision = decide(TaskState(TaskStatus.PROCESSING, 5), news(ProviderStatus.FAILED, error=error))

    assert decision.state is not None
    assert decision.state.status is TaskStatus.FAILED
    assert decision.state.error_code == "unknown_error"
    assert decision.state.error_message
    assert decision.effects == (Effect.NOTIFY,)


def test_confirmed_failure_with_only_a_message_keeps_it() -> None:
    error = ProviderTaskError("", "the model timed out")

    decision = decide(TaskState(TaskStatus.PROCESSING, 5), news(ProviderStatus.FAILED, error=error))

    assert decision.state == TaskState(TaskStatus.FAILED, 5, "unknown_error", "the model timed out")


@pytest.mark.parametrize("spelling", ["cancelled", "canceled"])
@pytest.mark.parametrize("status", BEFORE_FINAL)
def test_confirmed_cancellation_cancels_the_task(spelling: str, status: TaskStatus) -> None:
    event = ProviderNews(task(parse_status(spelling), progress=70, raw_status=spelling), True)

    decision = decide(TaskState(status, 25), event)

    assert decision.state == TaskState(TaskStatus.CANCELLED, 25)
    assert decision.effects == (Effect.NOTIFY,)


# --- progress news ------------------------------------------------------------------------

Q, P, R = TaskStatus.QUEUED, TaskStatus.PENDING, TaskStatus.PROCESSING
PENDING, PROCESSING = ProviderStatus.PENDING, ProviderStatus.PROCESSING


@pytest.mark.parametrize(
    ("status", "progress", "reported", "reported_progress", "expected"),
    [
        pytest.param(Q, 0, PENDING, 0, TaskState(P, 0), id="queued-to-pending"),
        pytest.param(Q, 0, PROCESSING, 30, TaskState(R, 30), id="queued-to-processing"),
        pytest.param(P, 0, PROCESSING, 10, TaskState(R, 10), id="pending-to-processing"),
        pytest.param(P, 10, PENDING, 40, TaskState(P, 40), id="pending-progress-up"),
        pytest.param(R, 40, PROCESSING, 41, TaskState(R, 41), id="processing-progress-up"),
        pytest.param(R, 40, PENDING, 60, TaskState(R, 60), id="pending-news-keeps-processing"),
        pytest.param(Q, 0, PENDING, -3, TaskState(P, 0), id="negative-clamped"),
        pytest.param(P, 10, PROCESSING, 250, TaskState(R, 100), id="above-100-clamped"),
        pytest.param(Q, 0, PROCESSING, 10**30, TaskState(R, 100), id="huge-clamped"),
        pytest.param(R, 40, PENDING, 40, None, id="no-going-back-to-pending"),
        pytest.param(R, 40, PENDING, 10, None, id="older-pending-news"),
        pytest.param(R, 40, PROCESSING, 20, None, id="progress-never-decreases"),
        pytest.param(P, 50, PENDING, 30, None, id="pending-progress-never-decreases"),
        pytest.param(R, 55, PROCESSING, 55, None, id="equal-news"),
        pytest.param(P, 0, PENDING, 0, None, id="equal-pending-news"),
        pytest.param(R, 100, PROCESSING, 250, None, id="clamped-equal-news"),
        pytest.param(R, 30, PROCESSING, -1, None, id="negative-is-no-news"),
    ],
)
@pytest.mark.parametrize("confirmed", [True, False])
def test_progress_news_moves_forward_only(
    status: TaskStatus,
    progress: int,
    reported: ProviderStatus,
    reported_progress: int,
    expected: TaskState | None,
    confirmed: bool,
) -> None:
    event = news(reported, confirmed=confirmed, progress=reported_progress)

    decision = decide(TaskState(status, progress), event)

    assert decision.state == expected
    assert decision.effects == ()


# --- service events -----------------------------------------------------------------------


@pytest.mark.parametrize("status", NON_TERMINAL)
def test_service_failure_fails_any_non_terminal_state(status: TaskStatus) -> None:
    event = ServiceFailure("provider_timeout", "no news for 30 minutes")

    decision = decide(TaskState(status, 45), event)

    expected = TaskState(TaskStatus.FAILED, 45, "provider_timeout", "no news for 30 minutes")
    assert decision.state == expected
    assert decision.effects == (Effect.NOTIFY,)


def test_archive_done_succeeds_an_archiving_task() -> None:
    decision = decide(TaskState(TaskStatus.ARCHIVING, 100), ArchiveDone())

    assert decision.state == TaskState(TaskStatus.SUCCEEDED, 100)
    assert decision.effects == (Effect.NOTIFY,)


@pytest.mark.parametrize("status", BEFORE_FINAL)
def test_archive_done_before_archiving_changes_nothing(status: TaskStatus) -> None:
    assert decide(TaskState(status, 50), ArchiveDone()) == Decision(None, ())


# --- properties ---------------------------------------------------------------------------

progress_values = st.one_of(
    st.integers(min_value=-5, max_value=105),
    st.integers(),
    st.sampled_from([-(10**30), -1, 0, 100, 101, 10**30]),
)
provider_errors = st.none() | st.builds(
    ProviderTaskError,
    code=st.sampled_from(["", "content_policy_violation", "service_error", "500"]),
    message=st.sampled_from(["", "boom"]),
)
provider_tasks = st.builds(
    ProviderTask,
    id=st.just(TASK_ID),
    status=st.sampled_from(ProviderStatus),
    raw_status=st.sampled_from(["pending", "canceled", "weird"]),
    progress=progress_values,
    results=st.lists(st.sampled_from([URL, "https://cdn.example.com/b.png"]), max_size=3).map(
        tuple
    ),
    error=provider_errors,
)
events: st.SearchStrategy[Event] = st.one_of(
    st.builds(ProviderNews, task=provider_tasks, confirmed=st.booleans()),
    st.builds(
        ServiceFailure,
        code=st.sampled_from(["provider_timeout", "submission_rejected"]),
        message=st.text(max_size=20),
    ),
    st.just(ArchiveDone()),
)
states = st.builds(
    TaskState,
    status=st.sampled_from(TaskStatus),
    progress=st.integers(min_value=0, max_value=100),
    error_code=st.none() | st.just("some_code"),
    error_message=st.none() | st.just("some message"),
)


def fold(sequence: list[Event]) -> list[tuple[TaskState, Decision, TaskState]]:
    """(before, decision, after) for each event, starting from a fresh QUEUED task."""
    steps = []
    state = TaskState(TaskStatus.QUEUED)
    for event in sequence:
        decision = decide(state, event)
        after = decision.state if decision.state is not None else state
        steps.append((state, decision, after))
        state = after
    return steps


@given(st.lists(events, max_size=30))
def test_progress_never_decreases(sequence: list[Event]) -> None:
    for before, _, after in fold(sequence):
        assert after.progress >= before.progress
        assert 0 <= after.progress <= 100


@given(st.lists(events, max_size=30))
def test_a_terminal_status_never_changes(sequence: list[Event]) -> None:
    for before, decision, after in fold(sequence):
        if before.status.is_terminal:
            assert decision == Decision(None, ())
            assert after == before


@given(st.lists(events, max_size=30))
def test_status_rank_never_goes_backwards(sequence: list[Event]) -> None:
    for before, _, after in fold(sequence):
        assert RANK[after.status] >= RANK[before.status]


@given(st.lists(events, max_size=30))
def test_notify_is_emitted_exactly_once_on_entering_a_terminal_status(
    sequence: list[Event],
) -> None:
    steps = fold(sequence)
    notifies = 0
    for before, decision, after in steps:
        entered_terminal = after.status.is_terminal and not before.status.is_terminal
        assert decision.effects.count(Effect.NOTIFY) == (1 if entered_terminal else 0)
        notifies += decision.effects.count(Effect.NOTIFY)
    reached_terminal = bool(steps) and steps[-1][2].status.is_terminal
    assert notifies == (1 if reached_terminal else 0)


@given(st.lists(events, max_size=30))
def test_archive_is_emitted_at_most_once_and_only_on_entering_archiving(
    sequence: list[Event],
) -> None:
    archives = 0
    for before, decision, after in fold(sequence):
        count = decision.effects.count(Effect.ARCHIVE)
        if count:
            assert before.status is not TaskStatus.ARCHIVING
            assert after.status is TaskStatus.ARCHIVING
        archives += count
    assert archives <= 1


@given(st.lists(events, max_size=30))
def test_decide_never_raises_and_always_returns_a_decision(sequence: list[Event]) -> None:
    for _, decision, after in fold(sequence):
        assert isinstance(decision, Decision)
        assert isinstance(after.status, TaskStatus)
        assert all(isinstance(effect, Effect) for effect in decision.effects)


@given(st.lists(events, max_size=30))
def test_confirm_never_comes_with_a_status_change(sequence: list[Event]) -> None:
    for before, decision, after in fold(sequence):
        if Effect.CONFIRM in decision.effects:
            assert decision.effects == (Effect.CONFIRM,)
            assert (after.status, after.progress) == (before.status, before.progress)
            assert after.final_claimed


@given(states, events)
def test_the_same_event_twice_changes_nothing_the_second_time(
    state: TaskState, event: Event
) -> None:
    first = decide(state, event)
    after = first.state if first.state is not None else state

    second = decide(after, event)

    assert second.state is None
    assert Effect.NOTIFY not in second.effects
    assert Effect.ARCHIVE not in second.effects


@given(st.lists(events, max_size=30), events)
def test_repeating_any_event_of_a_sequence_changes_nothing(
    sequence: list[Event], event: Event
) -> None:
    steps = fold([*sequence, event])
    after = steps[-1][2]

    assert decide(after, event).state is None
