"""Injected faults, runtime fault changes and the `/_sim/` inspection endpoints."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from app.provider.simulator import Simulator, SimulatorConfig, SimulatorFaults
from tests.support.images import ImageHost, image_bytes, sha256
from tests.support.waiting import eventually

from .helpers import AUTH, CREATE, assert_error, create_body, running, serve


async def test_down_answers_503_to_api_calls_until_lifted() -> None:
    config = SimulatorConfig(faults=SimulatorFaults(down=True))
    async with running(config) as (sim, client):
        created = await client.post(CREATE, json=create_body())
        assert_error(created, 503, "internal_error", "api_error")
        queried = await client.get("/v1/tasks/task-unified-1-abcdefgh")
        assert_error(queried, 503, "internal_error", "api_error")
        unauthenticated = await client.post(CREATE, json=create_body(), headers={"X": "y"})
        assert unauthenticated.status_code == 503
        assert sim.engine.tasks == {}
        assert (await client.get("/_sim/stats")).status_code == 200
        lifted = await client.put("/_sim/faults", json={"down": False})
        assert lifted.json()["down"] is False
        assert (await client.post(CREATE, json=create_body())).status_code == 200
        stats = (await client.get("/_sim/stats")).json()
        assert stats["creates_rejected_503"] == 2
        assert stats["queries_rejected_503"] == 1
        assert stats["creates_rejected_fault"] == 2
        assert stats["creates_accepted"] == 1


async def test_create_429_creates_nothing() -> None:
    config = SimulatorConfig(faults=SimulatorFaults(create_429_rate=1.0))
    async with running(config) as (_, client):
        response = await client.post(CREATE, json=create_body())
        assert_error(response, 429, "rate_limit_exceeded", "rate_limit_error")
        assert (await client.get("/_sim/tasks")).json() == []
        stats = (await client.get("/_sim/stats")).json()
        assert (stats["creates_rejected_429"], stats["creates_rejected_fault"]) == (1, 1)


async def test_create_500_creates_nothing() -> None:
    config = SimulatorConfig(faults=SimulatorFaults(create_500_rate=1.0))
    async with running(config) as (_, client):
        response = await client.post(CREATE, json=create_body())
        assert_error(response, 500, "internal_error", "api_error")
        assert (await client.get("/_sim/tasks")).json() == []
        assert (await client.get("/_sim/stats")).json()["creates_rejected_500"] == 1


async def test_fault_rates_are_fractions() -> None:
    faults = SimulatorFaults(create_429_rate=0.3, create_500_rate=0.3)
    async with running(SimulatorConfig(seed=5, faults=faults)) as (_, client):
        codes = [(await client.post(CREATE, json=create_body())).status_code for _ in range(100)]
        assert {200, 429, 500} == set(codes)
        stats = (await client.get("/_sim/stats")).json()
        assert stats["creates_accepted"] == codes.count(200)
        assert stats["creates_rejected_fault"] == 100 - codes.count(200)
        assert len((await client.get("/_sim/tasks")).json()) == codes.count(200)


async def test_query_500() -> None:
    async with running(SimulatorConfig()) as (_, client):
        task_id = (await client.post(CREATE, json=create_body())).json()["id"]
        await client.put("/_sim/faults", json={"query_500_rate": 1.0})
        assert_error(await client.get(f"/v1/tasks/{task_id}"), 500, "internal_error", "api_error")
        await client.put("/_sim/faults", json={"query_500_rate": 0})
        assert (await client.get(f"/v1/tasks/{task_id}")).status_code == 200
        stats = (await client.get("/_sim/stats")).json()
        assert (stats["queries"], stats["queries_rejected_500"]) == (2, 1)


async def test_hang_delays_the_answer_but_creates_the_task() -> None:
    faults = SimulatorFaults(create_hang_rate=1.0, create_hang_seconds=0.3)
    async with running(SimulatorConfig(faults=faults)) as (_, client):
        started = time.monotonic()
        response = await client.post(CREATE, json=create_body())
        assert time.monotonic() - started >= 0.3
        assert response.status_code == 200
        (record,) = (await client.get("/_sim/tasks")).json()
        assert record["id"] == response.json()["id"]
        assert (await client.get("/_sim/stats")).json()["creates_hung"] == 1


async def test_hang_looks_like_a_read_timeout_over_real_http() -> None:
    faults = SimulatorFaults(create_hang_rate=1.0, create_hang_seconds=60)
    simulator = Simulator(SimulatorConfig(faults=faults))
    stopped_at = 0.0
    async with serve(simulator.app) as base:
        async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=0.3) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post(CREATE, json=create_body())
            (record,) = (await client.get("/_sim/tasks")).json()
            assert record["status"] in ("pending", "processing", "completed")
        stopped_at = time.monotonic()
    assert time.monotonic() - stopped_at < 5
    assert not simulator.started


async def test_put_faults_returns_the_new_faults() -> None:
    async with running(SimulatorConfig()) as (sim, client):
        response = await client.put(
            "/_sim/faults",
            json={"callback_duplicates": 3, "fail_rate": 0.25, "stale_after_final": True},
        )
        assert response.status_code == 200
        expected = SimulatorFaults(callback_duplicates=3, fail_rate=0.25, stale_after_final=True)
        assert response.json() == expected.to_json()
        assert sim.config.faults == expected
        assert (await client.get("/_sim/faults")).json() == expected.to_json()


@pytest.mark.parametrize(
    "changes",
    [
        {"nonsense": 1},
        {"fail_rate": 1.5},
        {"fail_rate": -0.1},
        {"fail_rate": "0.5"},
        {"down": 1},
        {"callback_duplicates": 0},
        {"callback_duplicates": 2.5},
        {"link_ttl_seconds": -1},
        [1, 2],
    ],
)
async def test_put_faults_rejects_bad_values(changes: object) -> None:
    async with running(SimulatorConfig()) as (sim, client):
        response = await client.put("/_sim/faults", json=changes)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_request"
        assert sim.config.faults == SimulatorFaults()


async def test_put_faults_rejects_non_json() -> None:
    async with running(SimulatorConfig()) as (_, client):
        response = await client.put("/_sim/faults", content=b"down=true")
        assert_error(response, 400, "invalid_request", "invalid_request_error")


async def test_inspection_lists_tasks_with_their_request() -> None:
    host = ImageHost()
    reference = image_bytes("png")
    path = host.add("ref.png", reference)
    async with (
        serve(host.app) as images,
        running(SimulatorConfig(duration_seconds=0)) as (_, client),
    ):
        body = create_body(
            callback_url="https://hooks.example.com/cb/abc",
            image_urls=[f"{images}{path}"],
            extra="kept",
        )
        task_id = (await client.post(CREATE, json=body)).json()["id"]
        await eventually(
            lambda: client.get(f"/_sim/tasks/{task_id}"),
            lambda response: response.json()["status"] == "completed",
            what="the task to complete",
        )
        await client.get(f"/v1/tasks/{task_id}")
        client.headers.pop("Authorization")
        (record,) = (await client.get("/_sim/tasks")).json()
        assert record["id"] == task_id
        assert record["request"] == body
        assert record["callback_url"] == "https://hooks.example.com/cb/abc"
        assert record["status"] == "completed"
        assert record["results"][0].startswith(f"http://sim.test/files/{task_id}/")
        assert set(record) >= {"image_sha256", "image_bytes", "callbacks", "callback_dropped"}
        [fetch] = record["references"]
        assert (fetch["url"], fetch["sha256"]) == (f"{images}{path}", sha256(reference))
        missing = await client.get("/_sim/tasks/task-unified-1-abcdefgh")
        assert missing.status_code == 404
        stats = (await client.get("/_sim/stats")).json()
        assert (stats["creates_accepted"], stats["queries"]) == (1, 1)


def test_fault_and_config_validation() -> None:
    with pytest.raises(ValueError, match="fail_rate"):
        SimulatorFaults(fail_rate=2)
    with pytest.raises(ValueError, match="callback_duplicates"):
        SimulatorFaults(callback_duplicates=0)
    with pytest.raises(ValueError, match="image_format"):
        SimulatorConfig(image_format="gif")
    with pytest.raises(ValueError, match="api_keys"):
        SimulatorConfig(api_keys=())
    with pytest.raises(ValueError, match="duration"):
        SimulatorConfig(duration_seconds=-1)
    with pytest.raises(ValueError, match="files_429_rate"):
        SimulatorFaults(files_429_rate=-0.5)
    with pytest.raises(ValueError, match="reference_timeout_seconds"):
        SimulatorConfig(reference_timeout_seconds=0)
    with pytest.raises(ValueError, match="files_ttl_seconds"):
        SimulatorConfig(files_ttl_seconds=-1)


async def test_throttled_downloads_take_their_time_and_are_counted() -> None:
    import time

    import httpx

    from app.provider.simulator.app import Simulator
    from app.provider.simulator.config import SimulatorConfig, SimulatorFaults

    faults = SimulatorFaults(file_bytes_per_second=64 * 1024 * 20)
    simulator = Simulator(SimulatorConfig(duration_seconds=0.05, image_noise=True, faults=faults))
    await simulator.start()
    try:
        transport = httpx.ASGITransport(app=simulator.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            headers = {"Authorization": "Bearer sk-evo-simulator"}
            created = await client.post(
                "/v1/images/generations",
                json={"model": "gpt-image-1.5", "prompt": "p", "size": "1:1"},
                headers=headers,
            )
            task_id = created.json()["id"]

            async def query() -> dict[str, Any]:
                body: dict[str, Any] = (
                    await client.get(f"/v1/tasks/{task_id}", headers=headers)
                ).json()
                return body

            done = await eventually(query, lambda body: body["status"] == "completed", 10.0)
            started = time.perf_counter()
            image = await client.get(done["results"][0].replace("http://sim", ""))
            elapsed = time.perf_counter() - started
            described = (await client.get(f"/_sim/tasks/{task_id}")).json()
    finally:
        await simulator.stop()

    assert image.status_code == 200
    assert len(image.content) == described["image_bytes"]
    assert elapsed >= 0.8 * len(image.content) / faults.file_bytes_per_second
    assert described["downloads"] == 1
