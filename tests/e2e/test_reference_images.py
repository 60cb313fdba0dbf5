"""Reference images end to end: the service (`serve`, `worker`) and the simulator
(`simulate-provider`) as separate processes over real HTTP, the simulator downloading every
reference as the provider does. Its stats prove which bytes it received: the sha256 of each
reference download (`reference_fetches`) and of each Files API upload (`uploaded_files`).

The main flow runs in every combination of delivery (`signed-url`, `provider-files`), database
(SQLite, PostgreSQL) and store (files, S3)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from app.core.db import asyncpg_dsn
from app.tasks.models import SubmitState
from tests.conftest import auth
from tests.e2e.conftest import Processes, gateway_env, simulator_args
from tests.support.images import ImageHost, image_bytes, sha256
from tests.support.s3 import BUCKET, S3Server
from tests.support.servers import free_port, serve_app
from tests.support.waiting import eventually, until, wait_until_up

pytestmark = pytest.mark.e2e

SIGNED_URL = "signed-url"
PROVIDER_FILES = "provider-files"
TERMINAL = ("succeeded", "failed", "cancelled")


# --- the object store the gateway processes use ----------------------------------------------


@dataclass
class Storage:
    """The store of a test: its URL, the environment its processes need, and a way to read an
    object back (to show the service really used this store)."""

    url: str
    env: dict[str, str]
    read: Callable[[str], bytes]


def file_storage(directory: Path) -> Storage:
    return Storage(f"file://{directory}", {}, lambda key: (directory / key).read_bytes())


def s3_storage(server: S3Server) -> Storage:
    prefix = server.new_prefix()

    def read(key: str) -> bytes:
        body: bytes = server.client.get_object(Bucket=BUCKET, Key=f"{prefix}/{key}")["Body"].read()
        return body

    return Storage(f"s3://{BUCKET}/{prefix}", server.env(), read)


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """The same test on the file store and on S3 (moto)."""
    if request.param == "s3":
        return s3_storage(request.getfixturevalue("s3_server"))
    return file_storage(tmp_path / "images")


@pytest.fixture(params=[SIGNED_URL, PROVIDER_FILES])
def delivery(request: pytest.FixtureRequest) -> str:
    """The same test with each `IMAGEGEN_REFERENCE_DELIVERY`."""
    mode: str = request.param
    return mode


# --- the processes ----------------------------------------------------------------------------


@dataclass
class Stack:
    """A simulator process and a gateway API process (with or without its workers), and a
    client for each."""

    sim_url: str
    api_url: str
    env: dict[str, str]  # of the gateway processes, to start a `worker` with
    delivery: str
    storage: Storage
    api: httpx.AsyncClient  # the caller alpha's
    sim: httpx.AsyncClient

    async def upload(self, data: bytes) -> dict[str, Any]:
        response = await self.api.post(
            "/v1/uploads", content=data, headers={"Content-Type": "image/png"}
        )
        assert response.status_code == 201, response.text
        upload: dict[str, Any] = response.json()
        assert upload["sha256"] == sha256(data)
        # The bytes are in the store this test chose (file directory or S3 bucket).
        assert sha256(self.storage.read(f"uploads/{upload['id']}.png")) == upload["sha256"]
        return upload

    async def create(self, **body: Any) -> dict[str, Any]:
        response = await self.api.post("/v1/images/generations", json={"prompt": "a fox"} | body)
        assert response.status_code == 202, response.text
        task: dict[str, Any] = response.json()
        return task

    async def task(self, task_id: str) -> dict[str, Any]:
        response = await self.api.get(f"/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        return task

    async def finished(self, task_id: str) -> dict[str, Any]:
        """The task once terminal."""
        return await eventually(
            lambda: self.task(task_id), lambda t: t["status"] in TERMINAL, timeout=30
        )

    async def succeeded(self, task_id: str) -> dict[str, Any]:
        task = await self.finished(task_id)
        assert (task["status"], task["error"]) == ("succeeded", None), task
        return task

    async def sim_json(self, path: str) -> Any:
        response = await self.sim.get(path)
        assert response.status_code == 200, response.text
        return response.json()

    async def upstream(self, task: dict[str, Any]) -> dict[str, Any]:
        """The simulator's record of the task (its create request, its reference downloads)."""
        found: dict[str, Any] = await self.sim_json(f"/_sim/tasks/{task['provider_task_id']}")
        return found

    async def fetches(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        """The simulator's reference downloads for the task, by index."""
        stats = await self.sim_json("/_sim/stats")
        found = [f for f in stats["reference_fetches"] if f["task_id"] == task["provider_task_id"]]
        return sorted(found, key=lambda fetch: fetch["index"])

    async def uploaded_files(self) -> list[dict[str, Any]]:
        """Every file stored by the simulator's Files API, in order."""
        files: list[dict[str, Any]] = (await self.sim_json("/_sim/stats"))["uploaded_files"]
        return files

    def file_url(self, uploaded: dict[str, Any]) -> str:
        """The `file_url` the Files API answered for an upload it recorded."""
        extension = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
        return (
            f"{self.sim_url}/files-api/{uploaded['upload_path']}/"
            f"{uploaded['file_id']}.{extension[uploaded['mime_type']]}"
        )


async def start_stack(
    processes: Processes,
    database_url: str,
    storage: Storage,
    delivery: str,
    *,
    run_workers: bool = True,
    **overrides: Any,
) -> tuple[str, str, dict[str, str]]:
    """Start the simulator (tasks of 0.3 s, every reference downloaded) and a `serve` process;
    (simulator URL, API URL, the gateway processes' environment)."""
    sim_port, api_port = free_port(), free_port()
    sim_url, api_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{api_port}"
    if delivery == PROVIDER_FILES:
        overrides["provider_files_base_url"] = sim_url
    env = gateway_env(
        database_url,
        sim_url,
        api_url,
        storage_url=storage.url,
        reference_delivery=delivery,
        run_workers=run_workers,
        **overrides,
    )
    env |= storage.env
    simulator = processes.start("simulator", simulator_args(sim_port, "--duration", "0.3"), {})
    api = processes.start("api", ["serve", "--port", str(api_port)], env)
    await wait_until_up(f"{sim_url}/_sim/stats", simulator)
    await wait_until_up(f"{api_url}/healthz", api)
    return sim_url, api_url, env


@pytest.fixture
async def stack(
    processes: Processes, database_url: str, storage: Storage, delivery: str
) -> AsyncIterator[Stack]:
    """Simulator and `serve` with its workers, in this test's delivery, database and store."""
    sim_url, api_url, env = await start_stack(processes, database_url, storage, delivery)
    async with (
        httpx.AsyncClient(base_url=api_url, headers=auth(), timeout=10) as api,
        httpx.AsyncClient(base_url=sim_url, timeout=10) as sim,
    ):
        yield Stack(sim_url, api_url, env, delivery, storage, api, sim)


def unique_png() -> bytes:
    """A real PNG (Pillow) whose pixels no other test has."""
    return image_bytes("png", (24, 16), seed=secrets.randbits(64))


def assert_sent_as_delivery(stack: Stack, url: str) -> None:
    """`url` is what the delivery mode sends for an object of the store."""
    if stack.delivery == SIGNED_URL:
        assert url.startswith(f"{stack.api_url}/inputs/"), url
        assert url.endswith(".png"), url
    else:
        assert url.startswith(f"{stack.sim_url}/files-api/"), url


# --- 1. an upload reaches the provider byte for byte ------------------------------------------


async def test_an_uploaded_image_reaches_the_provider_byte_for_byte(stack: Stack) -> None:
    data = unique_png()
    upload = await stack.upload(data)

    created = await stack.create(reference_images=[{"upload_id": upload["id"]}])
    task = await stack.succeeded(created["id"])

    upstream = await stack.upstream(task)
    [sent] = upstream["request"]["image_urls"]
    assert_sent_as_delivery(stack, sent)
    [fetch] = await stack.fetches(task)
    assert (fetch["url"], fetch["ok"], fetch["sha256"]) == (sent, True, upload["sha256"])
    assert fetch["bytes"] == len(data)
    files = await stack.uploaded_files()
    if stack.delivery == PROVIDER_FILES:
        [stored] = files
        assert stored["sha256"] == upload["sha256"]
        assert stack.file_url(stored) == sent
    else:
        assert files == []
    assert task["reference_images"] == [
        {
            "source": "upload",
            "upload_id": upload["id"],
            "content_type": "image/png",
            "bytes": len(data),
            "sha256": upload["sha256"],
        }
    ]
    assert len(await stack.sim_json("/_sim/tasks")) == 1


# --- 2. a chained edit sends the first task's archived image ----------------------------------


async def test_a_chained_edit_sends_the_first_results_archived_bytes(stack: Stack) -> None:
    first = await stack.succeeded((await stack.create())["id"])
    image = first["images"][0]

    created = await stack.create(reference_images=[{"task_id": first["id"], "index": 0}])
    task = await stack.succeeded(created["id"])

    [sent] = (await stack.upstream(task))["request"]["image_urls"]
    assert_sent_as_delivery(stack, sent)
    [fetch] = await stack.fetches(task)
    assert (fetch["url"], fetch["ok"], fetch["sha256"]) == (sent, True, image["sha256"])
    # The simulator's own result for the first task: the bytes it made went round the service.
    assert (await stack.upstream(first))["image_sha256"] == image["sha256"]
    if stack.delivery == PROVIDER_FILES:
        [stored] = await stack.uploaded_files()
        assert (stored["sha256"], stack.file_url(stored)) == (image["sha256"], sent)
    assert task["reference_images"] == [
        {
            "source": "task",
            "task_id": first["id"],
            "index": 0,
            "content_type": image["content_type"],
            "bytes": image["bytes"],
            "sha256": image["sha256"],
        }
    ]


# --- 3. all three sources and an image_urls entry in one task ---------------------------------


async def test_every_source_in_one_task_reaches_the_provider_in_order(stack: Stack) -> None:
    host = ImageHost()
    given, linked = unique_png(), unique_png()
    host.add("given.png", given)
    host.add("linked.png", linked)
    async with serve_app(host.app) as host_url:
        first = await stack.succeeded((await stack.create())["id"])
        upload = await stack.upload(unique_png())

        created = await stack.create(
            image_urls=[f"{host_url}/given.png"],
            reference_images=[
                {"upload_id": upload["id"]},
                {"task_id": first["id"], "index": 0},
                {"url": f"{host_url}/linked.png"},
            ],
        )
        task = await stack.succeeded(created["id"])
        fetches = await stack.fetches(task)

    sent = (await stack.upstream(task))["request"]["image_urls"]
    assert len(sent) == 4
    assert (sent[0], sent[3]) == (f"{host_url}/given.png", f"{host_url}/linked.png")
    assert_sent_as_delivery(stack, sent[1])
    assert_sent_as_delivery(stack, sent[2])
    expected = [sha256(given), upload["sha256"], first["images"][0]["sha256"], sha256(linked)]
    assert [(f["index"], f["url"], f["ok"]) for f in fetches] == [
        (i, url, True) for i, url in enumerate(sent)
    ]
    assert [f["sha256"] for f in fetches] == expected
    if stack.delivery == PROVIDER_FILES:
        stored = await stack.uploaded_files()
        assert sorted(f["sha256"] for f in stored) == sorted(expected[1:3])
        by_sha = {f["sha256"]: stack.file_url(f) for f in stored}
        assert [by_sha[expected[1]], by_sha[expected[2]]] == sent[1:3]
    assert [(r["source"], r.get("sha256")) for r in task["reference_images"]] == [
        ("url", None),
        ("upload", expected[1]),
        ("task", expected[2]),
        ("url", None),
    ]
    assert host.hits == {"/given.png": 1, "/linked.png": 1}  # the gateway fetched none itself


# --- 4. a worker SIGKILLed between the Files API upload and the create ------------------------


@dataclass(frozen=True)
class RecordedCopy:
    """The provider's copy of a reference as recorded on its `task_references` row."""

    file_id: str
    file_url: str


REFERENCE_COPY = (
    "SELECT provider_file_id, provider_file_url FROM task_references"
    " WHERE task_id = {} AND position = 0"
)


class CreateHold(Protocol):
    """Holds a worker back at the UPDATE of `tasks` that marks the create in flight, which
    comes after the provider's copy of each reference is recorded on `task_references`."""

    async def hold(self) -> None:
        """Put the hold in place (before the worker starts)."""

    async def recorded(self, task_id: str) -> RecordedCopy | None:
        """The copy recorded for the task's first reference, if any."""

    async def holding(self, task_id: str) -> bool:
        """Whether the worker has reached the mark and been held there."""

    async def release(self) -> None:
        """Take the hold away (once the worker is dead)."""

    async def close(self) -> None: ...


class PostgresHold:
    """`LOCK TABLE tasks IN SHARE MODE` in an open transaction: the worker's UPDATE waits."""

    def __init__(self, admin: asyncpg.Connection, database: str) -> None:
        self._admin = admin
        self._database = database
        self._transaction = admin.transaction()

    @classmethod
    async def connect(cls, database_url: str) -> PostgresHold:
        admin = await asyncpg.connect(asyncpg_dsn(database_url))
        return cls(admin, make_url(database_url).database or "")

    async def hold(self) -> None:
        await self._transaction.start()
        await self._admin.execute("LOCK TABLE tasks IN SHARE MODE")

    async def recorded(self, task_id: str) -> RecordedCopy | None:
        row = await self._admin.fetchrow(REFERENCE_COPY.format("$1"), task_id)
        if row is None or row["provider_file_url"] is None:
            return None
        return RecordedCopy(row["provider_file_id"], row["provider_file_url"])

    async def holding(self, task_id: str) -> bool:
        """A session of the database waits for the lock (`pg_blocking_pids`)."""
        found = await self._admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = $1 AND pg_backend_pid() = ANY(pg_blocking_pids(pid))",
            self._database,
        )
        return int(found) > 0

    async def release(self) -> None:
        await self._transaction.rollback()

    async def close(self) -> None:
        await self._admin.close()


