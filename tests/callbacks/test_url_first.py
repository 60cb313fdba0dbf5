"""The callback URL is checked before the body: refusals cost no parsing and no log line each;
the body has a deadline; the inbox keeps a bounded number of bodies per task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from app.callbacks import endpoint
from app.callbacks import service as callback_service
from app.callbacks.models import CallbackDelivery
from app.core.config import Settings
from app.main import create_app
from app.workers.models import JobKind, JobState
from tests.conftest import settings_values
from tests.support.callbacks import accepted_task, body, callback_path
from tests.support.gateway import Gateway, running_gateway
from tests.support.servers import serve_app

PROVIDER_ID = "task-unified-1-abcd1234"
JSON = {"Content-Type": "application/json"}
MIB = 1024 * 1024
# A task id the service never made, in the path form without a nonce (the task is looked up) and
# with one (refused from the path alone: 401, the token cannot be right).
UNKNOWN = "/callbacks/evolink/00000000-0000-0000-0000-000000000000/" + "A" * 43
UNKNOWN_WITH_NONCE = UNKNOWN.replace("/AAAA", "/" + "0" * 32 + "/AAAA", 1)
# How long a test waits for an answer that must come (a bound for a failure, not a timing).
PATIENCE = 10.0


@pytest.fixture
async def gateway(database_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(Settings(**settings_values(database_url))) as gateway:
        yield gateway


def wrong_token(path: str) -> str:
    return path[:-4] + ("AAAA" if not path.endswith("AAAA") else "BBBB")


def refusals(reason: str) -> float:
    labels = {"reason": reason}
    return REGISTRY.get_sample_value("imagegen_callback_refusals_total", labels) or 0.0


async def test_a_mebibyte_to_a_wrong_url_is_refused_without_parsing_or_a_log_line_each(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    task = await accepted_task(gateway.sessions, PROVIDER_ID)
    content = body(PROVIDER_ID, "completed")
    huge = content[:-1] + b" " * (MIB - len(content)) + b"}"

    def no_parsing(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("a refused body was parsed")

    monkeypatch.setattr("app.callbacks.service.json.loads", no_parsing)
    monkeypatch.setattr(callback_service, "parse_task", no_parsing)
    bad_before, unknown_before = refusals("bad_token"), refusals("unknown_task")

    with caplog.at_level(logging.INFO):
        answers = [
            (await gateway.client.post(path, content=huge, headers=JSON)).status_code
            for path in [wrong_token(callback_path(task))] * 5
            + [UNKNOWN] * 5
            + [UNKNOWN_WITH_NONCE] * 5
        ]

    assert len(huge) == MIB
    assert answers == [401] * 5 + [404] * 5 + [401] * 5
    counted = refusals("bad_token") - bad_before, refusals("unknown_task") - unknown_before
    assert counted == (10, 5)
    # At most one line for the lot (rate-limited), none per request.
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) <= 1
    assert await gateway.count(CallbackDelivery) == 0


@contextlib.asynccontextmanager
async def served(database_url: str) -> AsyncIterator[tuple[Gateway, str]]:
    """The gateway on a real uvicorn server in this loop; its sessions for the rows."""
    app = create_app(Settings(**settings_values(database_url)))
    async with serve_app(app) as url:
        yield Gateway(app=app, client=None), url  # type: ignore[arg-type]


async def post_head(url: str, path: str, length: int) -> tuple[asyncio.StreamReader, Any]:
    """Send only the head of a POST declaring `length` bytes of body."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
    )
    await writer.drain()
    return reader, writer


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def test_over_http_the_refusal_comes_before_the_body_is_sent(database_url: str) -> None:
    async with served(database_url) as (gateway, url):
        task = await accepted_task(gateway.sessions, PROVIDER_ID)

        for path, expected in [
            (wrong_token(callback_path(task)), 401),
            (UNKNOWN, 404),
            (UNKNOWN_WITH_NONCE, 401),
        ]:
            reader, writer = await post_head(url, path, MIB)
            try:
                # Not one byte of the body is sent: the answer must not wait for it.
                status, _headers = await asyncio.wait_for(read_head(reader), PATIENCE)
            finally:
                writer.close()
            assert status == expected


async def test_a_trickled_body_gets_408_at_its_deadline(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(endpoint, "BODY_WITHIN_SECONDS", 0.5, raising=False)
    async with served(database_url) as (gateway, url):
        task = await accepted_task(gateway.sessions, PROVIDER_ID)
        content = body(PROVIDER_ID, "processing", 40)
        reader, writer = await post_head(url, callback_path(task), len(content))

        async def trickle() -> None:
            for byte in content[:-1]:  # never the last byte
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)  # a slow client, not a wait on the server

        trickling = asyncio.create_task(trickle())
        try:
            status, headers = await asyncio.wait_for(read_head(reader), PATIENCE)
        finally:
            trickling.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await trickling
            writer.close()

        assert (status, headers["connection"]) == (408, "close")
        async with gateway.sessions() as session:
            assert (await session.scalars(select(CallbackDelivery))).all() == []
        assert (await gateway_task_status(gateway, task.id)) == ("pending", 0)


async def gateway_task_status(gateway: Gateway, task_id: str) -> tuple[str, int]:
    row = await gateway.task_row(task_id)
    return row.status, row.progress


async def test_the_inbox_keeps_a_bounded_number_of_bodies_per_task(gateway: Gateway) -> None:
    task = await accepted_task(gateway.sessions, PROVIDER_ID)
    limit = 16  # MAX_BODIES_PER_TASK, written out so that the test stands on its own
    path = callback_path(task)

    kept = [
        await gateway.client.post(path, content=body(PROVIDER_ID, "processing", p), headers=JSON)
        for p in range(1, limit + 1)
    ]
    beyond = await gateway.client.post(
        path, content=body(PROVIDER_ID, "processing", 50), headers=JSON
    )
    final = await gateway.client.post(path, content=body(PROVIDER_ID, "completed"), headers=JSON)
    repeat = await gateway.client.post(
        path, content=body(PROVIDER_ID, "processing", 1), headers=JSON
    )

    assert [r.json() for r in kept] == [{"status": "accepted"}] * limit
    # Authentic deliveries are acknowledged and applied, stored or not.
    assert (beyond.status_code, final.status_code) == (200, 200)
    assert repeat.json() == {"status": "duplicate"}
    assert await gateway.count(CallbackDelivery) == limit
    row = await gateway.task_row(task.id)
    assert (row.status, row.progress) == ("processing", 50)
    assert row.final_claimed_at is not None
    polls = [
        j
        for j in await gateway.jobs(task.id)
        if (j.kind, j.state) == (JobKind.POLL, JobState.QUEUED)
    ]
    assert len(polls) == 1  # the confirmation the final callback asks for
