"""Benchmark: archive copy throughput from the provider simulator (its own process) to the local
store and to an S3 server (moto, its own process), side by side with a plain streaming copy of
the same files (httpx stream -> file); then the RSS of a worker process copying a 50 MiB image.

    .venv/bin/python -m bench.archive_copy [--images 60] [--concurrency 4] [--rounds 5]
                                           [--noise 0.667]

Images are 1024x1024 PNGs whose top `--noise` fraction of rows is incompressible noise:
0.667 makes them 2 MiB, 1.0 makes them 3 MiB.
The gateway rows run the production copy path (`Archiver._copy`: open_image -> put_stream).
The `ref:` rows stream the same files into obstore directly, without the gateway's code, to show
what the store itself costs; the `ceiling:` row stores bytes already in memory, which is as fast
as the S3 server takes objects at all. The CPU columns split where each image's CPU time goes:
this (copying) process, the simulator serving it, the S3 server storing it. Sizes are MiB
(2**20 bytes); every stored object's sha256 is checked against the simulator's."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.server
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import httpx
import obstore
from obstore.store import LocalStore, S3Store
from PIL import Image

from app.archive.fetch import FetchPolicy, create_fetch_client, open_image
from app.archive.service import image_key
from app.archive.store import ObjectStore
from app.provider.types import PIXELS
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
API_KEY = "sk-evo-simulator"
BUCKET = "bench-archive"
TARGET_RATIO = 0.70
SIZE = "1024x1024"
TARGET_GROWTH_MIB = 20.0
POLICY = FetchPolicy(allow_private=True)
SIMULATOR_CACHE = 192 * MIB  # of its 256 MiB image cache: distinct images beyond it re-render
BIG_IMAGE = (4096, 4266)  # noise RGB stored uncompressed: a 50.0 MiB PNG
AWS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
}


# --- processes -----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Server:
    """A server process of the benchmark: its base URL and process id."""

    url: str
    pid: int


@contextmanager
def child(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess with its output in `log`; terminated (killed if it lingers) on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def wait_up(url: str, log: Path) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            try:
                await client.get(url, timeout=1)
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not come up:\n{tail(log)}")


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


@asynccontextmanager
async def simulator(log: Path, noise: float) -> AsyncIterator[Server]:
    """The provider simulator in its own process, with `noise` incompressible images."""
    port = free_port()
    args = [sys.executable, "-m", "app.cli", "simulate-provider", "--port", str(port)]
    args += ["--allow-private-callbacks", "--image-noise", str(noise), "--duration", "0.1"]
    with child([*args, "--log-level", "warning"], log) as process:
        base = f"http://127.0.0.1:{port}"
        await wait_up(f"{base}/_sim/stats", log)
        yield Server(base, process.pid)


@asynccontextmanager
async def moto_s3(log: Path) -> AsyncIterator[Server]:
    """A moto S3 server in its own process (S3 is not inside a worker: it must not share this
    process's CPU time and GIL); sets the variables obstore reads."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    saved = dict(os.environ)
    args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with child(args, log) as process:
        await wait_up(f"{endpoint}/moto-api/", log)
        os.environ.update({"AWS_ENDPOINT_URL": endpoint, **AWS})
        try:
            yield Server(endpoint, process.pid)
        finally:
            os.environ.clear()
            os.environ.update(saved)


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=AWS["AWS_REGION"],
        aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"],
    )


# --- source images -------------------------------------------------------------------------


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


