"""`/inputs/<token>.<ext>`: the one image a valid name stands for while its task is not terminal,
from the file store and S3, on SQLite and PostgreSQL; the same 404 for everything else."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event

from app.core.clock import utcnow
from app.core.config import Settings
from app.core.input_tokens import input_expiry, input_key, input_path
from app.storage.store import ObjectStore, StoreError
from app.tasks import repository
from app.tasks.models import Task
from tests.conftest import CALLBACK_SECRET, settings_values
from tests.support.gateway import Gateway, running_gateway
from tests.support.reference_rows import (
    Made,
    StoredReference,
    image_bytes,
    make_task_with_references,
)
from tests.support.s3 import BUCKET, S3Server

KEY = input_key(CALLBACK_SECRET.encode())
PNG = image_bytes("image/png", shade=1)
JPEG = image_bytes("image/jpeg", shade=2)
WEBP = image_bytes("image/webp", shade=3)
NOT_FOUND = b'{"error":{"code":"not_found","message":"no such input"}}'


@pytest.fixture(params=["file", "s3"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A file store, or a prefix of the S3 server (its variables set for the test)."""
    if request.param == "file":
        yield f"file://{tmp_path}/store"
        return
    server: S3Server = request.getfixturevalue("s3_server")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    yield f"s3://{BUCKET}/{server.new_prefix()}"


@pytest.fixture
async def gateway(database_url: str, tmp_path: Any) -> AsyncIterator[Gateway]:
    settings = Settings(**settings_values(database_url, storage_url=f"file://{tmp_path}/store"))
    async with running_gateway(settings) as running:
        yield running


def store_of(gateway: Gateway) -> ObjectStore:
    store: ObjectStore = gateway.app.state.store
    return store


def path_of(task: Task, position: int, extension: str) -> str:
    return input_path(KEY, task.id, position, input_expiry(task.created_at), extension)


async def three_references(gateway: Gateway, **task_fields: Any) -> Made:
    """A task with a URL reference, then a PNG upload, a JPEG task result and a WebP upload."""
    return await make_task_with_references(
        gateway.sessions,
        store_of(gateway),
        [
            StoredReference(PNG),
            StoredReference(JPEG, "image/jpeg", source="task"),
            StoredReference(WEBP, "image/webp"),
        ],
        image_urls=["https://images.example.com/a.png"],
        **task_fields,
    )


def assert_the_404(response: httpx.Response) -> None:
    assert response.status_code == 404
    assert response.content == (b"" if response.request.method == "HEAD" else NOT_FOUND)
    assert sorted(response.headers.items()) == sorted(
        {
            "content-type": "application/json",
            "content-length": str(len(NOT_FOUND)),
            "x-content-type-options": "nosniff",
            "cache-control": "no-store",
        }.items()
    )


async def test_get_and_head_serve_each_image_with_its_headers(
    database_url: str, storage_url: str
) -> None:
    settings = Settings(**settings_values(database_url, storage_url=storage_url))
    async with running_gateway(settings) as gateway:
        made = await three_references(gateway)

        for position, data, kind, extension in [
            (1, PNG, "image/png", "png"),
            (2, JPEG, "image/jpeg", "jpg"),
            (3, WEBP, "image/webp", "webp"),
        ]:
            path = path_of(made.task, position, extension)
            got = await gateway.client.get(path)
            head = await gateway.client.head(path)

            assert got.status_code == head.status_code == 200
            assert got.content == data
            assert head.content == b""
            expected = {
                "content-type": kind,
                "content-length": str(len(data)),
                "x-content-type-options": "nosniff",
                "cache-control": "no-store",
            }
            assert dict(got.headers) == expected
            assert dict(head.headers) == expected


@pytest.mark.parametrize("status", ["queued", "pending", "processing", "archiving"])
async def test_the_image_is_served_while_the_task_is_not_terminal(
    gateway: Gateway, status: str
) -> None:
    made = await three_references(gateway, status=status)

    response = await gateway.client.get(path_of(made.task, 1, "png"))

    assert (response.status_code, response.content) == (200, PNG)


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
async def test_a_terminal_tasks_images_are_the_404(gateway: Gateway, status: str) -> None:
    made = await three_references(gateway)
    path = path_of(made.task, 1, "png")
    assert (await gateway.client.get(path)).status_code == 200

    async with gateway.sessions() as session:
        await repository.update_fields(session, made.task.id, {"status": status})
        await session.commit()

    assert_the_404(await gateway.client.get(path))
    assert_the_404(await gateway.client.head(path))


