"""Callbacks over real HTTP: body, retry schedule, duplicates, drops and stale bodies."""

from __future__ import annotations

import asyncio
import itertools
import socket
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import httpx
import pytest

from app.provider.simulator import Simulator, SimulatorConfig, SimulatorFaults
from app.provider.simulator.callbacks import CallbackPolicy, CallbackSender
from app.provider.simulator.stats import SimulatorStats

from .helpers import AUTH, CREATE, Receiver, create_body, serve, wait_for_record

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

GAP_TOLERANCE = 0.5


@asynccontextmanager
async def real_simulator(
    receiver: Receiver, faults: SimulatorFaults | None = None, duration: float = 0.1
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """Receiver and simulator each under their own uvicorn; yields (simulator client, hook base)."""
    config = SimulatorConfig(
        duration_seconds=duration,
        allow_private_callbacks=True,
        faults=faults or SimulatorFaults(),
    )
    async with (
        serve(receiver.app, lifespan="off") as hooks,
        serve(Simulator(config).app) as base,
        httpx.AsyncClient(base_url=base, headers=AUTH) as client,
    ):
        yield client, hooks


async def submit(client: httpx.AsyncClient, callback_url: str) -> str:
    """Create a task with a callback; returns its id."""
    response = await client.post(CREATE, json=create_body(callback_url=callback_url))
    assert response.status_code == 200, response.text
    task_id: str = response.json()["id"]
    return task_id


async def test_callback_body_is_the_query_response() -> None:
    receiver = Receiver()
    async with real_simulator(receiver) as (client, hooks):
        task_id = await submit(client, f"{hooks}/done")
        (delivery,) = await receiver.wait_for("done", 1)
        query = await client.get(f"/v1/tasks/{task_id}")
        assert delivery.body == query.json()
        assert delivery.body["status"] == "completed"
        base = str(client.base_url).rstrip("/")
        assert delivery.body["results"][0].startswith(f"{base}/files/{task_id}/")
        image = await client.get(delivery.body["results"][0])
        assert image.status_code == 200
        record = await wait_for_record(client, task_id, callbacks=1)
        (entry,) = record["callbacks"]
        assert (entry["status"], entry["error"], entry["body_status"]) == (200, None, "completed")
        assert isinstance(entry["at"], float)
        stats = (await client.get("/_sim/stats")).json()
        assert (stats["callbacks_sent"], stats["callbacks_delivered"]) == (1, 1)


async def test_failed_task_callback() -> None:
    receiver = Receiver()
    async with real_simulator(receiver, SimulatorFaults(fail_rate=1.0)) as (client, hooks):
        task_id = await submit(client, f"{hooks}/failed")
        (delivery,) = await receiver.wait_for("failed", 1)
        assert delivery.body == (await client.get(f"/v1/tasks/{task_id}")).json()
        assert delivery.body["status"] == "failed"
        assert delivery.body["error"]["type"] == "task_error"


async def test_retry_schedule_is_1_2_4_seconds_and_at_most_4_attempts() -> None:
    receiver = Receiver()
    receiver.scripts["flaky"] = [500, 500, 500, 200]
    receiver.scripts["broken"] = [500]
    async with real_simulator(receiver) as (client, hooks):
        flaky_id = await submit(client, f"{hooks}/flaky")
        broken_id = await submit(client, f"{hooks}/broken")
        flaky = await receiver.wait_for("flaky", 4)
        broken = await receiver.wait_for("broken", 4)
        for task_id in (flaky_id, broken_id):
            await wait_for_record(client, task_id, callbacks=4)
        stats = (await client.get("/_sim/stats")).json()
        assert (stats["callbacks_delivered"], stats["callbacks_given_up"]) == (1, 1)
        assert len(receiver.of("flaky")) == 4
        assert len(receiver.of("broken")) == 4
        for deliveries in (flaky, broken):
            gaps = [b.started - a.started for a, b in itertools.pairwise(deliveries)]
            assert gaps == pytest.approx([1.0, 2.0, 4.0], abs=GAP_TOLERANCE), gaps
        assert [d.status for d in flaky] == [500, 500, 500, 200]
        record = (await client.get(f"/_sim/tasks/{broken_id}")).json()
        assert [entry["status"] for entry in record["callbacks"]] == [500] * 4
        assert [entry["attempt"] for entry in record["callbacks"]] == [1, 2, 3, 4]


async def test_duplicates_arrive_concurrently() -> None:
    receiver = Receiver()
    receiver.delays["dup"] = 0.3
    faults = SimulatorFaults(callback_duplicates=3)
    async with real_simulator(receiver, faults) as (client, hooks):
        task_id = await submit(client, f"{hooks}/dup")
        deliveries = await receiver.wait_for("dup", 3)
        record = await wait_for_record(client, task_id, callbacks=3)
        assert max(d.started for d in deliveries) < min(d.finished for d in deliveries)
        assert len({d.body["id"] for d in deliveries}) == 1
        assert [entry["attempt"] for entry in record["callbacks"]] == [1, 1, 1]
        assert len(receiver.of("dup")) == 3


async def test_one_2xx_among_duplicates_is_success() -> None:
    receiver = Receiver()
    receiver.scripts["half"] = [500, 200]
    receiver.delays["half"] = 0.1
    faults = SimulatorFaults(callback_duplicates=2)
    async with real_simulator(receiver, faults) as (client, hooks):
        task_id = await submit(client, f"{hooks}/half")
        await receiver.wait_for("half", 2)
        record = await wait_for_record(client, task_id, callbacks=2)
        assert sorted(entry["status"] for entry in record["callbacks"]) == [200, 500]
        stats = (await client.get("/_sim/stats")).json()
        assert (stats["callbacks_delivered"], stats["callbacks_sent"]) == (1, 2)


async def test_dropped_callbacks_are_never_sent() -> None:
    receiver = Receiver()
    faults = SimulatorFaults(callback_drop_rate=1.0)
    async with real_simulator(receiver, faults) as (client, hooks):
        task_id = await submit(client, f"{hooks}/dropped")
        record = await wait_for_record(client, task_id, dropped=True)
        assert record["callbacks"] == []
        assert receiver.deliveries == []
        stats = (await client.get("/_sim/stats")).json()
        assert (stats["callbacks_dropped"], stats["callbacks_sent"]) == (1, 0)


async def test_stale_body_follows_the_final_one() -> None:
    receiver = Receiver()
    faults = SimulatorFaults(stale_after_final=True)
    async with real_simulator(receiver, faults) as (client, hooks):
        task_id = await submit(client, f"{hooks}/stale")
        final, stale = await receiver.wait_for("stale", 2)
        assert (final.body["status"], final.body["progress"]) == ("completed", 100)
        assert stale.body["status"] == "processing"
        assert stale.body["id"] == task_id
        assert stale.body["progress"] < final.body["progress"]
        record = await wait_for_record(client, task_id, callbacks=2)
        assert [e["body_status"] for e in record["callbacks"]] == ["completed", "processing"]


async def test_no_callback_without_callback_url() -> None:
    receiver = Receiver()
    async with real_simulator(receiver, duration=0) as (client, _):
        response = await client.post(CREATE, json=create_body())
        task_id = response.json()["id"]
        record = (await client.get(f"/_sim/tasks/{task_id}")).json()
        assert record["callbacks"] == []
        assert (await client.get("/_sim/stats")).json()["callbacks_sent"] == 0


async def test_attempt_timeout_counts_as_failure() -> None:
    receiver = Receiver()
    receiver.delays["slow"] = 0.4
    stats = SimulatorStats()
    sender = CallbackSender(stats, CallbackPolicy(timeout=0.1, retry_delays=(0.05, 0.05, 0.05)))
    await sender.start()
    log: list[dict[str, object]] = []
    try:
        async with serve(receiver.app, lifespan="off") as hooks:
            delivered = await sender.deliver(f"{hooks}/slow", {"status": "completed"}, log)
    finally:
        await sender.aclose()
    assert delivered is False
    assert [(e["status"], e["error"]) for e in log] == [(None, "timeout")] * 4
    assert (stats.callbacks_given_up, stats.callbacks_failed) == (1, 4)


async def test_unreachable_receiver_is_retried_then_given_up() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stats = SimulatorStats()
    sender = CallbackSender(stats, CallbackPolicy(timeout=1, retry_delays=(0.01, 0.01, 0.01)))
    await sender.start()
    log: list[dict[str, object]] = []
    try:
        delivered = await sender.deliver(f"http://127.0.0.1:{port}/cb", {"status": "failed"}, log)
    finally:
        await sender.aclose()
    assert delivered is False
    assert len(log) == 4
    assert all(e["status"] is None and "ConnectError" in str(e["error"]) for e in log)


async def test_stop_does_not_wait_for_pending_callbacks() -> None:
    receiver = Receiver()
    receiver.scripts["never"] = [500]
    simulator = Simulator(SimulatorConfig(duration_seconds=0, allow_private_callbacks=True))
    async with serve(receiver.app, lifespan="off") as hooks:
        await simulator.start()
        transport = httpx.ASGITransport(app=simulator.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://sim.test", headers=AUTH
        ) as client:
            await submit(client, f"{hooks}/never")
        await receiver.wait_for("never", 1)
        async with asyncio.timeout(1):
            await simulator.stop()
    await asyncio.sleep(1.2)
    assert len(receiver.of("never")) == 1


async def test_callbacks_ignore_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standalone simulator too: callbacks go straight to their URL."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
        monkeypatch.setenv(name.lower(), "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    receiver = Receiver()
    config = SimulatorConfig(duration_seconds=0.1, allow_private_callbacks=True)
    async with (
        serve(receiver.app, lifespan="off") as hooks,
        serve(Simulator(config).app) as base,
        httpx.AsyncClient(base_url=base, headers=AUTH, trust_env=False) as client,
    ):
        task_id = await submit(client, f"{hooks}/direct")
        record = await wait_for_record(client, task_id, callbacks=1)

    [attempt] = record["callbacks"]
    assert (attempt["status"], attempt["error"]) == (200, None)
    assert [d.body["id"] for d in receiver.of("direct")] == [task_id]


async def test_a_sender_bound_to_a_base_url_sends_nothing_elsewhere() -> None:
    own, other = Receiver(), Receiver()
    stats = SimulatorStats()
    async with (
        serve(own.app, lifespan="off") as own_url,
        serve(other.app, lifespan="off") as other_url,
    ):
        sender = CallbackSender(stats, only_under=own_url)
        await sender.start()
        try:
            log: list[dict[str, object]] = []
            body = {"id": "t", "status": "completed"}
            outcomes = [
                await sender.deliver(url, body, log)
                for url in (
                    f"{other_url}/hook",
                    other_url.replace("http://", f"http://{own_url.removeprefix('http://')}@")
                    + "/hook",
                    f"{own_url}/hook",
                )
            ]
        finally:
            await sender.aclose()

    assert outcomes == [False, False, True]
    assert other.deliveries == []
    assert [d.name for d in own.deliveries] == ["hook"]
    assert [entry["status"] for entry in log] == [None, None, 200]
    assert all(str(entry["error"]).startswith("refused: ") for entry in log[:2])
    assert (stats.callbacks_sent, stats.callbacks_given_up) == (1, 2)
