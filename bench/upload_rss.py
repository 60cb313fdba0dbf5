"""The memory and speed of uploads: `imagegen-gateway serve` taking 50 MiB images.

    .venv/bin/python -m bench.upload_rss [--rounds 3] [--no-s3]

Starts `python -m app.cli serve` (the console script's code: simulator provider, SQLite, with
its workers and upload sweep) as its own process, once on the file store and once on S3 (a moto
server process), and measures:

- its RSS idle (after a warm-up upload) and its peak while 4 uploads of a 50 MiB PNG stream at
  once (sampled every 2 ms from /proc, and the kernel's VmHWM reset before): the target is a
  peak within 30 MB of idle;
- upload throughput: one 50 MiB upload at a time with `curl -T` (POST), against the same
  `curl -T` PUT of the same file to a baseline writing to the same store: for the file store a
  minimal uvicorn app that streams the body to a file in the same directory (the gateway's
  server stack, without its checks, hashing and object-store writes); for S3 a PUT straight to
  the same moto server (one request, no multipart upload).
Prints one table."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
CAP = 50 * MIB
BIG_IMAGE = (4096, 4264)  # noise RGB stored uncompressed: a PNG just under 50 MiB
CONCURRENT = 4
TARGET_GROWTH_MB = 30.0
API_KEY = "bench-upload-key-0123456789abcdef"
BUCKET = "bench-uploads"
AWS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
}
SAMPLE_SECONDS = 0.002


def status_kib(pid: int, field: str) -> int:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM)."""
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert found is not None, field
    return int(found.group(1))


def reset_peak(pid: int) -> bool:
    """Make the process's VmHWM start again from its current RSS; False when refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Sampler(threading.Thread):
    """Reads another process's VmRSS every few milliseconds and keeps the largest value."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = status_kib(pid, "VmRSS")
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, status_kib(self.pid, "VmRSS"))

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, status_kib(self.pid, "VmRSS"))


def write_noise_png(path: Path) -> None:
    """A valid, incompressible PNG under the cap: random RGB stored without compression."""
    width, height = BIG_IMAGE
    pixels = random.Random(7).randbytes(width * height * 3)
    Image.frombytes("RGB", (width, height), pixels).save(path, "PNG", compress_level=0)
    assert path.stat().st_size <= CAP, path.stat().st_size


@contextlib.contextmanager
def child(args: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess with its output in `log`; terminated (killed if it lingers) on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=os.environ | env
        )
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
            with contextlib.suppress(httpx.HTTPError):
                await client.get(url, timeout=1)
                return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not come up; see {log}")


@dataclass(frozen=True)
class Server:
    url: str
    pid: int


@contextlib.asynccontextmanager
async def gateway(tmp: Path, storage_url: str, env: dict[str, str]) -> AsyncIterator[Server]:
    """`imagegen-gateway serve` on a fresh SQLite file, simulator provider, `storage_url`."""
    port = free_port()
    values = env | {
        "IMAGEGEN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/gateway-{port}.db",
        "IMAGEGEN_STORAGE_URL": storage_url,
        "IMAGEGEN_PROVIDER": "simulator",
        "IMAGEGEN_API_KEYS": f"bench:{API_KEY}",
        "IMAGEGEN_LOG_LEVEL": "WARNING",
    }
    log = tmp / f"gateway-{port}.log"
    cli = [sys.executable, "-m", "app.cli"]
    migrate = [*cli, "migrate"]
    await asyncio.to_thread(subprocess.run, migrate, cwd=ROOT, env=os.environ | values, check=True)
    with child([*cli, "serve", "--port", str(port)], log, values) as process:
        base = f"http://127.0.0.1:{port}"
        await wait_up(f"{base}/healthz", log)
        yield Server(base, process.pid)


async def put_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The baseline: an ASGI app that streams a PUT body to a file under BENCH_PUT_DIR."""
    if scope["type"] != "http":
        return
    target = Path(os.environ["BENCH_PUT_DIR"]) / f"put-{time.monotonic_ns()}"
    with target.open("wb") as out:
        while True:
            message = await receive()
            out.write(message.get("body", b""))
            if not message.get("more_body"):
                break
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@contextlib.asynccontextmanager
async def put_server(tmp: Path, directory: Path) -> AsyncIterator[Server]:
    """The baseline PUT server on uvicorn, writing into `directory`."""
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "bench.upload_rss:put_app", "--port", str(port)]
    args += ["--log-level", "warning", "--no-access-log"]
    log = tmp / "put-server.log"
    with child(args, log, {"BENCH_PUT_DIR": str(directory)}) as process:
        base = f"http://127.0.0.1:{port}"
        await wait_up(base, log)
        yield Server(base, process.pid)


@contextlib.asynccontextmanager
async def moto(tmp: Path) -> AsyncIterator[Server]:
    """A moto S3 server in its own process, with the bench's bucket."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with child(args, tmp / "moto.log", {}) as process:
        await wait_up(f"{endpoint}/moto-api/", tmp / "moto.log")
        async with httpx.AsyncClient() as client:
            created = await client.put(f"{endpoint}/{BUCKET}")
            created.raise_for_status()
        yield Server(endpoint, process.pid)


def curl(method: str, url: str, path: Path, headers: dict[str, str]) -> float:
    """Send `path` with `curl -T` (no Expect: 100-continue); the seconds it took."""
    args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "-T", str(path)]
    args += ["-X", method, "-H", "Expect:"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    done = subprocess.run([*args, url], capture_output=True, text=True, check=True)
    code, seconds = done.stdout.split()
    assert code in ("200", "201"), (url, done.stdout, done.stderr)
    return float(seconds)


UPLOAD_HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "image/png"}


