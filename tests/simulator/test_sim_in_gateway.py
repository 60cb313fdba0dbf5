"""The simulator built into `serve` (IMAGEGEN_PROVIDER=simulator, the demo) cannot be turned
against the network: its callbacks go only to the service itself, proxy variables are ignored,
and callers' URLs keep the private-address refusal although no public base URL is configured."""

from __future__ import annotations

import argparse
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import select

from app import cli
from app.balance import repository as balances
from app.balance.repository import BalanceView
from app.callbacks.models import CallbackDelivery
from app.core.config import Settings
from app.provider.types import MODEL
from tests.conftest import ALPHA_KEY, NOTIFY_SECRET, SIMULATOR_KEY, auth
from tests.simulator.helpers import Receiver
from tests.support.images import image_bytes, sha256
from tests.support.servers import bound_socket, serve_app
from tests.support.waiting import eventually

DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens: a request sent through it fails
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def demo_environment(monkeypatch: pytest.MonkeyPatch, database_url: str, **extra: str) -> None:
    """What `scripts/run-demo` sets, and no public base URL or private-network permission."""
    for name in ("IMAGEGEN_PUBLIC_BASE_URL", "IMAGEGEN_ALLOW_PRIVATE_NETWORKS"):
        monkeypatch.delenv(name, raising=False)
    values = {
        "IMAGEGEN_PROVIDER": "simulator",
        "IMAGEGEN_API_KEYS": f"alpha:{ALPHA_KEY}",
        "IMAGEGEN_DATABASE_URL": database_url,
        "IMAGEGEN_STORAGE_URL": "memory://",
        "IMAGEGEN_NOTIFY_SECRET": NOTIFY_SECRET,
        # Only a callback can finish a task quickly: polling would wait an hour.
        "IMAGEGEN_POLL_AFTER_SECONDS": "3600",
    }
    for name, value in (values | extra).items():
        monkeypatch.setenv(name, value)


def served_app(monkeypatch: pytest.MonkeyPatch, port: int) -> FastAPI:
    """The app `imagegen-gateway serve --port {port}` would run (uvicorn is not started)."""
    served: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append(app))
    cli.cmd_serve(argparse.Namespace(host="127.0.0.1", port=port))
    [app] = served
    assert isinstance(app, FastAPI)
    return app


async def finished(client: httpx.AsyncClient, task_id: str) -> httpx.Response:
    """The gateway's answer about `task_id` once it succeeded or failed."""
    return await eventually(
        lambda: client.get(f"/v1/tasks/{task_id}"),
        lambda r: r.json()["status"] in ("succeeded", "failed"),
    )


def dead_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, DEAD_PROXY)
        monkeypatch.setenv(name.lower(), DEAD_PROXY)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    "notify_url",
    ["http://127.0.0.1:8000/hook", "https://127.0.0.1/hook", "https://10.0.0.7/hook"],
)
async def test_serve_without_a_public_base_url_still_refuses_a_private_notify_url(
    sqlite_database_url: str, monkeypatch: pytest.MonkeyPatch, notify_url: str
) -> None:
    demo_environment(monkeypatch, sqlite_database_url, IMAGEGEN_RUN_WORKERS="false")
    app = served_app(monkeypatch, 8000)
    settings: Settings = app.state.settings
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            response = await client.post(
                "/v1/images/generations",
                json={"prompt": "p", "notify_url": notify_url},
                headers=auth(),
            )

    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"].startswith("notify_url: ")
    assert settings.public_base_url == "http://127.0.0.1:8000"  # derived for the demo
    assert settings.allow_private_networks is False


