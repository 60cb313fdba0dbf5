"""The source images and the ways of copying them, each checked against the source."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import obstore
from obstore.store import LocalStore, S3Store

from app.archive.fetch import open_image
from app.storage.store import ObjectStore

from .config import API_KEY, BUCKET, MIB, POLICY
from .servers import Server, s3_client


@dataclass(frozen=True)
class SourceImage:
    """A finished simulator task's result image."""

    task_id: str
    url: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Copy:
    """One copy to make: the source and the key it is stored under."""

    source: SourceImage
    key: str


async def prepare_images(base: str, count: int, size: str) -> list[SourceImage]:
    """`count` completed simulator tasks, each image downloaded once (rendered) before timing."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"model": "gpt-image-1.5", "prompt": "p", "size": size}
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        created = [
            await client.post("/v1/images/generations", json=body, headers=headers)
            for _ in range(count)
        ]
        ids = {response.raise_for_status().json()["id"] for response in created}
        deadline = time.monotonic() + 30
        while True:
            tasks = [t for t in (await client.get("/_sim/tasks")).json() if t["id"] in ids]
            if all(t["status"] == "completed" for t in tasks):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the simulator's tasks did not complete")
            await asyncio.sleep(0.1)
        renders = asyncio.Semaphore(4)

        async def warm(url: str) -> None:
            async with renders:
                (await client.get(url)).raise_for_status()

        await asyncio.gather(*(warm(task["results"][0]) for task in tasks))
        tasks = [t for t in (await client.get("/_sim/tasks")).json() if t["id"] in ids]
    return [
        SourceImage(t["id"], t["results"][0], t["image_sha256"], t["image_bytes"]) for t in tasks
    ]


CopyFn = Callable[[Copy], Awaitable[int]]


def plain_file_copy(client: httpx.AsyncClient, root: Path) -> CopyFn:
    """The baseline: httpx stream -> a file."""

    async def run(copy: Copy) -> int:
        size = 0
        async with client.stream("GET", copy.source.url) as response:
            response.raise_for_status()
            with (root / copy.key.replace("/", "_")).open("wb") as out:
                async for chunk in response.aiter_bytes():
                    out.write(chunk)
                    size += len(chunk)
        return size

    return run


def stored_bytes_put(backend: S3Store, bodies: dict[str, bytes]) -> CopyFn:
    """The ceiling: one put of bytes already in memory, no download at all."""

    async def run(copy: Copy) -> int:
        body = bodies[copy.source.url]
        await obstore.put_async(backend, copy.key, [body], use_multipart=False)
        return len(body)

    return run


def gateway_copy(fetcher: httpx.AsyncClient, store: ObjectStore) -> CopyFn:
    """The production copy path of `Archiver._copy`: open_image -> store.put_stream."""

    async def run(copy: Copy) -> int:
        async with open_image(fetcher, copy.source.url, POLICY) as download:
            stored = await store.put_stream(
                copy.key, download.chunks(), content_type=download.content_type
            )
        if download.info.sha256 != copy.source.sha256:
            raise AssertionError(f"{copy.key}: the download's sha256 is not the simulator's")
        return stored.size

    return run


def plain_obstore_copy(client: httpx.AsyncClient, backend: LocalStore | S3Store) -> CopyFn:
    """Reference: httpx stream -> obstore.put_async with obstore's defaults (no gateway code)."""

    async def run(copy: Copy) -> int:
        async with client.stream("GET", copy.source.url) as response:
            response.raise_for_status()
            await obstore.put_async(backend, copy.key, response.aiter_raw())
            return response.num_bytes_downloaded

    return run


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(MIB):
            digest.update(block)
    return digest.hexdigest()


def check(copies: list[Copy], digests: list[str], where: str) -> None:
    wrong = [c.key for c, d in zip(copies, digests, strict=True) if d != c.source.sha256]
    if wrong:
        raise AssertionError(f"{where}: {len(wrong)} objects differ from the source ({wrong[0]})")


@dataclass
class CopyPath:
    """One way of copying, how to check and clear what it stored, and its figures per round."""

    name: str
    copy: CopyFn
    stored: Callable[[Copy], str]  # the sha256 of what a copy stored
    clear: Callable[[], None]
    server: Server | None = None  # the S3 server it stores to
    # seconds, bytes, CPU seconds of this process, of the simulator, of the S3 server
    runs: list[tuple[float, int, float, float, float]] = field(default_factory=list)

    def median(self) -> tuple[float, int, float, float, float]:
        return sorted(self.runs)[len(self.runs) // 2]


def in_directory(name: str, copy: CopyFn, root: Path, file_name: Callable[[str], str]) -> CopyPath:
    def clear() -> None:
        shutil.rmtree(root)
        root.mkdir()

    return CopyPath(name, copy, lambda c: sha256_file(root / file_name(c.key)), clear)


def in_bucket(name: str, copy: CopyFn, server: Server, prefix: str) -> CopyPath:
    s3 = s3_client(server.url)

    def stored(item: Copy) -> str:
        body = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/{item.key}")["Body"]
        return hashlib.sha256(body.read()).hexdigest()

    def clear() -> None:
        listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")
        for item in listed.get("Contents", []):
            s3.delete_object(Bucket=BUCKET, Key=item["Key"])

    return CopyPath(name, copy, stored, clear, server)
