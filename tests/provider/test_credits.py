"""The provider's billing figure read tolerantly from create and query answers, and the
estimate table it replaces."""

from __future__ import annotations

import logging
import math
from typing import Any

import httpx
import pytest
import respx

from app.provider.evolink import EvolinkClient
from app.provider.parsing import parse_credits
from app.provider.pricing import (
    CHEAPEST_CREDITS,
    DEAREST_CREDITS,
    estimate_credits,
    image_credits,
)
from app.provider.types import QUALITIES, SIZES
from tests.provider.conftest import CREATE_PATH, QUERY_PATH, TASK_ID, task_body, text_to_image


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"billing_rule": "per_call", "credits_reserved": 252, "user_group": "default"}, 252.0),
        ({"credits_reserved": 12.75}, 12.75),
        ({"credits_reserved": " 8.5 "}, 8.5),
        ({"credits_reserved": 0}, 0.0),
        ({"credits": "3"}, 3.0),
        ({"total_credits": 4.25}, 4.25),
        ({"credits_reserved": 2, "credits": 9}, 2.0),
        ({"billing_rule": "per_call"}, None),
        ({}, None),
    ],
)
async def test_create_answers_carry_the_providers_figure(
    upstream: respx.MockRouter, client: EvolinkClient, usage: dict[str, Any], expected: float
) -> None:
    upstream.post(CREATE_PATH).mock(return_value=httpx.Response(200, json=task_body(usage=usage)))

    task = await client.create_task(text_to_image())

    assert task.credits == expected


async def test_a_create_answer_without_usage_keeps_the_estimate(
    upstream: respx.MockRouter, client: EvolinkClient
) -> None:
    body = task_body()
    del body["usage"]
    upstream.post(CREATE_PATH).mock(return_value=httpx.Response(200, json=body))

    assert (await client.create_task(text_to_image())).credits is None


@pytest.mark.parametrize(
    "raw", [-1, "-0.5", "NaN", "Infinity", "1e400", "lots", True, [3], {"n": 3}, 10**7]
)
async def test_an_unusable_figure_is_ignored_and_logged(
    upstream: respx.MockRouter,
    client: EvolinkClient,
    raw: object,
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = task_body(usage={"credits_reserved": raw})
    upstream.post(CREATE_PATH).mock(return_value=httpx.Response(200, json=body))

    with caplog.at_level(logging.WARNING):
        task = await client.create_task(text_to_image())

    assert task.credits is None
    assert "unusable credits figure" in caplog.text


async def test_a_later_field_is_used_when_an_earlier_one_is_unusable() -> None:
    assert parse_credits({"credits_reserved": "n/a", "credits": 7}) == 7.0
    assert parse_credits("252") is None
    assert parse_credits(None) is None


async def test_query_answers_carry_a_figure_when_present(
    upstream: respx.MockRouter, client: EvolinkClient
) -> None:
    body = task_body(status="completed", progress=100, results=["https://cdn.test/a.png"])
    body["usage"] = {"credits": "251.5"}
    upstream.get(QUERY_PATH).mock(return_value=httpx.Response(200, json=body))

    task = await client.get_task(TASK_ID)

    assert task.credits == 251.5


def test_the_estimates_span_the_providers_published_range() -> None:
    estimates = [
        estimate_credits(quality, size, references)
        for quality in QUALITIES
        for size in SIZES
        for references in range(17)
    ]
    assert min(estimates) == CHEAPEST_CREDITS == estimate_credits("low", "1024x1024", 0)
    assert max(estimates) == DEAREST_CREDITS == estimate_credits("high", "1024x1536", 16)
    # Dearer with quality, with pixels and with each reference.
    for size in SIZES:
        low, medium, high = (image_credits(q, size) for q in QUALITIES)
        assert low < medium < high
    assert (
        image_credits("high", "1:1") < image_credits("high", "3:2") < image_credits("high", "2:3")
    )
    assert estimate_credits("low", "1:1", 1) > estimate_credits("low", "1:1", 0)
    assert estimate_credits("low", "1:1", 40) == estimate_credits("low", "1:1", 16)
    assert all(math.isfinite(value) and value > 0 for value in estimates)


def test_an_unknown_quality_or_size_is_priced_as_the_dearest_image() -> None:
    assert estimate_credits("ultra", "1:1", 0) == estimate_credits("high", "2:3", 0)