SQLITE_HOLD_MESSAGE = "held by the test before the create"


class SqliteHold:
    """SQLite has no lock that holds one statement of another process while the rest go on, so
    a trigger aborts the worker's UPDATE: its submit job fails there (an unexpected error,
    retried later with `jobs.last_error` set) with the copy recorded and no create sent, again
    at each retry until the trigger is dropped."""

    def __init__(self, path: str) -> None:
        self._path = path

    async def _execute(self, sql: str, *parameters: str) -> list[aiosqlite.Row]:
        # A connection per statement, in autocommit: the test never holds SQLite's write lock.
        async with aiosqlite.connect(self._path, timeout=10, isolation_level=None) as db:
            db.row_factory = aiosqlite.Row
            async with db.execute(sql, parameters) as cursor:
                return list(await cursor.fetchall())

    async def hold(self) -> None:
        await self._execute(
            "CREATE TRIGGER test_hold_create BEFORE UPDATE OF submit_state ON tasks"
            f" WHEN NEW.submit_state = '{SubmitState.IN_FLIGHT.value}'"
            f" BEGIN SELECT RAISE(ABORT, '{SQLITE_HOLD_MESSAGE}'); END"
        )

    async def recorded(self, task_id: str) -> RecordedCopy | None:
        rows = await self._execute(REFERENCE_COPY.format("?"), task_id)
        if not rows or rows[0]["provider_file_url"] is None:
            return None
        return RecordedCopy(rows[0]["provider_file_id"], rows[0]["provider_file_url"])

    async def holding(self, task_id: str) -> bool:
        """The task's submit job failed and its failure is recorded; the task is not marked."""
        rows = await self._execute(
            "SELECT jobs.last_error, tasks.submit_state FROM jobs"
            " JOIN tasks ON tasks.id = jobs.task_id"
            " WHERE jobs.task_id = ? AND jobs.kind = 'submit' AND jobs.state = 'queued'",
            task_id,
        )
        if not rows or rows[0]["last_error"] is None:
            return False
        assert rows[0]["submit_state"] == SubmitState.NONE.value, rows[0]
        return True

    async def release(self) -> None:
        await self._execute("DROP TRIGGER test_hold_create")

    async def close(self) -> None:
        pass


