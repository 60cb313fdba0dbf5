"""The object store against a temp directory, memory, and a real S3 server (moto)."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import httpx
import pytest
from moto.server import ThreadedMotoServer

from app.storage.store import ObjectStore, StoreError
from tests.support.waiting import until

BUCKET = "imagegen-test"
FAKE_KEY_ID = "AKIAFAKEFAKEFAKE0000"
FAKE_SECRET = "fake-secret-never-in-messages-0123456789"
KEY = "tasks/0f3a/images/0"
PNG = "image/png"
MIB = 1024 * 1024
PORT_FILE_VARIABLE = "STORE_TEST_MOTO_PORT_FILE"


@dataclass
class Moto:
    """A running moto S3 server with one bucket."""

    endpoint: str
    s3: Any  # boto3's S3 client


@dataclass
class Target:
    """A store under test and what it takes to look behind its back."""

    store: ObjectStore
    kind: str
    root: Path | None = None
    prefix: str = ""
    moto: Moto | None = None

    async def residue(self) -> list[str]:
        """Everything the store holds: keys, files on disk, unfinished multipart uploads."""
        found = set(await self.store.list_keys())
        if self.root is not None:
            found |= {str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file()}
        if self.moto is not None:
            uploads = self.moto.s3.list_multipart_uploads(Bucket=BUCKET, Prefix=self.prefix)
            found |= {f"upload:{u['Key']}" for u in uploads.get("Uploads", [])}
        return sorted(found)

    async def partly_uploaded(self) -> bool:
        """Whether some bytes of an unfinished upload already sit in the backend, hidden."""
        if self.root is not None:
            return any("#" in p.name and p.stat().st_size > 0 for p in self.root.rglob("*"))
        if self.moto is not None:
            uploads = self.moto.s3.list_multipart_uploads(Bucket=BUCKET, Prefix=self.prefix)
            return any(
                self.moto.s3.list_parts(Bucket=BUCKET, Key=u["Key"], UploadId=u["UploadId"]).get(
                    "Parts"
                )
                for u in uploads.get("Uploads", [])
            )
        return True  # memory:// keeps unfinished parts out of reach


def _closed(host: str, port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) != 0


@pytest.fixture(scope="session")
def moto() -> Iterator[Moto]:
    """moto in server mode on a free loopback port, stopped (and checked) at session end."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    if PORT_FILE_VARIABLE in os.environ:
        Path(os.environ[PORT_FILE_VARIABLE]).write_text(str(port))
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=FAKE_KEY_ID,
        aws_secret_access_key=FAKE_SECRET,
    )
    s3.create_bucket(Bucket=BUCKET)
    yield Moto(endpoint=endpoint, s3=s3)
    s3.close()
    server.stop()
    assert _closed(host, port), "moto still accepts connections after stop()"


@pytest.fixture
def aws_env(moto: Moto, monkeypatch: pytest.MonkeyPatch) -> Moto:
    """The standard AWS variables pointing at moto, nothing else from the host."""
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    return moto


