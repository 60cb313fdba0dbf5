"""Create and query endpoints: auth, response shapes from the provider doc, progression."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.provider.simulator import Simulator, SimulatorConfig, SimulatorFaults
from app.provider.types import (
    CALLER_ERROR_CODES,
    MODEL,
    OTHER_ERROR_CODES,
    TRANSIENT_ERROR_CODES,
)

from .helpers import CREATE, ManualClock, assert_error, create_body, running, wait_until_final

ID_RE = re.compile(r"task-unified-(\d+)-[a-z0-9]{8}")
DOCUMENTED_CODES = set(CALLER_ERROR_CODES + TRANSIENT_ERROR_CODES + OTHER_ERROR_CODES)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer sk-evo-wrong"},
        {"Authorization": "sk-evo-simulator"},
        {"Authorization": "Basic sk-evo-simulator"},
        {"Authorization": "Bearer "},
        {b"Authorization": "Bearer sk-evo-simulatör".encode("latin-1")},
    ],
)
async def test_bad_or_missing_key_is_401(headers: dict[str, str] | dict[bytes, bytes]) -> None:
    async with running(SimulatorConfig()) as (sim, client):
        client.headers.pop("Authorization")
        created = await client.post(CREATE, json=create_body(), headers=headers)
        assert_error(created, 401, "unauthorized", "authentication_error")
        queried = await client.get("/v1/tasks/task-unified-1-abcdefgh", headers=headers)
        assert_error(queried, 401, "unauthorized", "authentication_error")
        assert sim.engine.tasks == {}
        assert (await client.get("/_sim/stats")).json()["unauthorized"] == 2


async def test_every_configured_key_is_accepted() -> None:
    config = SimulatorConfig(api_keys=("sk-evo-one", "sk-evo-two"))
    async with running(config) as (_, client):
        for key in config.api_keys:
            response = await client.post(
                CREATE, json=create_body(), headers={"Authorization": f"bearer {key}"}
            )
            assert response.status_code == 200, response.text
        default = await client.post(CREATE, json=create_body())
        assert default.status_code == 401


async def test_create_response_matches_the_doc() -> None:
    async with running(SimulatorConfig(duration_seconds=5)) as (_, client):
        before = int(time.time())
        response = await client.post(CREATE, json=create_body(quality="high"))
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert set(body) == {
            "created",
            "id",
            "model",
            "object",
            "progress",
            "status",
            "task_info",
            "type",
            "usage",
        }
        match = ID_RE.fullmatch(body["id"])
        assert match is not None
        assert int(match.group(1)) == body["created"]
        assert before <= body["created"] <= time.time()
        assert body["model"] == MODEL
        assert body["object"] == "image.generation.task"
        assert (body["progress"], body["status"], body["type"]) == (0, "pending", "image")
        assert body["task_info"] == {"can_cancel": True, "estimated_time": 5}
        assert body["usage"] == {
            "billing_rule": "per_call",
            "credits_reserved": 8.1,  # high, square, no reference (billing.py)
            "user_group": "default",
        }


async def test_ids_are_unique() -> None:
    async with running(SimulatorConfig()) as (_, client):
        ids = [(await client.post(CREATE, json=create_body())).json()["id"] for _ in range(20)]
        assert len(set(ids)) == 20


async def test_progress_rises_to_completed() -> None:
    async with running(SimulatorConfig(duration_seconds=0.5)) as (_, client):
        started = time.monotonic()
        task_id = (await client.post(CREATE, json=create_body())).json()["id"]
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["status"] != "completed":
            response = await client.get(f"/v1/tasks/{task_id}")
            assert response.status_code == 200
            seen.append(response.json())
            await asyncio.sleep(0.01)
        assert time.monotonic() - started >= 0.5
        statuses = [body["status"] for body in seen]
        order = ["pending", "processing", "completed"]
        assert statuses == sorted(statuses, key=order.index)
        assert set(statuses) == set(order)
        progress = [body["progress"] for body in seen]
        assert progress == sorted(progress)
        for body in seen:
            if body["status"] == "pending":
                assert body["progress"] == 0
            if body["status"] == "processing":
                assert 1 <= body["progress"] <= 99
            if body["status"] != "completed":
                assert body["task_info"]["can_cancel"] is True
                assert body["task_info"]["estimated_time"] >= 1
                assert "results" not in body
        assert len({body["progress"] for body in seen if body["status"] == "processing"}) > 3


async def test_completed_query_matches_the_doc() -> None:
    async with running(SimulatorConfig(duration_seconds=0)) as (_, client):
        created = (await client.post(CREATE, json=create_body())).json()
        body = await wait_until_final(client, created["id"])
        assert set(body) == {
            "created",
            "id",
            "model",
            "object",
            "progress",
            "status",
            "results",
            "task_info",
            "type",
        }
        assert body["created"] == created["created"]
        assert (body["status"], body["progress"], body["type"]) == ("completed", 100, "image")
        assert body["task_info"] == {"can_cancel": False}
        (url,) = body["results"]
        assert url.startswith(f"http://sim.test/files/{created['id']}/")
        assert url.endswith(".png")


async def test_failed_tasks_carry_a_documented_code() -> None:
    config = SimulatorConfig(duration_seconds=0, seed=3, faults=SimulatorFaults(fail_rate=1.0))
    async with running(config) as (_, client):
        codes = set()
        for _ in range(30):
            created = (await client.post(CREATE, json=create_body())).json()
            body = await wait_until_final(client, created["id"])
            assert set(body) == {"id", "object", "status", "model", "progress", "error"}
            assert (body["status"], body["progress"], body["model"]) == ("failed", 0, MODEL)
            assert body["object"] == "image.generation.task"
            error = body["error"]
            assert set(error) == {"code", "message", "type"}
            assert error["type"] == "task_error"
            assert error["code"] in DOCUMENTED_CODES
            assert error["message"]
            codes.add(error["code"])
        assert len(codes) > 3
        records = (await client.get("/_sim/tasks")).json()
        assert all(r["status"] == "failed" and r["results"] == [] for r in records)


async def test_fail_rate_is_a_fraction() -> None:
    config = SimulatorConfig(duration_seconds=0, seed=11, faults=SimulatorFaults(fail_rate=0.5))
    async with running(config) as (_, client):
        for _ in range(60):
            await client.post(CREATE, json=create_body())
        records = (await client.get("/_sim/tasks")).json()
        failed = sum(r["final_status"] == "failed" for r in records)
        assert 15 <= failed <= 45


async def test_unknown_task_is_404() -> None:
    async with running(SimulatorConfig()) as (_, client):
        response = await client.get("/v1/tasks/task-unified-1757156493-zzzzzzzz")
        assert_error(response, 404, "task_not_found", "invalid_request_error")


@pytest.mark.parametrize(
    "path", ["/v1/tasks/", "/v1/tasks/task-unified-1-abcdefgh/extra", "/v1/tasks/a/b/c"]
)
async def test_a_query_path_without_one_task_id_is_400_in_the_provider_shape(path: str) -> None:
    async with running(SimulatorConfig()) as (_, client):
        response = await client.get(path)
        assert_error(response, 400, "invalid_task_id", "invalid_request_error", "task_id")


async def test_unknown_routes_and_methods_answer_in_the_provider_shape() -> None:
    async with running(SimulatorConfig()) as (_, client):
        unknown = await client.get("/v1/videos/generations")
        method = await client.get("/v1/images/generations")
        assert_error(unknown, 404, "not_found", "invalid_request_error")
        assert_error(method, 405, "method_not_allowed", "invalid_request_error")


@pytest.mark.parametrize("task_id", ["abc", "task-1757156493-imcg5zqt", "TASK-UNIFIED-1-abcdefgh"])
async def test_foreign_task_id_is_400(task_id: str) -> None:
    async with running(SimulatorConfig()) as (_, client):
        response = await client.get(f"/v1/tasks/{task_id}")
        assert_error(response, 400, "invalid_task_id", "invalid_request_error", "task_id")


async def test_same_seed_same_ids_and_outcomes() -> None:
    async def run_once() -> list[tuple[str, str | None]]:
        faults = SimulatorFaults(fail_rate=0.5)
        async with running(SimulatorConfig(seed=42, faults=faults)) as (_, client):
            for _ in range(8):
                await client.post(CREATE, json=create_body())
            records = (await client.get("/_sim/tasks")).json()
            return [(r["id"].rsplit("-", 1)[1], r["error_code"]) for r in records]

    first, second = await run_once(), await run_once()
    assert first == second


async def test_mounted_under_a_prefix_links_use_the_mount_path() -> None:
    simulator = Simulator(SimulatorConfig(duration_seconds=0))
    parent = FastAPI()
    parent.mount("/_simulator", simulator.app)
    await simulator.start()
    try:
        transport = httpx.ASGITransport(app=parent)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://gateway.internal:8080",
            headers={"Authorization": "Bearer sk-evo-simulator"},
        ) as client:
            created = await client.post(f"/_simulator{CREATE}", json=create_body(size="2:3"))
            assert created.status_code == 200
            task_id = created.json()["id"]
            query = await client.get(f"/_simulator/v1/tasks/{task_id}")
            assert query.json()["status"] == "completed"
            (url,) = query.json()["results"]
            assert url.startswith(f"http://gateway.internal:8080/_simulator/files/{task_id}/")
            image = await client.get(url)
            assert image.status_code == 200
            assert image.headers["content-type"] == "image/png"
            records = (await client.get("/_simulator/_sim/tasks")).json()
            assert records[0]["results"] == [url]
            unmounted = await client.get(f"/v1/tasks/{task_id}")
            assert unmounted.status_code == 404
            without_id = await client.get("/_simulator/v1/tasks/")
            assert_error(without_id, 400, "invalid_task_id", "invalid_request_error", "task_id")
    finally:
        await simulator.stop()


async def test_final_at_is_the_wall_clock_time_of_the_final_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = ManualClock(monkeypatch)
    async with running(SimulatorConfig(duration_seconds=0.3)) as (_, client):
        created = clock.wall
        task_id = (await client.post(CREATE, json=create_body())).json()["id"]
        clock.advance(0.29)
        assert (await client.get(f"/_sim/tasks/{task_id}")).json()["final_at"] is None
        clock.advance(0.21)
        final_at = (await client.get(f"/_sim/tasks/{task_id}")).json()["final_at"]
        clock.advance(60.0)
        again = (await client.get("/_sim/tasks")).json()[0]["final_at"]
    assert final_at == pytest.approx(created + 0.3, abs=1e-6)
    assert again == pytest.approx(final_at, abs=1e-6)  # the same moment, whenever it is asked
