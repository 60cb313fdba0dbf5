"""Liveness and readiness: each failing part is named."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from app.core.config import Settings
from tests.conftest import settings_values
from tests.support.gateway import running_gateway
from tests.support.proxy import cuttable


async def test_ready_when_database_is_at_head_and_store_writable(
    database_url: str, tmp_path: Path
) -> None:
    settings = Settings(**settings_values(database_url, storage_url=f"file://{tmp_path}/img"))
    async with running_gateway(settings) as gateway:
        alive = await gateway.client.get("/healthz")
        ready = await gateway.client.get("/readyz")

    assert (alive.status_code, alive.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    assert list((tmp_path / "img").rglob("*")) == []  # the probe object was removed


async def test_unready_when_the_schema_is_behind(sqlite_database_url: str) -> None:
    async with running_gateway(Settings(**settings_values(sqlite_database_url))) as gateway:
        async with gateway.sessions() as session:
            await session.execute(text("UPDATE alembic_version SET version_num = 'old'"))
            await session.commit()

        ready = await gateway.client.get("/readyz")

    assert ready.status_code == 503
    assert ready.json()["failing"] == "database"
    assert "migrate" in ready.json()["reason"]


async def test_unready_when_the_database_is_unreachable(pg_database_url: str) -> None:
    async with (
        cuttable(pg_database_url) as proxy,
        running_gateway(Settings(**settings_values(proxy.url))) as gateway,
    ):
        proxy.cut()
        ready = await gateway.client.get("/readyz")
        proxy.restore()
        again = await gateway.client.get("/readyz")

    assert (ready.status_code, ready.json()["failing"]) == (503, "database")
    assert again.status_code == 200


async def test_unready_when_the_store_refuses_writes(
    sqlite_database_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        **settings_values(sqlite_database_url, storage_url=f"file://{tmp_path}/img")
    )
    async with running_gateway(settings) as gateway:
        root = tmp_path / "img"
        for child in root.iterdir():
            child.rmdir()
        root.rmdir()
        root.write_bytes(b"")  # the store's directory is now a file

        ready = await gateway.client.get("/readyz")

    assert ready.status_code == 503
    assert ready.json()["failing"] == "store"


async def test_unready_when_the_database_was_never_migrated(sqlite_database_url: str) -> None:
    async with running_gateway(Settings(**settings_values(sqlite_database_url))) as gateway:
        async with gateway.sessions() as session:
            await session.execute(text("DROP TABLE alembic_version"))
            await session.commit()

        ready = await gateway.client.get("/readyz")

    assert ready.status_code == 503
    assert ready.json() == {
        "status": "unavailable",
        "failing": "database",
        "reason": "no schema; run `imagegen-gateway migrate`",
    }
