"""A gateway with a few real tasks, and a snapshot of every table to prove nothing changed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.core.config import Settings
from app.models import Base
from tests.conftest import ALPHA_KEY, BETA_KEY, auth, settings_values
from tests.support.gateway import Gateway, running_gateway

CREATE = "/v1/images/generations"
JSON = {"Content-Type": "application/json"}
KEY = "bad-input-key-1"  # the idempotency key of the seeded task


@dataclass
class Seeded:
    """A running gateway with tasks of two callers, and clients that never raise app errors."""

    gateway: Gateway
    client: httpx.AsyncClient  # answers a 500 instead of raising, so a bug shows as its status
    mine: dict[str, Any]  # alpha's task, created with Idempotency-Key KEY
    theirs: dict[str, Any]  # beta's task

    async def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table."""
        tables: dict[str, list[tuple[Any, ...]]] = {}
        async with self.gateway.sessions() as session:
            for table in Base.metadata.sorted_tables:
                rows = (await session.execute(select(table))).all()
                tables[table.name] = sorted((tuple(row) for row in rows), key=repr)
        return tables

    async def key_still_works(self, key: str) -> None:
        """A key used only by refused requests makes a task, once; KEY still replays."""
        headers = auth() | {"Idempotency-Key": key}
        first = await self.client.post(CREATE, json={"prompt": "after"}, headers=headers)
        replay = await self.client.post(
            CREATE, json={"prompt": "p"}, headers=auth() | {"Idempotency-Key": KEY}
        )
        assert first.status_code == 202, first.text
        assert (replay.status_code, replay.json()["id"]) == (200, self.mine["id"])


def settings(database_url: str, **overrides: Any) -> Settings:
    """Settings of the gateway under test (no workers: nothing moves unless a request does)."""
    return Settings(**(settings_values(database_url) | overrides))


@pytest.fixture
async def seeded(database_url: str) -> AsyncIterator[Seeded]:
    """The gateway on SQLite and PostgreSQL, alpha's task and beta's task."""
    async with running_gateway(settings(database_url)) as gateway:
        transport = httpx.ASGITransport(app=gateway.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            mine = await client.post(
                CREATE, json={"prompt": "p"}, headers=auth(ALPHA_KEY) | {"Idempotency-Key": KEY}
            )
            theirs = await client.post(CREATE, json={"prompt": "b"}, headers=auth(BETA_KEY))
            assert mine.status_code == theirs.status_code == 202
            yield Seeded(gateway, client, mine.json(), theirs.json())


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The `error` object of an answer, checking the one error shape of the API."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"], body
    error: dict[str, Any] = body["error"]
    return error
