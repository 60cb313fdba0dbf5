"""Tolerant parsing of EvoLink bodies: odd shapes degrade, only a missing task id is fatal."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from app.provider.parsing import (
    ProviderBodyError,
    parse_error,
    parse_error_body,
    parse_progress,
    parse_status,
    parse_task,
)
from app.provider.types import ProviderStatus, ProviderTaskError
from tests.provider.conftest import TASK_ID, task_body

URL_A = "https://cdn.example.com/a.png"
URL_B = "https://cdn.example.com/b.png"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(None, id="null"),
        pytest.param([task_body()], id="list"),
        pytest.param(TASK_ID, id="string"),
        pytest.param(42, id="number"),
    ],
)
def test_parse_task_refuses_a_body_that_is_not_an_object(body: Any) -> None:
    with pytest.raises(ProviderBodyError, match="not a JSON object"):
        parse_task(body)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"id": None}, id="null"),
        pytest.param({"id": ""}, id="empty"),
        pytest.param({"id": "   "}, id="blank"),
        pytest.param({"id": 1757156493}, id="integer"),
        pytest.param({"id": [TASK_ID]}, id="list"),
        pytest.param({"id": "t" * 129}, id="129-chars"),
    ],
)
def test_parse_task_refuses_an_unusable_id(overrides: dict[str, Any]) -> None:
    with pytest.raises(ProviderBodyError, match="task id"):
        parse_task(task_body(**overrides))


def test_parse_task_refuses_a_missing_id() -> None:
    body = task_body()
    del body["id"]

    with pytest.raises(ProviderBodyError, match="task id"):
        parse_task(body)


def test_parse_task_accepts_an_id_of_exactly_128_chars() -> None:
    task_id = "task-unified-" + "x" * 115

    assert parse_task(task_body(id=task_id)).id == task_id


def test_parse_task_strips_the_id() -> None:
    assert parse_task(task_body(id=f"  {TASK_ID}\n")).id == TASK_ID


def test_parse_task_keeps_the_raw_body_with_unknown_fields() -> None:
    body = task_body(surprise={"deep": [1, {"x": None}]})

    task = parse_task(body)

    assert task.raw == body
    assert task.raw["surprise"] == {"deep": [1, {"x": None}]}


def test_parse_task_tolerates_a_body_with_only_an_id() -> None:
    task = parse_task({"id": TASK_ID})

    assert task.status is ProviderStatus.UNKNOWN
    assert task.progress == 0
    assert task.results == ()
    assert task.error is None


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        pytest.param([URL_A, URL_B], (URL_A, URL_B), id="strings"),
        pytest.param([f"  {URL_A} "], (URL_A,), id="strings-stripped"),
        pytest.param(
            [None, URL_A, 3, "", "   ", ["nested"], True, {"url": 5}, URL_B],
            (URL_A, URL_B),
            id="non-strings-ignored",
        ),
        pytest.param([{"url": URL_A}, {"url": URL_B, "w": 1}], (URL_A, URL_B), id="objects"),
        pytest.param([{"href": URL_A}, {"url": None}], (), id="objects-without-url"),
        pytest.param([URL_A, {"url": URL_B}], (URL_A, URL_B), id="mixed"),
        pytest.param([], (), id="empty-list"),
        pytest.param(URL_A, (), id="string-not-list"),
        pytest.param({"url": URL_A}, (), id="object-not-list"),
        pytest.param(None, (), id="null"),
    ],
)
def test_parse_task_reads_results(results: Any, expected: tuple[str, ...]) -> None:
    task = parse_task(task_body(status="completed", results=results))

    assert task.results == expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(
            {"code": "content_policy_violation", "message": "no", "type": "task_error"},
            ProviderTaskError("content_policy_violation", "no"),
            id="documented",
        ),
        pytest.param({"code": 402, "message": "pay"}, ProviderTaskError("402", "pay"), id="int"),
        pytest.param(
            {"code": "quota_exceeded"}, ProviderTaskError("quota_exceeded", ""), id="no-message"
        ),
        pytest.param({"message": "boom"}, ProviderTaskError("", "boom"), id="no-code"),
        pytest.param({"code": True, "message": None}, ProviderTaskError("", ""), id="bool-code"),
        pytest.param({}, ProviderTaskError("", ""), id="empty-object"),
        pytest.param("content_policy_violation", None, id="string"),
        pytest.param(None, None, id="null"),
        pytest.param([{"code": "x"}], None, id="list"),
    ],
)
def test_parse_task_reads_the_error_object(error: Any, expected: ProviderTaskError | None) -> None:
    task = parse_task(task_body(status="failed", error=error))

    assert task.error == expected


def test_parse_error_caps_code_and_message() -> None:
    parsed = parse_error({"code": "c" * 100, "message": "m" * 5000})

    assert parsed == ProviderTaskError("c" * 64, "m" * 2000)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("pending", ProviderStatus.PENDING),
        ("processing", ProviderStatus.PROCESSING),
        ("completed", ProviderStatus.COMPLETED),
        ("failed", ProviderStatus.FAILED),
        ("cancelled", ProviderStatus.CANCELLED),
        ("canceled", ProviderStatus.CANCELLED),
        (" Completed\n", ProviderStatus.COMPLETED),
        ("CANCELED", ProviderStatus.CANCELLED),
    ],
)
def test_parse_status_normalises_known_statuses(raw: str, expected: ProviderStatus) -> None:
    assert parse_status(raw) is expected


@pytest.mark.parametrize("raw", [None, "", "queued", "succeeded", 1, True, {"s": "completed"}])
def test_parse_status_maps_anything_else_to_unknown_and_warns(
    caplog: pytest.LogCaptureFixture, raw: object
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.provider.parsing"):
        status = parse_status(raw)

    assert status is ProviderStatus.UNKNOWN
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert caplog.records[0].__dict__["provider_status"] == str(raw)[:64]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0, 0),
        (100, 100),
        ("55", 55),
        (55.7, 55),
        ("99.9", 99),
        (-3, 0),
        (250, 100),
        (None, 0),
        ("garbage", 0),
        ("nan", 0),
        ([50], 0),
    ],
)
def test_parse_progress_is_an_int_clamped_to_0_100(raw: object, expected: int) -> None:
    progress = parse_progress(raw)

    assert progress == expected
    assert type(progress) is int


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            {"error": {"code": "invalid_request", "message": "bad size", "type": "x"}},
            ("invalid_request", "bad size"),
            id="documented",
        ),
        pytest.param({"error": {"code": 429, "message": "slow"}}, ("429", "slow"), id="int-code"),
        pytest.param({"error": {"code": "x"}}, ("x", "FALLBACK"), id="no-message"),
        pytest.param(
            {"error": {"code": "x", "message": ""}}, ("x", "FALLBACK"), id="empty-message"
        ),
        pytest.param({"error": {}}, ("", "FALLBACK"), id="empty-error"),
        pytest.param({"error": "Unauthorized"}, ("", "FALLBACK"), id="error-string"),
        pytest.param({"error": None}, ("", "FALLBACK"), id="error-null"),
        pytest.param({"code": 500, "message": "boom"}, ("", "FALLBACK"), id="apimart-shape"),
        pytest.param({}, ("", "FALLBACK"), id="empty-object"),
        pytest.param(None, ("", "FALLBACK"), id="null"),
        pytest.param([{"error": {"code": "x"}}], ("", "FALLBACK"), id="list"),
        pytest.param("oops", ("", "FALLBACK"), id="string"),
    ],
)
def test_parse_error_body_tolerates_odd_shapes(body: Any, expected: tuple[str, str]) -> None:
    assert parse_error_body(body, "FALLBACK") == expected


def test_parse_error_body_caps_the_fallback() -> None:
    assert parse_error_body(None, "f" * 10_000) == ("", "f" * 500)