async def test_the_demo_works_end_to_end_with_proxy_variables_pointing_nowhere(
    sqlite_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo_environment(monkeypatch, sqlite_database_url)
    dead_proxies(monkeypatch)
    sock = bound_socket()
    app = served_app(monkeypatch, sock.getsockname()[1])
    async with (
        serve_app(app, sock) as url,
        httpx.AsyncClient(base_url=url, headers=auth(), trust_env=False) as client,
    ):
        created = await client.post("/v1/images/generations", json={"prompt": "a lighthouse"})
        assert created.status_code == 202, created.text
        task_id = created.json()["id"]
        provider_id = (
            await eventually(
                lambda: client.get(f"/v1/tasks/{task_id}"),
                lambda r: r.json()["provider_task_id"] is not None,
            )
        ).json()["provider_task_id"]
        # The simulator's own record of its callback: the first attempt reached the service.
        record = await eventually(
            lambda: client.get(f"/_simulator/_sim/tasks/{provider_id}"),
            lambda r: bool(r.json()["callbacks"]),
        )
        [attempt] = record.json()["callbacks"]
        assert (attempt["status"], attempt["error"]) == (200, None)
        task = await eventually(
            lambda: client.get(f"/v1/tasks/{task_id}"),
            lambda r: r.json()["status"] in ("succeeded", "failed"),
        )
        image = await client.get(f"/v1/tasks/{task_id}/images/0")
        async with app.state.sessions() as session:
            deliveries = (await session.scalars(select(CallbackDelivery))).all()

    assert [d.task_id for d in deliveries] == [task_id]  # it arrived, not a poll that found it
    assert task.json()["status"] == "succeeded"
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")


async def test_the_built_in_simulator_calls_back_nowhere_but_the_service(
    sqlite_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo_environment(monkeypatch, sqlite_database_url, IMAGEGEN_RUN_WORKERS="false")
    receiver = Receiver()  # somewhere else on this machine: an internal service, say
    sock = bound_socket()
    app = served_app(monkeypatch, sock.getsockname()[1])
    async with (
        serve_app(receiver.app) as elsewhere,
        serve_app(app, sock) as url,
        httpx.AsyncClient(base_url=f"{url}/_simulator", trust_env=False) as simulator,
    ):
        body = {"model": MODEL, "prompt": "p", "callback_url": f"{elsewhere}/stolen"}
        headers = {"Authorization": f"Bearer {SIMULATOR_KEY}"}
        refused = await simulator.post("/v1/images/generations", json=body, headers=headers)
        own = body | {"callback_url": f"{url}/callbacks/evolink/x/y"}
        accepted = await simulator.post("/v1/images/generations", json=own, headers=headers)
        stats = (await simulator.get("/_sim/stats")).json()

    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "callback_url"
    assert accepted.status_code == 200, accepted.text
    assert stats["creates_accepted"] == 1
    assert receiver.deliveries == []


async def test_the_built_in_simulator_serves_the_files_api_and_downloads_its_own_links(
    sqlite_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo_environment(monkeypatch, sqlite_database_url)
    dead_proxies(monkeypatch)  # the simulator's own downloads ignore them too
    data = image_bytes("png", seed=4)
    sock = bound_socket()
    app = served_app(monkeypatch, sock.getsockname()[1])
    async with (
        serve_app(app, sock) as url,
        httpx.AsyncClient(base_url=url, headers=auth(), trust_env=False) as client,
    ):
        files_api = f"{url}/_simulator/api/v1/files/upload/stream"
        file = {"file": ("ref.png", data, "image/png")}
        refused = await client.post(files_api, files=file, headers={"Authorization": "Bearer x"})
        simulator_key = {"Authorization": f"Bearer {SIMULATOR_KEY}"}
        upload = (await client.post(files_api, files=file, headers=simulator_key)).json()["data"]
        served = await client.get(upload["file_url"])
        good = await client.post(
            "/v1/images/generations", json={"prompt": "p", "image_urls": [upload["file_url"]]}
        )
        bad = await client.post(
            "/v1/images/generations",
            json={"prompt": "p", "image_urls": [f"{url}/_simulator/files-api/uploads/none.png"]},
        )
        tasks = [await finished(client, created.json()["id"]) for created in (good, bad)]
        records = [
            (await client.get(f"/_simulator/_sim/tasks/{task.json()['provider_task_id']}")).json()
            for task in tasks
        ]

    assert refused.status_code == 401
    assert refused.json() == {"success": False, "code": 401, "msg": "Invalid or missing API key"}
    assert upload["file_url"].startswith(f"{url}/_simulator/files-api/uploads/file_")
    assert upload["download_url"] == f"{url}/_simulator/api/v1/files/download/{upload['file_id']}"
    assert (served.status_code, served.content) == (200, data)
    succeeded, failed = (task.json() for task in tasks)
    assert succeeded["status"] == "succeeded", succeeded
    [fetch] = records[0]["references"]
    assert (fetch["url"], fetch["sha256"]) == (upload["file_url"], sha256(data))
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "image_processing_error"
    assert "image_urls[0]" in failed["error"]["message"]
    assert records[1]["error_code"] == "image_processing_error"
    assert records[1]["references"][0]["status"] == 404


async def test_the_demo_reads_the_built_in_balance_and_fails_a_task_it_cannot_cover(
    sqlite_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers read the built-in simulator's `GET /v1/credits` (over HTTP, at the service's
    own address) into the database; a create the balance cannot cover is answered `402
    insufficient_quota` upstream and the task fails, naming it."""
    demo_environment(monkeypatch, sqlite_database_url)
    sock = bound_socket()
    app = served_app(monkeypatch, sock.getsockname()[1])
    async with (
        serve_app(app, sock) as url,
        httpx.AsyncClient(base_url=url, headers=auth(), trust_env=False) as client,
    ):

        async def reading() -> BalanceView | None:
            async with app.state.sessions() as session:
                return await balances.latest(session)

        stored = await eventually(reading, lambda view: view is not None and bool(view.read_at))
        low = await client.put("/_simulator/_sim/credits", json={"remaining_credits": 0.2})
        assert low.status_code == 200, low.text
        created = await client.post(
            "/v1/images/generations", json={"prompt": "p", "quality": "low"}
        )
        task = await finished(client, created.json()["id"])
        stats = (await client.get("/_simulator/_sim/stats")).json()

    assert stored is not None
    assert (stored.user_remaining, stored.token_unlimited, stored.error) == (100_000.0, False, None)
    assert task.json()["status"] == "failed"
    assert task.json()["error"]["code"] == "submission_rejected"
    assert "HTTP 402 insufficient_quota" in task.json()["error"]["message"]
    assert (stats["creates_rejected_402"], stats["creates_accepted"]) == (1, 0)
    assert stats["credits_queries"] >= 1
