"""Callback paths carry the task's nonce, so their token is checked from the path alone: a forged
path is refused without any database work. The paths earlier versions gave out (without the
nonce) keep working; a path signed for another nonce of the task changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event, select

from app.callbacks.models import CallbackDelivery
from app.callbacks.orm_recorder import OrmRecorder
from app.callbacks.pg_recorder import PostgresRecorder
from app.core import callback_tokens as tokens
from app.core.config import CALLBACK_PATH_LENGTH, Settings
from app.core.metrics import CALLBACK_ROUTE, LEGACY_CALLBACK_ROUTE
from app.core.urls import MAX_CALLBACK_URL_LENGTH
from app.tasks.events import TaskEvent
from app.tasks.models import Task
from app.workers.models import JobKind, JobState
from tests.conftest import CALLBACK_SECRET, settings_values
from tests.support.callbacks import accepted_task, body, callback_path, legacy_callback_path
from tests.support.gateway import Gateway, running_gateway

PROVIDER_ID = "task-unified-1-abcd1234"
JSON = {"Content-Type": "application/json"}
SECRET = CALLBACK_SECRET.encode()
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
async def gateway(database_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(Settings(**settings_values(database_url))) as gateway:
        yield gateway


def refusals(reason: str) -> float:
    labels = {"reason": reason}
    return REGISTRY.get_sample_value("imagegen_callback_refusals_total", labels) or 0.0


def requests_on(route: str, status: str) -> float:
    labels = {"method": "POST", "route": route, "status": status}
    value = REGISTRY.get_sample_value("imagegen_http_request_duration_seconds_count", labels)
    return value or 0.0


async def state_of(gateway: Gateway, task_id: str) -> dict[str, Any]:
    """Everything a callback could change about a task."""
    async with gateway.sessions() as session:
        task = await session.get(Task, task_id)
        assert task is not None
        events = await session.scalars(select(TaskEvent.id).where(TaskEvent.task_id == task_id))
        lines = len(events.all())
    jobs = sorted((j.kind, j.state, j.run_at) for j in await gateway.jobs(task_id))
    return {
        "task": (task.status, task.progress, task.final_claimed_at, task.updated_at),
        "events": lines,
        "jobs": jobs,
        "inbox": await gateway.count(CallbackDelivery, CallbackDelivery.task_id == task_id),
    }


async def test_a_forged_path_with_a_nonce_is_refused_without_any_database_work(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = await accepted_task(gateway.sessions, PROVIDER_ID)
    before = await state_of(gateway, task.id)
    real = callback_path(task)
    token = real.rsplit("/", 1)[1]
    other, nonce, prefix = tokens.new_nonce(), task.callback_nonce, tokens.CALLBACK_PREFIX
    forged = {
        "wrong token": real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB"),
        "another secret": tokens.callback_path(b"another-secret-0123456789abcdef", task.id, nonce),
        "another nonce, the task's token": f"{prefix}/{task.id}/{other}/{token}",
        "unknown task": f"{prefix}/{UNKNOWN_ID}/{other}/{'A' * 43}",
        "nonce not hex": f"{prefix}/{task.id}/{'x' * 32}/{token}",
        "nonce upper case": f"{prefix}/{task.id}/{nonce.upper()}/{token}",
        "empty token": f"{prefix}/{task.id}/{nonce}/",
        "not a task id": f"{prefix}/not-a-task/{nonce}/{token}",
    }
    recorder_calls: list[str] = []

    def noted(recorder: type, method: str) -> Any:
        original = getattr(recorder, method)

        async def called(*args: Any) -> Any:
            recorder_calls.append(f"{recorder.__name__}.{method}")
            return await original(*args)

        return called

    for recorder in (PostgresRecorder, OrmRecorder):
        for method in ("snapshot", "receive"):
            monkeypatch.setattr(recorder, method, noted(recorder, method))
    statements: list[str] = []
    engine = gateway.app.state.runtime.engine.sync_engine

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    bad_before, unknown_before = refusals("bad_token"), refusals("unknown_task")
    content = body(PROVIDER_ID, "completed")
    event.listen(engine, "before_cursor_execute", count)
    try:
        answers = {
            case: (await gateway.client.post(path, content=content, headers=JSON)).status_code
            for case, path in forged.items()
        }
        assert (recorder_calls, statements) == ([], [])
        # The control: a wrong token in the older form reads the task, and that is seen.
        legacy = legacy_callback_path(task)[:-4] + "AAAA"
        control = await gateway.client.post(legacy, content=content, headers=JSON)
    finally:
        event.remove(engine, "before_cursor_execute", count)

    assert answers == dict.fromkeys(forged, 401) | {"not a task id": 404}
    assert control.status_code == 401
    assert len(recorder_calls) == 1
    assert recorder_calls[0].endswith(".snapshot")
    assert refusals("bad_token") - bad_before == len(forged) - 1 + 1
    assert refusals("unknown_task") - unknown_before == 1
    monkeypatch.undo()
    assert await state_of(gateway, task.id) == before


async def test_the_path_of_a_task_submitted_before_the_upgrade_still_works(
    gateway: Gateway,
) -> None:
    task = await accepted_task(gateway.sessions, PROVIDER_ID)
    legacy = legacy_callback_path(task)
    assert legacy.count("/") == 4  # /callbacks/evolink/{task id}/{token}
    progress = body(PROVIDER_ID, "processing", 40)
    ok_before = requests_on(LEGACY_CALLBACK_ROUTE, "2xx")

    first = await gateway.client.post(legacy, content=progress, headers=JSON)
    again = await gateway.client.post(legacy, content=progress, headers=JSON)
    final = await gateway.client.post(legacy, content=body(PROVIDER_ID, "completed"), headers=JSON)
    # The same task's new path and its old one are the same task's.
    same = await gateway.client.post(callback_path(task), content=progress, headers=JSON)
    wrong = await gateway.client.post(legacy[:-4] + "AAAA", content=progress, headers=JSON)
    unknown = await gateway.client.post(
        f"{tokens.CALLBACK_PREFIX}/{UNKNOWN_ID}/{'A' * 43}", content=progress, headers=JSON
    )

    assert [r.json() for r in (first, again, final, same)] == [
        {"status": "accepted"},
        {"status": "duplicate"},
        {"status": "accepted"},
        {"status": "duplicate"},
    ]
    assert (wrong.status_code, unknown.status_code) == (401, 404)
    # Answered ahead of FastAPI, with the headers of every answer all the same.
    for response in (first, again, final, same, wrong, unknown):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-type"] == "application/json"
    row = await gateway.task_row(task.id)
    assert (row.status, row.progress) == ("processing", 40)
    assert row.final_claimed_at is not None
    polls = [
        j
        for j in await gateway.jobs(task.id)
        if (j.kind, j.state) == (JobKind.POLL, JobState.QUEUED)
    ]
    assert len(polls) == 1  # the confirmation the final callback asks for
    assert await gateway.count(CallbackDelivery) == 2
    assert requests_on(LEGACY_CALLBACK_ROUTE, "2xx") - ok_before == 3


@pytest.mark.parametrize(
    "content",
    [body(PROVIDER_ID, "completed"), b"{not json", body("task-unified-1-elsewhere", "completed")],
    ids=["final", "malformed", "another upstream task"],
)
async def test_a_path_signed_for_another_nonce_of_the_task_changes_nothing(
    gateway: Gateway, content: bytes
) -> None:
    task = await accepted_task(gateway.sessions, PROVIDER_ID)
    before = await state_of(gateway, task.id)
    stale = tokens.callback_path(SECRET, task.id, tokens.new_nonce())
    ok_before = requests_on(CALLBACK_ROUTE, "4xx")

    answer = await gateway.client.post(stale, content=content, headers=JSON)
    again = await gateway.client.post(stale, content=content, headers=JSON)

    # As a token made with another nonce always was: 401, and the task as it was.
    assert (answer.status_code, again.status_code) == (401, 401)
    assert answer.json()["error"]["code"] == "unauthorized"
    assert await state_of(gateway, task.id) == before
    assert requests_on(CALLBACK_ROUTE, "4xx") - ok_before == 2


async def test_a_signed_path_of_a_task_that_is_gone_is_404_and_stores_nothing(
    gateway: Gateway,
) -> None:
    path = tokens.callback_path(SECRET, UNKNOWN_ID, tokens.new_nonce())

    answer = await gateway.client.post(path, content=body(PROVIDER_ID, "completed"), headers=JSON)

    assert answer.status_code == 404
    assert await gateway.count(CallbackDelivery) == 0


def test_the_longest_public_base_url_allowed_gives_callback_urls_within_the_limit() -> None:
    nonce, task_id = tokens.new_nonce(), "0b6f2a52-3b1e-4c38-9d7e-2f1c5b9a8e01"
    path = tokens.callback_path(SECRET, task_id, nonce)
    assert len(path) == CALLBACK_PATH_LENGTH
    head = "https://gateway.example.com/"
    longest = head + "p" * (MAX_CALLBACK_URL_LENGTH - CALLBACK_PATH_LENGTH - len(head))

    settings = Settings(**settings_values("sqlite+aiosqlite://", public_base_url=longest))
    assert settings.public_base_url is not None
    url = tokens.callback_url(settings.public_base_url, SECRET, task_id, nonce)
    assert len(url) == MAX_CALLBACK_URL_LENGTH
    with pytest.raises(ValueError, match="callback URLs would be 2049 characters"):
        Settings(**settings_values("sqlite+aiosqlite://", public_base_url=longest + "p"))