async def upload(client: httpx.AsyncClient, base: str, path: Path, size: int) -> None:
    """One upload of the `size` bytes of `path`, streamed from disk in 64 KiB pieces."""

    async def pieces() -> AsyncIterator[bytes]:
        with path.open("rb") as source:
            while piece := source.read(64 * 1024):
                yield piece

    answer = await client.post(
        f"{base}/v1/uploads",
        content=pieces(),
        headers=UPLOAD_HEADERS | {"Content-Length": str(size)},
        timeout=120,
    )
    assert answer.status_code == 201, answer.text


@dataclass
class Row:
    """The figures of one store."""

    store: str
    baseline: str
    idle_mib: float = 0.0
    peak_mib: float = 0.0
    gateway_mbps: list[float] = field(default_factory=list)
    baseline_mbps: list[float] = field(default_factory=list)

    @property
    def growth_mb(self) -> float:
        return (self.peak_mib - self.idle_mib) * MIB / 1e6


async def settled_rss(pid: int) -> int:
    await asyncio.sleep(1.0)
    return status_kib(pid, "VmRSS")


@dataclass(frozen=True)
class Files:
    """The images to upload and their sizes."""

    big: Path
    big_size: int
    small: Path
    small_size: int


async def measure(
    row: Row, server: Server, files: Files, rounds: int, baseline: Callable[[], float]
) -> None:
    """RSS idle and during CONCURRENT uploads, then throughput against the baseline."""
    image, size = files.big, files.big_size
    async with httpx.AsyncClient() as client:
        # Warm up: lazily made clients and buffers.
        await upload(client, server.url, files.small, files.small_size)
        await upload(client, server.url, image, size)
        for _ in range(rounds):
            idle = await settled_rss(server.pid)
            exact = reset_peak(server.pid)
            sampler = Sampler(server.pid)
            sampler.start()
            try:
                await asyncio.gather(
                    *(upload(client, server.url, image, size) for _ in range(CONCURRENT))
                )
            finally:
                peak = sampler.stop()
            if exact:
                peak = max(peak, status_kib(server.pid, "VmHWM"))
            if peak - idle > (row.peak_mib - row.idle_mib) * 1024:
                row.idle_mib, row.peak_mib = idle / 1024, peak / 1024
    gateway_seconds, baseline_seconds = [], []
    for _ in range(rounds):  # alternating, so both see the same machine load
        gateway_seconds.append(curl("POST", f"{server.url}/v1/uploads", image, UPLOAD_HEADERS))
        baseline_seconds.append(baseline())
    row.gateway_mbps = [size / 1e6 / s for s in gateway_seconds]
    row.baseline_mbps = [size / 1e6 / s for s in baseline_seconds]


async def file_row(tmp: Path, files: Files, rounds: int) -> Row:
    row = Row("file://", "curl -T PUT to a minimal uvicorn app writing a file")
    store = tmp / "file-store"
    (store / "uploads").mkdir(parents=True)
    async with put_server(tmp, store / "uploads") as put, gateway(tmp, f"file://{store}", {}) as gw:
        await measure(row, gw, files, rounds, lambda: curl("PUT", put.url, files.big, {}))
    return row


async def s3_row(tmp: Path, files: Files, rounds: int) -> Row:
    row = Row("s3:// (moto)", "curl -T PUT of the object to the same moto server")
    async with moto(tmp) as s3:
        env = AWS | {"AWS_ENDPOINT_URL": s3.url}
        async with gateway(tmp, f"s3://{BUCKET}/gateway", env) as gw:
            counter = iter(range(10**6))

            def put_object() -> float:
                return curl("PUT", f"{s3.url}/{BUCKET}/baseline/{next(counter)}", files.big, {})

            await measure(row, gw, files, rounds, put_object)
    return row


def print_table(rows: list[Row], size: int, rounds: int, loads: tuple[str, str]) -> None:
    print(
        f"\n{CONCURRENT} uploads of a {size / MIB:.2f} MiB PNG at once ({size} bytes), worst of "
        f"{rounds} rounds; throughput: median of {rounds} single uploads with curl -T, "
        f"alternating with the baseline (load {loads[0]} before, {loads[1]} after)\n"
    )
    print(
        "| store | idle RSS MiB | peak RSS MiB | peak - idle MB (target <= 30) "
        "| gateway MB/s | baseline MB/s | gateway / baseline | baseline |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        gateway_mbps = statistics.median(row.gateway_mbps)
        baseline_mbps = statistics.median(row.baseline_mbps)
        print(
            f"| {row.store} | {row.idle_mib:.1f} | {row.peak_mib:.1f} | {row.growth_mb:.1f} "
            f"| {gateway_mbps:.0f} | {baseline_mbps:.0f} | {gateway_mbps / baseline_mbps:.0%} "
            f"| {row.baseline} |"
        )


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


async def run(rounds: int, with_s3: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-uploads-") as name:
        tmp = Path(name)
        image, small = tmp / "big.png", tmp / "small.png"
        write_noise_png(image)
        Image.new("RGB", (8, 8), "teal").save(small, "PNG")
        files = Files(image, image.stat().st_size, small, small.stat().st_size)
        before = load()
        steps: list[Callable[[], Awaitable[Row]]] = [lambda: file_row(tmp, files, rounds)]
        if with_s3:
            steps.append(lambda: s3_row(tmp, files, rounds))
        rows = [await step() for step in steps]
        print_table(rows, files.big_size, rounds, (before, load()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upload_rss", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 (moto) row")
    options = parser.parse_args(argv)
    asyncio.run(run(options.rounds, not options.no_s3))


if __name__ == "__main__":
    main()
