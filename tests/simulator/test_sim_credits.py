"""Billing in the simulator: `usage.credits_reserved` from the table, the balance creates draw
on, `GET /v1/credits`, `402 insufficient_quota`, refunds of failed tasks, `/_sim/credits`."""

from __future__ import annotations

import itertools

import pytest

from app.provider.simulator import SimulatorConfig, SimulatorFaults
from app.provider.simulator.billing import (
    BASE_CREDITS,
    CREDITS_PER_REFERENCE,
    CreditAccount,
    task_credits,
)
from app.provider.types import QUALITIES, SIZES
from tests.support.waiting import until

from .helpers import AUTH, CREATE, assert_error, create_body, running

CREDITS = "/v1/credits"


def credits_body(remaining: float, used: float, *, unlimited: bool = False) -> dict[str, object]:
    return {
        "success": True,
        "message": "",
        "data": {
            "token": {
                "remaining_credits": remaining,
                "unlimited_credits": unlimited,
                "used_credits": used,
            },
            "user": {"remaining_credits": remaining, "used_credits": used},
        },
    }


def test_the_table_spans_the_providers_range() -> None:
    costs = [
        task_credits(quality, size, references)
        for quality, size, references in itertools.product(QUALITIES, SIZES, range(17))
    ]
    assert min(costs) == 0.53
    assert max(costs) == 24.25
    assert task_credits("low", "1:1", 0) == task_credits("low", "1024x1024", 0) == 0.53
    assert task_credits("medium", "2:3", 0) == task_credits("medium", "1536x1024", 0) == 3.06
    assert task_credits("high", "1024x1024", 2) == round(8.10 + 2 * CREDITS_PER_REFERENCE, 4)
    assert task_credits("high", "1024x1536", 16) == 24.25
    # Dearer with quality, with the oblong sizes and with every reference.
    for square, oblong in BASE_CREDITS.values():
        assert square < oblong
    assert BASE_CREDITS["low"] < BASE_CREDITS["medium"] < BASE_CREDITS["high"]


def test_an_account_cannot_start_negative_or_infinite() -> None:
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="credits"):
            CreditAccount(bad)
        with pytest.raises(ValueError, match="credits"):
            SimulatorConfig(credits=bad)


async def test_credits_answers_the_documented_shape() -> None:
    async with running(SimulatorConfig(credits=50.0)) as (sim, client):
        response = await client.get(CREDITS)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == credits_body(50.0, 0.0)
        assert sim.engine.stats.credits_queries == 1


async def test_credits_needs_the_key_and_fails_during_an_outage() -> None:
    async with running(SimulatorConfig()) as (_, client):
        unauthenticated = await client.get(CREDITS, headers={"Authorization": "Bearer sk-evo-x"})
        assert_error(unauthenticated, 401, "unauthorized", "authentication_error")
        await client.put("/_sim/faults", json={"down": True})
        down = await client.get(CREDITS)
        assert_error(down, 503, "internal_error", "api_error")
        stats = (await client.get("/_sim/stats")).json()
        assert (stats["unauthorized"], stats["credits_rejected_503"]) == (1, 1)
        assert (stats["credits_queries"], stats["queries_rejected_503"]) == (0, 0)


async def test_each_create_reserves_its_cost_and_debits_the_balance() -> None:
    async with running(SimulatorConfig(credits=100.0, fetch_references=False)) as (_, client):
        plain = await client.post(CREATE, json=create_body(quality="medium", size="2:3"))
        references = ["https://img.example.test/a.png", "https://img.example.test/b.png"]
        edit = await client.post(
            CREATE, json=create_body(quality="high", size="1:1", image_urls=references)
        )
        assert plain.json()["usage"] == {
            "billing_rule": "per_call",
            "credits_reserved": 3.06,
            "user_group": "default",
        }
        assert edit.json()["usage"]["credits_reserved"] == 9.61
        assert (await client.get(CREDITS)).json() == credits_body(87.33, 12.67)
        described = (await client.get(f"/_sim/tasks/{plain.json()['id']}")).json()
        assert described["quality"] == "medium"


