"""The final callback body always reports the final status, whatever the float rounding."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.provider.simulator.tasks import SimTask, final_body
from app.provider.simulator.validation import CreateParams


def sim_task(created_at: float, duration: float) -> SimTask:
    params = CreateParams(
        prompt="p", size="1024x1024", quality="high", image_urls=(), callback_url=None
    )
    return SimTask(
        id="task-unified-1-abcdefgh",
        created=1,
        created_at=created_at,
        duration=duration,
        request={},
        params=params,
        base_url="http://sim",
        file_token="f" * 16,
        image_format="png",
        image_noise=False,
    )


@given(
    created_at=st.floats(min_value=0, max_value=1e7, allow_nan=False),
    duration=st.floats(min_value=0.01, max_value=1e4, allow_nan=False),
)
def test_the_final_body_is_final(created_at: float, duration: float) -> None:
    body = final_body(sim_task(created_at, duration))

    assert body["status"] == "completed"
    assert body["progress"] == 100


def test_the_rounding_case_that_once_sent_processing() -> None:
    # created_at + 0.3 - created_at < 0.3 in binary floating point for this start time.
    task = sim_task(8445.486557804348, 0.3)

    assert task.due_at - task.created_at < task.duration
    assert final_body(task)["status"] == "completed"
