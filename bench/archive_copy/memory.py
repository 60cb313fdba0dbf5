"""The RSS of a worker process copying a 50 MiB image, to the local store and to S3."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from .config import BIG_IMAGE, BUCKET, MIB, ROOT, TARGET_GROWTH_MIB
from .copies import sha256_file
from .servers import s3_client


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
