"""Third parties: hostile result URLs through the whole path, with private networks forbidden.

The fetcher's own refusals (every address form, DNS rebinding, redirects, schemes, sizes, magic
bytes) are tested in tests/archive/test_fetch_ssrf.py and test_fetch_sniff.py, notify URLs in
tests/notify/test_ssrf.py. Here the gateway runs with its workers against a fake provider over
HTTP: a task is submitted, its callback claims completion, the provider's query names the result
URL, and the archive job meets it. Each hostile URL fails its task with `archive_failed` and a
message saying why, the internal target is never contacted, and the worker goes on to archive
the next task. A hostile URL that only a callback names is never fetched at all.

The network is the fetch tests' double: public.test is a TLS image server reached through a
public-looking address (FakeDns + Dialer), internal.test resolves to loopback, and the canary
is an internal server that would serve a PNG to anyone who connected."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

import app.runtime
from app.archive.fetch import create_fetch_client
from app.core.safe_http import FetchPolicy
from app.tasks.events import EventKind
from tests.archive.test_fetch_support import (
    IMAGES,
    PUBLIC_IP,
    Dialer,
    FakeDns,
    ImageServer,
    RawServer,
    canary,
    client_ssl_context,
    respond,
    serve,
)
from tests.bad_input.conftest import settings
from tests.conftest import auth
from tests.support.callbacks import callback_path
from tests.support.gateway import Gateway, running_gateway
from tests.support.servers import serve_app
from tests.support.waiting import eventually

MAX_IMAGE_BYTES = 256 * 1024


@dataclass
class FakeProvider:
    """Accepts every create; each task's query answers `completed` with the URL set for its
    prompt."""

    results: dict[str, str] = field(default_factory=dict)  # prompt -> result URL
    prompts: dict[str, str] = field(default_factory=dict)  # upstream id -> prompt
    numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] == "POST":
            upstream = f"task-unified-{next(self.numbers)}-hostile"
            self.prompts[upstream] = json.loads(body)["prompt"]
            answer = {"id": upstream, "status": "pending", "progress": 0}
        else:
            upstream = scope["path"].rsplit("/", 1)[1]
            url = self.results[self.prompts[upstream]]
            answer = {"id": upstream, "status": "completed", "progress": 100, "results": [url]}
        await respond(send, 200, json.dumps(answer).encode(), [], "application/json")


@dataclass
class World:
    gateway: Gateway
    provider: FakeProvider
    public: str  # https://public.test:PORT
    images: ImageServer
    internal: RawServer
    dialer: Dialer

    def url(self, template: str) -> str:
        return template.format(public=self.public, canary=self.internal.port)

    async def run(self, prompt: str, *, query_url: str, callback_url: str) -> dict[str, Any]:
        """Create a task, claim completion by callback with `callback_url`, and let the
        provider's query name `query_url`; the task once terminal."""
        self.provider.results[prompt] = query_url
        created = await self.gateway.client.post(
            "/v1/images/generations", json={"prompt": prompt}, headers=auth()
        )
        task_id = created.json()["id"]
        row = await eventually(
            lambda: self.gateway.task_row(task_id), lambda row: row.provider_task_id is not None
        )
        content = json.dumps(
            {"id": row.provider_task_id, "status": "completed", "results": [callback_url]}
        )
        answer = await self.gateway.client.post(callback_path(row), content=content)
        assert answer.json() == {"status": "accepted"}
        task: dict[str, Any] = await eventually(
            lambda: self.task(task_id),
            lambda task: task["status"] in ("succeeded", "failed"),
            timeout=30,
        )
        return task

    async def task(self, task_id: str) -> dict[str, Any]:
        task: dict[str, Any] = (
            await self.gateway.client.get(f"/v1/tasks/{task_id}", headers=auth())
        ).json()
        return task