async def test_a_create_the_balance_cannot_cover_is_refused_402() -> None:
    async with running(SimulatorConfig(credits=1.0)) as (sim, client):
        assert (await client.post(CREATE, json=create_body(quality="low"))).status_code == 200
        refused = await client.post(CREATE, json=create_body(quality="low"))
        assert_error(refused, 402, "insufficient_quota", "insufficient_quota")
        assert "0.53" in refused.json()["error"]["message"]
        assert len(sim.engine.tasks) == 1
        assert (await client.get(CREDITS)).json() == credits_body(0.47, 0.53)
        stats = (await client.get("/_sim/stats")).json()
        assert (stats["creates_accepted"], stats["creates_rejected_402"]) == (1, 1)


async def test_an_invalid_create_is_refused_before_the_balance_is_looked_at() -> None:
    async with running(SimulatorConfig(credits=0.0)) as (_, client):
        invalid = await client.post(CREATE, json=create_body(quality="ultra"))
        assert_error(invalid, 400, "invalid_request", "invalid_request_error", "quality")


async def test_unlimited_never_refuses_and_keeps_the_balance() -> None:
    async with running(SimulatorConfig(credits=0.0, unlimited_credits=True)) as (_, client):
        for _ in range(3):
            response = await client.post(CREATE, json=create_body(quality="high"))
            assert response.status_code == 200
        assert (await client.get(CREDITS)).json() == credits_body(0.0, 24.3, unlimited=True)


async def test_a_failed_task_gets_its_credits_back() -> None:
    config = SimulatorConfig(
        credits=10.0, duration_seconds=0.05, faults=SimulatorFaults(fail_rate=1.0)
    )
    async with running(config) as (sim, client):
        response = await client.post(CREATE, json=create_body(quality="medium"))
        assert response.status_code == 200
        task = sim.engine.tasks[response.json()["id"]]
        assert sim.engine.credits.remaining == 7.96
        await until(lambda: task.finalized, what="the task to end")
        assert (await client.get(CREDITS)).json() == credits_body(10.0, 0.0)


async def test_a_completed_task_keeps_its_charge() -> None:
    async with running(SimulatorConfig(credits=10.0, duration_seconds=0.05)) as (sim, client):
        response = await client.post(CREATE, json=create_body(quality="low"))
        task = sim.engine.tasks[response.json()["id"]]
        await until(lambda: task.finalized, what="the task to end")
        assert (await client.get(CREDITS)).json() == credits_body(9.47, 0.53)


async def test_the_balance_is_set_at_runtime() -> None:
    async with running(SimulatorConfig()) as (_, client):
        assert (await client.get("/_sim/credits")).json() == {
            "remaining_credits": 100_000.0,
            "used_credits": 0.0,
            "unlimited_credits": False,
        }
        low = await client.put("/_sim/credits", json={"remaining_credits": 0.5})
        assert low.json()["remaining_credits"] == 0.5
        refused = await client.post(CREATE, json=create_body(quality="low"))
        assert refused.status_code == 402
        changed = await client.put(
            "/_sim/credits", json={"unlimited_credits": True, "used_credits": 7}
        )
        assert changed.json() == {
            "remaining_credits": 0.5,
            "used_credits": 7.0,
            "unlimited_credits": True,
        }
        assert (await client.post(CREATE, json=create_body(quality="low"))).status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"remaining_credits": -1}', "remaining_credits"),
        (b'{"remaining_credits": "5"}', "remaining_credits"),
        (b'{"remaining_credits": true}', "remaining_credits"),
        (b'{"used_credits": 1e400}', "used_credits"),
        (b'{"remaining_credits": NaN}', "remaining_credits"),
        (b'{"unlimited_credits": 1}', "unlimited_credits"),
        (b'{"balance": 5}', "credits"),
    ],
)
async def test_bad_credit_changes_are_refused_and_change_nothing(body: bytes, param: str) -> None:
    async with running(SimulatorConfig(credits=5.0)) as (_, client):
        response = await client.put("/_sim/credits", content=body)
        assert_error(response, 400, "invalid_request", "invalid_request_error", param)
        assert (await client.get(CREDITS)).json() == credits_body(5.0, 0.0)


async def test_a_credit_body_must_be_an_object() -> None:
    async with running(SimulatorConfig(credits=5.0)) as (_, client):
        for raw in (b"[]", b"{", b"5"):
            response = await client.put("/_sim/credits", content=raw)
            assert_error(response, 400, "invalid_request", "invalid_request_error")
        assert (await client.get(CREDITS, headers=AUTH)).json() == credits_body(5.0, 0.0)