@pytest.fixture(params=["file", "memory", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """One store of each kind, empty."""
    return _target(request, tmp_path, request.param)


@pytest.fixture(params=["file", "s3"])
def durable_target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """One store of each kind that keeps objects outside this process, empty."""
    return _target(request, tmp_path, request.param)


def _target(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> Target:
    if kind == "file":
        root = tmp_path / "images"
        return Target(ObjectStore.from_url(f"file://{root}"), kind, root=root)
    if kind == "memory":
        return Target(ObjectStore.from_url("memory://"), kind)
    moto: Moto = request.getfixturevalue("aws_env")
    prefix = f"run-{uuid.uuid4().hex}"
    return Target(ObjectStore.from_url(f"s3://{BUCKET}/{prefix}"), kind, prefix=prefix, moto=moto)


def pattern(size: int, seed: int = 7) -> bytes:
    """Deterministic bytes that no part of the store could compress or dedupe."""
    return random.Random(seed).randbytes(size)


async def chunked(data: bytes, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    """`data` as a stream of `chunk`-byte pieces."""
    for start in range(0, len(data), chunk):
        yield data[start : start + chunk]


async def read_all(target: Target, key: str = KEY) -> bytes | None:
    """The object's bytes through `open`, or None when absent."""
    opened = await target.store.open(key)
    if opened is None:
        return None
    stored, chunks = opened
    data = b"".join([chunk async for chunk in chunks])
    assert stored.size == len(data)
    return data


class Boom(Exception):
    """The source stream failed (say, the download broke)."""


@pytest.mark.parametrize(
    ("size", "chunk"),
    [(0, 1), (1, 1), (300_000, 7_001), (11 * MIB + 5, 256 * 1024 + 3)],
    ids=["empty", "one-byte", "small", "multipart"],
)
async def test_round_trip(target: Target, size: int, chunk: int) -> None:
    data = pattern(size)
    stored = await target.store.put_stream(KEY, chunked(data, chunk), content_type=PNG)
    assert (stored.key, stored.size) == (KEY, size)
    assert await read_all(target) == data
    head = await target.store.head(KEY)
    assert head is not None
    assert (head.key, head.size, head.etag) == (KEY, size, stored.etag)
    assert await target.store.list_keys() == [KEY]
    if target.kind == "s3" and size > 10 * MIB:
        assert head.etag is not None
        assert head.etag.strip('"').endswith("-3"), "three 5 MiB parts: a multipart upload"


async def test_content_type_recorded_where_supported(target: Target) -> None:
    stored = await target.store.put_stream(KEY, chunked(b"\x89PNG..."), content_type=PNG)
    head = await target.store.head(KEY)
    opened = await target.store.open(KEY)
    assert head is not None
    assert opened is not None
    expected = None if target.kind == "file" else PNG  # a directory keeps no metadata
    assert stored.content_type == head.content_type == opened[0].content_type == expected


async def test_overwrite_leaves_one_object_with_the_new_bytes(target: Target) -> None:
    await target.store.put_stream(KEY, chunked(pattern(6 * MIB, seed=1)), content_type=PNG)
    await target.store.put_stream(KEY, chunked(pattern(1000, seed=2)), content_type="image/jpeg")
    assert await read_all(target) == pattern(1000, seed=2)
    assert await target.residue() == [KEY]


async def test_concurrent_writers_of_one_key_leave_one_whole_object(target: Target) -> None:
    versions = [pattern(2 * MIB + n, seed=n) for n in range(3)]
    await asyncio.gather(
        *(target.store.put_stream(KEY, chunked(v), content_type=PNG) for v in versions)
    )
    assert await read_all(target) in versions
    assert await target.residue() == [KEY]


async def test_missing_key(target: Target) -> None:
    assert await target.store.head(KEY) is None
    assert await target.store.open(KEY) is None
    await target.store.delete(KEY)  # absent is fine


async def test_delete(target: Target) -> None:
    await target.store.put_stream(KEY, chunked(b"x"), content_type=PNG)
    await target.store.delete(KEY)
    assert await target.store.head(KEY) is None
    assert await target.store.list_keys() == []


async def test_list_keys_under_a_prefix(target: Target) -> None:
    for key in ("tasks/a/images/0", "tasks/a/images/1", "tasks/ab/images/0"):
        await target.store.put_stream(key, chunked(b"x"), content_type=PNG)
    assert await target.store.list_keys("tasks/a") == ["tasks/a/images/0", "tasks/a/images/1"]
    assert len(await target.store.list_keys()) == 3


async def test_source_error_mid_stream_leaves_nothing(target: Target) -> None:
    async def source() -> AsyncIterator[bytes]:
        async for chunk in chunked(pattern(7 * MIB)):
            yield chunk
        await until(target.partly_uploaded, what="a part uploaded", timeout=10, interval=0.01)
        assert await target.store.head(KEY) is None, "an unfinished upload is invisible"
        assert await target.store.list_keys() == []
        raise Boom

    with pytest.raises(Boom):
        await target.store.put_stream(KEY, source(), content_type=PNG)
    assert await target.store.head(KEY) is None
    assert await target.residue() == []


async def test_interrupted_overwrite_keeps_the_previous_object(target: Target) -> None:
    await target.store.put_stream(KEY, chunked(pattern(1000)), content_type=PNG)

    async def source() -> AsyncIterator[bytes]:
        async for chunk in chunked(pattern(6 * MIB, seed=3)):
            yield chunk
        raise Boom

    with pytest.raises(Boom):
        await target.store.put_stream(KEY, source(), content_type=PNG)
    assert await read_all(target) == pattern(1000)
    assert await target.residue() == [KEY]


async def test_cancelled_while_the_source_waits_leaves_nothing(target: Target) -> None:
    stalled = asyncio.Event()
    closed: list[bool] = []

    async def source() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunked(pattern(7 * MIB)):
                yield chunk
            await until(target.partly_uploaded, what="a part uploaded", timeout=10, interval=0.01)
            stalled.set()
            await asyncio.Event().wait()  # a download that hangs
            yield b"never"
        finally:
            closed.append(True)

    upload = asyncio.create_task(target.store.put_stream(KEY, source(), content_type=PNG))
    await stalled.wait()
    upload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await upload
    assert closed == [True]
    assert await target.store.head(KEY) is None
    assert await target.residue() == []


async def test_cancelled_while_bytes_flow_leaves_nothing(target: Target) -> None:
    closed: list[bool] = []
    upload: asyncio.Task[Any] | None = None

    async def endless() -> AsyncIterator[bytes]:
        sent = 0
        try:
            while True:
                if sent == 6 * MIB:
                    assert upload is not None
                    upload.cancel()  # lands wherever the upload next waits
                yield pattern(64 * 1024, seed=sent)
                sent += 64 * 1024
        finally:
            closed.append(True)

    upload = asyncio.create_task(target.store.put_stream(KEY, endless(), content_type=PNG))
    with pytest.raises(asyncio.CancelledError):
        await upload
    assert closed == [True]
    assert await target.store.head(KEY) is None
    assert await target.residue() == []


async def test_check_writable(target: Target) -> None:
    await target.store.check_writable()
    assert await target.residue() == []


async def test_check_writable_fails_on_a_missing_bucket(aws_env: Moto) -> None:
    store = ObjectStore.from_url("s3://no-such-bucket-here/prefix")
    with pytest.raises(StoreError) as caught:
        await store.check_writable()
    message = str(caught.value)
    assert "write probe" in message
    assert "NoSuchBucket" in message
    assert FAKE_SECRET not in message


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory this process cannot write to, even as root (then via `chattr +i`)."""
    path = tmp_path / "read-only"
    path.mkdir()
    path.chmod(0o555)
    immutable = False
    try:
        (path / "probe").touch()
    except PermissionError:
        pass
    else:  # root ignores modes
        (path / "probe").unlink()
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
        immutable = done.returncode == 0
        if not immutable:
            pytest.skip("cannot make a directory read-only for this user")
    yield path
    if immutable:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    path.chmod(0o755)


async def test_check_writable_fails_on_a_read_only_directory(read_only_dir: Path) -> None:
    store = ObjectStore.from_url(f"file://{read_only_dir}")
    with pytest.raises(StoreError, match="write probe"):
        await store.check_writable()
    assert list(read_only_dir.iterdir()) == []


async def test_signed_url_serves_the_object_from_s3(aws_env: Moto) -> None:
    store = ObjectStore.from_url(f"s3://{BUCKET}/signed-{uuid.uuid4().hex}")
    assert store.supports_signed_urls
    data = pattern(70_000)
    await store.put_stream(KEY, chunked(data), content_type=PNG)
    url = await store.signed_url(KEY, timedelta(minutes=5))
    assert url is not None
    assert url.startswith(aws_env.endpoint)
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(url)
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == PNG


@pytest.mark.parametrize("url", ["memory://", "file://./signed"])
async def test_no_signed_urls_off_the_cloud(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = ObjectStore.from_url(url)
    assert not store.supports_signed_urls
    assert await store.signed_url(KEY, timedelta(minutes=5)) is None


async def test_a_failing_store_stops_an_endless_upload(durable_target: Target) -> None:
    target = durable_target  # memory:// cannot fail
    if target.root is not None:
        target.root.rmdir()
        target.root.write_bytes(b"")  # the store's directory is now a file
    else:
        target.store = ObjectStore.from_url("s3://no-such-bucket-here/p")
    closed: list[bool] = []

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                yield pattern(64 * 1024)
        finally:
            closed.append(True)

    async with asyncio.timeout(10):
        with pytest.raises(StoreError) as caught:
            await target.store.put_stream(KEY, endless(), content_type=PNG)
    message = str(caught.value)
    assert f"put {KEY!r}" in message
    assert FAKE_SECRET not in message
    assert "Debug source" not in message
    assert closed == [True]


# The child leaves with os._exit: obstore's Tokio threads may still drop a Python reference
# just after an S3 upload resolves, and Python's finalization would then abort (SIGABRT).
UPLOAD_64_MIB = """
import asyncio, os, sys, tracemalloc
from app.storage.store import ObjectStore

async def main() -> None:
    store = ObjectStore.from_url(sys.argv[1])

    async def generated():
        for _ in range(1024):
            yield bytes(64 * 1024)

    tracemalloc.start()
    stored = await store.put_stream("big", generated(), content_type="image/png")
    print(tracemalloc.get_traced_memory()[1], stored.size, flush=True)

asyncio.run(main())
os._exit(0)
"""


async def test_streaming_memory_stays_flat(durable_target: Target) -> None:
    """A 64 MiB upload, measured in a fresh interpreter: moto's allocations stay out of it.
    (memory:// keeps every object in RAM by design.)"""
    target = durable_target
    url = f"file://{target.root}" if target.root else f"s3://{BUCKET}/{target.prefix}"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        UPLOAD_64_MIB,
        url,
        cwd=Path(__file__).parents[2],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await child.communicate()
    assert child.returncode == 0, err.decode()
    peak, size = map(int, out.split())
    assert size == 64 * MIB
    head = await target.store.head("big")
    assert head is not None
    assert head.size == 64 * MIB
    # obstore holds chunks without copying them until their part is written: one or two
    # parts (1 MiB on disk, 5 MiB, the S3 minimum, in the cloud) whatever the object's size.
    # Bounded by the buffered first part (5 MiB) plus what is in flight, not by the 64 MiB object.
    limit = 8 * MIB if target.kind == "file" else 16 * MIB
    assert peak < limit, f"tracemalloc peak {peak / MIB:.1f} MiB"


def test_moto_is_stopped_at_session_end(tmp_path: Path) -> None:
    if PORT_FILE_VARIABLE in os.environ:
        pytest.skip("inside the child session")
    port_file = tmp_path / "port"
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            f"{__file__}::test_check_writable[s3]",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        env={**os.environ, PORT_FILE_VARIABLE: str(port_file)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stdout + child.stderr
    assert "1 passed" in child.stdout
    assert _closed("127.0.0.1", int(port_file.read_text()))