async def create_hold(database_url: str) -> CreateHold:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return SqliteHold(url.database or "")
    return await PostgresHold.connect(database_url)


async def test_a_worker_killed_after_the_files_api_upload_submits_once_with_that_copy(
    processes: Processes, database_url: str, storage: Storage
) -> None:
    sim_url, api_url, env = await start_stack(
        processes,
        database_url,
        storage,
        PROVIDER_FILES,
        run_workers=False,
        job_lease_seconds=1,
    )
    holder = await create_hold(database_url)
    try:
        async with (
            httpx.AsyncClient(base_url=api_url, headers=auth(), timeout=10) as api,
            httpx.AsyncClient(base_url=sim_url, timeout=10) as sim,
        ):
            stack = Stack(sim_url, api_url, env, PROVIDER_FILES, storage, api, sim)
            upload = await stack.upload(unique_png())
            created = await stack.create(reference_images=[{"upload_id": upload["id"]}])

            await holder.hold()
            first = processes.start("worker", ["worker"], env)
            copy = await eventually(
                lambda: holder.recorded(created["id"]),
                lambda found: found is not None,
                what="the provider's copy recorded on task_references",
            )
            assert copy is not None
            await until(lambda: holder.holding(created["id"]), what="the worker held at the mark")
            assert await stack.sim_json("/_sim/tasks") == []  # no create was sent
            first.kill()
            await holder.release()
            second = processes.start("worker", ["worker"], env)

            task = await stack.finished(created["id"])
            upstream = await stack.sim_json("/_sim/tasks")
            files = await stack.uploaded_files()
            fetches = await stack.fetches(task)
    finally:
        await holder.close()

    assert (task["status"], task["error"]) == ("succeeded", None)
    assert [item["id"] for item in upstream] == [task["provider_task_id"]]
    [stored] = files  # uploaded once, by the killed worker; the second reused its record
    assert (stored["file_id"], stored["sha256"]) == (copy.file_id, upload["sha256"])
    assert upstream[0]["request"]["image_urls"] == [copy.file_url]
    assert stack.file_url(stored) == copy.file_url
    [fetch] = fetches
    assert (fetch["url"], fetch["ok"], fetch["sha256"]) == (copy.file_url, True, upload["sha256"])
    uploaded_line = "reference image uploaded to the provider's Files API"
    assert uploaded_line in first.output()
    assert uploaded_line not in second.output()
    assert "submitted upstream" in second.output()
    if isinstance(holder, SqliteHold):
        assert SQLITE_HOLD_MESSAGE in first.output()  # the worker stopped at the trigger
        assert SQLITE_HOLD_MESSAGE not in second.output()