@pytest.fixture
async def world(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[World]:
    dns = FakeDns({"public.test": [[PUBLIC_IP]], "internal.test": [["127.0.0.1"]]})
    dialer = Dialer()

    def fetch_client(policy: FetchPolicy) -> httpx.AsyncClient:
        return create_fetch_client(
            policy, resolver=dns, network_backend=dialer, ssl_context=client_ssl_context()
        )

    monkeypatch.setattr(app.runtime, "create_fetch_client", fetch_client)
    images, provider = ImageServer(), FakeProvider()
    async with (
        canary() as internal,
        serve(images, tls_dir=tmp_path) as port,
        serve_app(provider) as provider_url,
    ):
        values = settings(
            database_url,
            provider_base_url=provider_url,
            public_base_url="https://gw.example.com",
            allow_private_networks=False,
            run_workers=True,
            poll_after_seconds=3600,  # only the callback brings the confirming poll forward
            max_image_bytes=MAX_IMAGE_BYTES,
        )
        async with running_gateway(values) as gateway:
            yield World(gateway, provider, f"https://public.test:{port}", images, internal, dialer)
    assert internal.connections == 0


GOOD = "{public}/img/png"
# (case, the URL the provider's query names, what the task's error message says)
HOSTILE: list[tuple[str, str, str]] = [
    ("loopback", "https://127.0.0.1:{canary}/i.png", "private or internal"),
    ("IPv6 loopback", "https://[::1]:{canary}/i.png", "private or internal"),
    ("IPv4-mapped loopback", "https://[::ffff:127.0.0.1]:{canary}/i.png", "private or internal"),
    ("link-local metadata", "https://169.254.169.254/latest/meta-data/", "private or internal"),
    ("private 10/8", "https://10.0.0.1/i.png", "private or internal"),
    ("localhost", "https://localhost:{canary}/i.png", "points to a local host"),
    ("decimal loopback", "https://2130706433:{canary}/i.png", "private or internal"),
    ("name resolving to loopback", "https://internal.test:{canary}/i.png", "forbidden addresses"),
    ("redirect to loopback", "{public}/to?location=https://127.0.0.1:{canary}/x", "private"),
    ("redirect to metadata", "{public}/to?location=https://169.254.169.254/", "private"),
    ("plain http", "http://public.test:{canary}/i.png", "must use https"),
    ("file scheme", "file:///etc/passwd", "must use https"),
    ("ftp scheme", "ftp://public.test/i.png", "must use https"),
    ("credentials in the URL", "https://user:pw@public.test/i.png", "credentials"),
    ("HTML instead of an image", "{public}/body/html", "not PNG, JPEG or WebP"),
    ("ZIP instead of an image", "{public}/body/zip", "not PNG, JPEG or WebP"),
    ("body over the cap", "{public}/stream?size=1000000", f"larger than {MAX_IMAGE_BYTES}"),
    ("declared over the cap", "{public}/declared?length=1000000", f"more than {MAX_IMAGE_BYTES}"),
    ("gzip-encoded", "{public}/gzip", "gzip-encoded"),
]


async def test_hostile_result_urls_fail_their_tasks_and_the_worker_goes_on(world: World) -> None:
    tasks = await asyncio.gather(
        *(
            world.run(case, query_url=world.url(url), callback_url=world.url(url))
            for case, url, _ in HOSTILE
        )
    )
    after = await world.run("after", query_url=world.url(GOOD), callback_url=world.url(GOOD))

    outcomes = {
        case: (task["status"], task["error"]["code"])
        for (case, _, _), task in zip(HOSTILE, tasks, strict=True)
    }
    assert outcomes == {case: ("failed", "archive_failed") for case, _, _ in HOSTILE}
    unclear = {
        case: task["error"]["message"]
        for (case, _, says), task in zip(HOSTILE, tasks, strict=True)
        if not task["error"]["message"].startswith("image 0: ")
        or says not in task["error"]["message"]
    }
    assert unclear == {}
    assert all(task["images"] == [] for task in tasks)
    assert world.internal.connections == 0
    # the worker lives on: the next task is archived
    assert after["status"] == "succeeded", after
    assert after["images"][0]["sha256"] == hashlib.sha256(IMAGES["png"]).hexdigest()


async def test_a_hostile_url_only_a_callback_names_is_never_fetched(world: World) -> None:
    hostile = world.url("https://internal.test:{canary}/latest/meta-data")

    task = await world.run("lied", query_url=world.url(GOOD), callback_url=hostile)

    assert task["status"] == "succeeded"
    assert task["images"][0]["sha256"] == hashlib.sha256(IMAGES["png"]).hexdigest()
    assert world.internal.connections == 0
    assert all(host == PUBLIC_IP for host, _ in world.dialer.attempts)
    events = (
        await world.gateway.client.get(f"/v1/tasks/{task['id']}/events", headers=auth())
    ).json()["data"]
    assert [e["outcome"] for e in events if e["kind"] == EventKind.ARCHIVE] == ["stored"]
