"""A `serve` process killed with SIGKILL in the middle of an upload: no row, no object anyone
can read; the file store's staging file is removed by the orphan sweep once it is old."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from app.core.clock import utcnow
from app.core.db import create_engine, create_sessionmaker
from app.storage.store import ObjectStore
from app.uploads.models import Upload
from app.uploads.sweeping import ORPHAN_AGE, sweep_orphans
from tests.conftest import auth
from tests.e2e.conftest import Processes, gateway_env
from tests.support.s3 import BUCKET, S3Server
from tests.support.servers import free_port
from tests.support.waiting import wait_until_up
from tests.uploads.images import noise_png

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024


@pytest.mark.parametrize("store", ["file", "s3"])
async def test_an_upload_killed_midway_leaves_no_row_and_no_object(
    processes: Processes,
    database_url: str,
    s3_server: S3Server,
    tmp_path: Path,
    store: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = (
        f"s3://{BUCKET}/{s3_server.new_prefix()}"
        if store == "s3"
        else f"file://{tmp_path / 'images'}"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = gateway_env(database_url, "http://127.0.0.1:9", url, storage_url=storage)
    api = processes.start("api", ["serve", "--port", str(port)], env | s3_server.env())
    await wait_until_up(f"{url}/healthz", api)
    data = noise_png(30 * MIB)

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(data), MIB):
            if start == 20 * MIB:  # past the store's first part: a multipart upload is open
                api.kill()
            yield data[start : start + MIB]

    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.TransportError):
            await client.post(
                f"{url}/v1/uploads",
                content=body(),
                headers=auth() | {"Content-Type": "image/png"},
                timeout=30,
            )

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    objects = ObjectStore.from_url(storage)
    engine = create_engine(database_url)
    try:
        sessions = create_sessionmaker(engine)
        async with sessions() as session:
            rows = await session.scalar(select(func.count()).select_from(Upload))
        keys = await objects.list_keys()
        staged = sorted(p.name for p in (tmp_path / "images").rglob("*#*"))
        young = await sweep_orphans(sessions, objects, utcnow())
        old = await sweep_orphans(sessions, objects, utcnow() + ORPHAN_AGE + timedelta(minutes=1))
    finally:
        await engine.dispose()

    assert (rows, keys) == (0, [])
    if store == "file":  # obstore's staging file of the multipart upload, seen by no listing
        assert len(staged) == 1
        assert staged[0].endswith(".png#1")
        assert (young.orphans, old.orphans) == (0, 1)
        assert list((tmp_path / "images").rglob("*#*")) == []
    else:  # S3 keeps the incomplete multipart upload until a bucket lifecycle rule ends it
        assert (young.orphans, old.orphans) == (0, 0)