# --- 5. a reference the provider cannot download fails the task --------------------------------


async def test_a_reference_the_provider_cannot_download_fails_the_task_naming_it(
    processes: Processes, database_url: str, tmp_path: Path
) -> None:
    storage = file_storage(tmp_path / "images")
    sim_url, api_url, env = await start_stack(processes, database_url, storage, SIGNED_URL)
    host = ImageHost()
    async with (
        serve_app(host.app) as host_url,
        httpx.AsyncClient(base_url=api_url, headers=auth(), timeout=10) as api,
        httpx.AsyncClient(base_url=sim_url, timeout=10) as sim,
    ):
        stack = Stack(sim_url, api_url, env, SIGNED_URL, storage, api, sim)
        upload = await stack.upload(unique_png())
        missing = f"{host_url}/gone.png"

        created = await stack.create(
            reference_images=[{"upload_id": upload["id"]}, {"url": missing}]
        )
        task = await stack.finished(created["id"])
        fetches = await stack.fetches(task)

    assert task["status"] == "failed"
    assert task["error"]["code"] == "image_processing_error"
    assert missing in task["error"]["message"]
    assert "HTTP 404" in task["error"]["message"]
    assert [(f["index"], f["ok"], f["status"]) for f in fetches] == [
        (0, True, 200),
        (1, False, 404),
    ]
    assert fetches[0]["sha256"] == upload["sha256"]
    assert host.hits == {"/gone.png": 1}
    assert task["images"] == []