async def test_every_refusal_is_the_same_404(gateway: Gateway) -> None:
    made = await three_references(gateway)
    task = made.task
    expires = input_expiry(task.created_at)
    good = path_of(task, 1, "png")
    token = good.removeprefix("/inputs/").removesuffix(".png")
    forged = ("A" if token[5] != "A" else "B").join([token[:5], token[6:]])
    old = await make_task_with_references(
        gateway.sessions, store_of(gateway), [StoredReference(PNG)]
    )
    async with gateway.sessions() as session:
        created = utcnow() - timedelta(hours=25)
        await repository.update_fields(session, old.task.id, {"created_at": created})
        await session.commit()
    assert old.keys[0] is not None
    gone = await make_task_with_references(
        gateway.sessions, store_of(gateway), [StoredReference(PNG)]
    )
    assert gone.keys[0] is not None
    await store_of(gateway).delete(gone.keys[0])
    refused = {
        "listing": ("GET", "/inputs/"),
        "listing without slash": ("GET", "/inputs"),
        "garbage": ("GET", "/inputs/hello.png"),
        "forged mac": ("GET", f"/inputs/{forged}.png"),
        "expired": ("GET", input_path(KEY, old.task.id, 0, input_expiry(created), "png")),
        "unknown task": ("GET", input_path(KEY, str(uuid.uuid4()), 1, expires, "png")),
        "no such position": ("GET", input_path(KEY, task.id, 9, expires, "png")),
        "a url reference": ("GET", input_path(KEY, task.id, 0, expires, "png")),
        "another extension": ("GET", path_of(task, 1, "jpg")),
        "object gone": ("GET", path_of(gone.task, 0, "png")),
        "post": ("POST", good),
        "put": ("PUT", good),
        "delete": ("DELETE", good),
        "options": ("OPTIONS", good),
        # A client resolves "/inputs/../x" itself; encoded, the dots reach the service.
        "traversal": ("GET", "/inputs/%2e%2e/v1/tasks"),
        "encoded slashes": ("GET", "/inputs/..%2Fv1%2Ftasks"),
        "nested": ("GET", f"/inputs/{token}/x.png"),
        "trailing slash": ("GET", f"{good}/"),
    }

    for what, (method, path) in refused.items():
        response = await gateway.client.request(method, path)
        assert response.status_code == 404, what
        assert_the_404(response)
    assert (await gateway.client.get(good)).status_code == 200


async def test_a_refused_name_reads_nothing_and_an_authentic_one_one_row(
    gateway: Gateway,
) -> None:
    made = await three_references(gateway)
    statements: list[str] = []
    engine = gateway.app.state.runtime.engine.sync_engine

    def record(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", record)
    try:
        forged = path_of(made.task, 1, "png")[:-10] + "AAAAAA.png"
        assert (await gateway.client.get(forged)).status_code == 404
        assert statements == []

        assert (await gateway.client.get(path_of(made.task, 1, "png"))).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", record)

    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1, statements
    assert "task_references" in selects[0]


async def test_refusals_are_counted_and_logged_in_one_line(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    def refused(reason: str) -> float:
        value = REGISTRY.get_sample_value("imagegen_input_refusals_total", {"reason": reason})
        return value or 0.0

    before = {reason: refused(reason) for reason in ("bad_name", "bad_token", "bad_method")}
    made = await three_references(gateway)
    good = path_of(made.task, 1, "png")

    with caplog.at_level(logging.INFO, logger="app.references.inputs"):
        for _ in range(5):
            await gateway.client.get("/inputs/nothing.png")
            await gateway.client.get(good[:-10] + "AAAAAA.png")
            await gateway.client.post(good)

    assert refused("bad_name") == before["bad_name"] + 5
    assert refused("bad_token") == before["bad_token"] + 5
    assert refused("bad_method") == before["bad_method"] + 5
    lines = [r for r in caplog.records if r.name == "app.references.inputs"]
    assert [r.message for r in lines] == ["input refused"]


async def test_a_store_outage_is_a_503_for_an_authentic_name_only(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = await three_references(gateway)

    async def failing(self: ObjectStore, key: str) -> Any:
        raise StoreError("the store is down")

    monkeypatch.setattr(ObjectStore, "open", failing)
    monkeypatch.setattr(ObjectStore, "head", failing)

    got = await gateway.client.get(path_of(made.task, 1, "png"))
    head = await gateway.client.head(path_of(made.task, 1, "png"))
    assert (got.status_code, head.status_code) == (503, 503)
    assert got.json()["error"]["code"] == "unavailable"
    assert_the_404(await gateway.client.get("/inputs/nothing.png"))