# --- copy paths ----------------------------------------------------------------------------

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
    # seconds, bytes, CPU seconds of this process, of the simulator, of the S3 server
    runs: list[tuple[float, int, float, float, float]] = field(default_factory=list)

    def median(self) -> tuple[float, int, float, float, float]:
        return sorted(self.runs)[len(self.runs) // 2]


def in_directory(name: str, copy: CopyFn, root: Path, file_name: Callable[[str], str]) -> CopyPath:
    def clear() -> None:
        shutil.rmtree(root)
        root.mkdir()

    return CopyPath(name, copy, lambda c: sha256_file(root / file_name(c.key)), clear)


def in_bucket(name: str, copy: CopyFn, s3: Any, prefix: str) -> CopyPath:
    def stored(item: Copy) -> str:
        body = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/{item.key}")["Body"]
        return hashlib.sha256(body.read()).hexdigest()

    def clear() -> None:
        listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")
        for item in listed.get("Contents", []):
            s3.delete_object(Bucket=BUCKET, Key=item["Key"])

    return CopyPath(name, copy, stored, clear)


async def timed(
    path: CopyPath, copies: list[Copy], concurrency: int, servers: tuple[Server, Server]
) -> None:
    """Make all `copies`, `concurrency` at a time; record seconds, bytes and the CPU time of this
    process (every thread: obstore uploads on its own runtime threads) and of the simulator and
    S3 server processes; then check and clear."""
    pending = iter(copies)
    total = 0

    async def worker() -> None:
        nonlocal total
        for item in pending:
            size = await path.copy(item)  # not `total += await ...`: that loses updates
            total += size

    before = [cpu_seconds(server.pid) for server in servers]
    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    simulator_cpu, s3_cpu = (cpu_seconds(s.pid) - b for s, b in zip(servers, before, strict=True))
    check(copies, [await asyncio.to_thread(path.stored, item) for item in copies], path.name)
    await asyncio.to_thread(path.clear)
    path.runs.append((seconds, total, cpu, simulator_cpu, s3_cpu))


async def throughput(
    sim: Server, tmp: Path, s3_server: Server, images: int, concurrency: int, rounds: int
) -> list[CopyPath]:
    width, height = PIXELS[SIZE]
    distinct = max(1, min(images, SIMULATOR_CACHE // (width * height * 3)))
    sources = await prepare_images(sim.url, distinct, SIZE)
    copies = [
        Copy(source, image_key(f"bench-{i:04d}-{source.task_id}", 0))
        for i, source in ((i, sources[i % len(sources)]) for i in range(images))
    ]
    s3 = s3_client(s3_server.url)
    s3.create_bucket(Bucket=BUCKET)
    dirs = {name: tmp / name for name in ("baseline", "gateway", "plain")}
    for directory in dirs.values():
        directory.mkdir()
    client = httpx.AsyncClient(timeout=60)
    fetcher = create_fetch_client(POLICY)
    try:
        local_store = ObjectStore.from_url(f"file://{dirs['gateway']}")
        s3_store = ObjectStore.from_url(f"s3://{BUCKET}/gateway")
        plain_s3 = S3Store(BUCKET, prefix="plain", client_options={"allow_http": True})
        await s3_store.check_writable()  # connections and credentials ready before timing
        await obstore.put_async(plain_s3, "probe", b"probe")
        await obstore.delete_async(plain_s3, "probe")
        paths = [
            in_directory(
                "plain: httpx stream -> file (baseline)",
                plain_file_copy(client, dirs["baseline"]),
                dirs["baseline"],
                lambda key: key.replace("/", "_"),
            ),
            in_directory(
                "gateway -> local store (file://)",
                gateway_copy(fetcher, local_store),
                dirs["gateway"],
                lambda key: key,
            ),
            in_bucket("gateway -> S3 (moto)", gateway_copy(fetcher, s3_store), s3, "gateway"),
            in_directory(
                "ref: httpx -> obstore put, file://",
                plain_obstore_copy(client, LocalStore(dirs["plain"])),
                dirs["plain"],
                lambda key: key,
            ),
            in_bucket(
                "ref: httpx -> obstore put, S3", plain_obstore_copy(client, plain_s3), s3, "plain"
            ),
            in_bucket(
                "ceiling: bytes in memory -> S3 put",
                stored_bytes_put(plain_s3, await downloaded(client, sources)),
                s3,
                "plain",
            ),
        ]
        for round_index in range(rounds):
            shift = round_index % len(paths)  # each path takes its turn at going first
            for path in paths[shift:] + paths[:shift]:
                await timed(path, copies, concurrency, (sim, s3_server))
            print(f"round {round_index + 1}/{rounds} done", file=sys.stderr)
    finally:
        await client.aclose()
        await fetcher.aclose()
    return paths


async def downloaded(client: httpx.AsyncClient, sources: list[SourceImage]) -> dict[str, bytes]:
    """Each source image's bytes, by URL."""
    bodies = {}
    for source in sources:
        response = await client.get(source.url)
        bodies[source.url] = response.raise_for_status().content
    return bodies


def print_table(paths: list[CopyPath], images: int, concurrency: int, rounds: int) -> None:
    base_seconds, base_bytes, *_ = paths[0].median()
    print(
        f"\narchive copy throughput: {images} noise PNG images of {base_bytes / images / MIB:.2f} "
        f"MiB from the simulator process, concurrency {concurrency}, median of {rounds} rounds"
    )
    per_round = [", ".join(f"{images / run[0]:.0f}" for run in path.runs) for path in paths]
    width = max(18, *map(len, per_round))
    print(
        f"| {'path':38} | images | mean MiB | seconds | images/s | MiB/s | vs baseline "
        f"| CPU ms/image: copier + simulator + S3 server | {'images/s per round':{width}} |"
    )
    print(
        f"|{'-' * 40}|{'-' * 8}|{'-' * 10}|{'-' * 9}|{'-' * 10}|{'-' * 7}|{'-' * 13}"
        f"|{'-' * 46}|{'-' * (width + 2)}|"
    )
    for path, rounds_text in zip(paths, per_round, strict=True):
        seconds, total, cpu, simulator_cpu, s3_cpu = path.median()
        split = f"{cpu / images * 1000:.1f} + {simulator_cpu / images * 1000:.1f} + " + (
            f"{s3_cpu / images * 1000:.1f}" if "S3" in path.name else "-"
        )
        print(
            f"| {path.name:38} | {images:6} | {total / images / MIB:8.2f} | {seconds:7.2f} "
            f"| {images / seconds:8.1f} | {total / seconds / MIB:5.0f} "
            f"| {base_seconds / seconds:11.0%} | {split:44} "
            f"| {rounds_text:{width}} |"
        )
    for path in paths[1:3]:
        ratio = base_seconds / path.median()[0]
        verdict = "holds" if ratio >= TARGET_RATIO else "MISSED"
        print(f"{path.name} / baseline: {ratio:.0%} (target >= {TARGET_RATIO:.0%}: {verdict})")
    ceiling = paths[-1].median()[0] / paths[2].median()[0]
    print(f"{paths[2].name} / {paths[-1].name}: {ceiling:.0%}")
    print(
        "CPU: this process (all threads), the simulator process and the S3 server process, "
        "during the timed copies; every stored object's sha256 matched the simulator's"
    )


# --- worker memory -------------------------------------------------------------------------


@contextmanager
def file_server(directory: Path) -> Iterator[str]:
    """http.server streaming the files of `directory` from disk, in a thread; its base URL."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def write_noise_png(path: Path, width: int, height: int) -> None:
    """A valid, incompressible PNG: random RGB stored without compression."""
    pixels = random.Random(path.name).randbytes(width * height * 3)
    Image.frombytes("RGB", (width, height), pixels).save(path, "PNG", compress_level=0)


@dataclass(frozen=True)
class Memory:
    """What the worker child measured (KiB)."""

    store: str
    image_bytes: int
    cold_idle: int
    idle: int
    peak: int
    after: int
    samples: int
    seconds: float

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.idle) / 1024


def run_worker(store_url: str, warm_url: str, big_url: str) -> tuple[Memory, str, str]:
    """Run the worker child; its figures, the key it stored the image under and its sha256."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.archive_worker_rss", store_url, warm_url, big_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the worker child failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    memory = Memory(
        store_url.partition("://")[0],
        report["bytes"],
        report["cold_idle_kib"],
        report["idle_kib"],
        report["peak_kib"],
        report["after_kib"],
        report["samples"],
        report["seconds"],
    )
    return memory, str(report["key"]), str(report["sha256"])


async def worker_memory(tmp: Path, endpoint: str) -> list[Memory]:
    """The worker child's RSS while it copies the 50 MiB image to the local store and to S3."""
    served = tmp / "served"
    served.mkdir()
    write_noise_png(served / "big.png", *BIG_IMAGE)
    write_noise_png(served / "warm.png", 1024, 1024)
    expected = sha256_file(served / "big.png")
    local = tmp / "rss-store"
    rows = []
    with file_server(served) as base:
        for store_url in (f"file://{local}", f"s3://{BUCKET}/rss"):
            memory, key, downloaded = await asyncio.to_thread(
                run_worker, store_url, f"{base}/warm.png", f"{base}/big.png"
            )
            if store_url.startswith("file://"):
                stored = sha256_file(local / key)
            else:
                body = s3_client(endpoint).get_object(Bucket=BUCKET, Key=f"rss/{key}")["Body"]
                stored = hashlib.sha256(body.read()).hexdigest()
            if not downloaded == stored == expected:
                raise AssertionError(f"{store_url}: the stored 50 MiB image has the wrong sha256")
            rows.append(memory)
    return rows


def print_memory(rows: list[Memory]) -> None:
    for row in rows:
        verdict = "holds" if row.growth_mib <= TARGET_GROWTH_MIB else "MISSED"
        print(
            f"\nworker RSS, one {row.image_bytes / MIB:.1f} MiB image to the {row.store} store "
            f"(own process; copy took {row.seconds:.2f}s; VmHWM and {row.samples} VmRSS samples):"
        )
        print(
            f"idle RSS: {row.idle / 1024:.1f} MiB (after one 3 MiB warm-up copy; "
            f"{row.cold_idle / 1024:.1f} MiB before any copy)"
        )
        print(f"peak RSS: {row.peak / 1024:.1f} MiB (after the copy: {row.after / 1024:.1f} MiB)")
        print(
            f"growth: {row.growth_mib:+.1f} MiB (target <= {TARGET_GROWTH_MIB:.0f} MiB: {verdict}; "
            f"over the idle RSS before any copy: {(row.peak - row.cold_idle) / 1024:+.1f} MiB)"
        )


async def main(images: int, concurrency: int, rounds: int, noise: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as name:
        tmp = Path(name)
        async with moto_s3(tmp / "moto.log") as s3_server:
            async with simulator(tmp / "simulator.log", noise) as sim:
                paths = await throughput(sim, tmp, s3_server, images, concurrency, rounds)
            print_table(paths, images, concurrency, rounds)
            print_memory(await worker_memory(tmp, s3_server.url))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=60, help="copies per path and round")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--noise", type=float, default=0.667, help="noise fraction of each image (2 MiB: 0.667)"
    )
    options = parser.parse_args()
    asyncio.run(main(options.images, options.concurrency, options.rounds, options.noise))
